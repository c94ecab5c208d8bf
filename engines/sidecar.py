"""Writing the JSON sidecar beside an engine; its schema, reader and host check are the runtime's
(runtime/tensorrt/sidecar.py), which consumes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.files import write_atomic
from runtime.tensorrt.sidecar import EngineSidecar, sidecar_path


def sidecar_bytes(sidecar: EngineSidecar) -> bytes:
    """The sidecar file's content: indented JSON with sorted keys."""
    return (json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + '\n').encode()


def write_sidecar(engine_path: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    """Write `sidecar` to `FILE.engine.json` atomically; returns that path."""
    return write_atomic(sidecar_path(engine_path), sidecar_bytes(sidecar))
