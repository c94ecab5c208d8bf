"""python -m runtime.bench: see runtime/bench/cpu.py."""

import sys

from runtime.bench.cpu import main

sys.exit(main())
