"""python -m export.random_checkpoint --config NAME --output FILE.pth: a checkpoint of a config with
seeded random weights, for timing a config no trained checkpoint exists for (`make bench` uses it for
yolact_resnet50): a network's speed does not depend on its weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.errors import ToolkitError


def random_checkpoint(config: str, path: str | Path, seed: int = 0) -> Path:
    """Write a checkpoint of `config` (a model.config name) with weights seeded by `seed` to `path`,
    atomically, in the toolkit's own format (model.checkpoint.save_checkpoint); returns the path."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import get_config
    from model.yolact import Yolact

    cfg = get_config(config)
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, Yolact(cfg).eval(), cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m export.random_checkpoint', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='config name, e.g. yolact_resnet50')
    parser.add_argument('--output', type=Path, required=True, help='checkpoint file to write (.pth)')
    parser.add_argument('--seed', type=int, default=0, help='torch seed of the weights (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        path = random_checkpoint(args.config, args.output, args.seed)
    except ToolkitError as e:  # an unknown config name, an unwritable file: the message names the fix
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
