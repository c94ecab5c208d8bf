"""yolact-deploy: one console command for every stage (pyproject [project.scripts]).

`yolact-deploy STAGE ARGS...` runs the stage's `python -m` form with the same arguments: the stage's
module is imported by name when it is called, so the runtime imports no build-time package at
module level (tests/runtime/test_layering.py), and a host without a stage's packages is told which
install profile (README "Install") brings them.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from runtime.errors import ToolkitError

PROG = 'yolact-deploy'


class Stage(NamedTuple):
    module: str  # the module whose main(argv) -> exit status the stage runs
    python_m: str  # its `python -m` form, which takes the same arguments
    summary: str
    install: str  # what to install where its imports fail


BUILD_PROFILE = 'pip install "yolact-deploy[build]"'
# Adding a stage (serve, once serving exists) is one entry here.
STAGES: dict[str, Stage] = {
    'export': Stage('export.__main__', 'python -m export', 'PyTorch checkpoint -> ONNX with Fast NMS and masks inside',
                    BUILD_PROFILE),
    'calib': Stage('calib.__main__', 'python -m calib', 'FP16 / INT8 variants of an ONNX export', BUILD_PROFILE),
    'build': Stage('engines.build', 'python -m engines.build', 'ONNX -> TensorRT engine with its sidecar',
                   'pip install "yolact-deploy[build,tensorrt]" on a GPU host, "yolact-deploy[build,tensorrt-rtx]" '
                   'without one'),
    'infer': Stage('runtime.infer', 'python -m runtime.infer', 'segment images and videos (default: the demo model)',
                   'pip install "yolact-deploy[cpu]" (on a GPU host: [gpu])'),
    'eval': Stage('yolact_torch.eval', 'python -m yolact_torch.eval', 'COCO box and mask AP of any model file', BUILD_PROFILE),
    'bench': Stage('runtime.bench.cpu', 'python -m runtime.bench', 'latency per stage, images/s', BUILD_PROFILE),
    'train': Stage('yolact_torch.train', 'python -m yolact_torch.train', 'train a YOLACT model', BUILD_PROFILE),
}
# Packages of this toolkit: a ModuleNotFoundError naming one of them is a broken install, not a
# missing profile.
OWN_PACKAGES = ('runtime', 'yolact_torch', 'export', 'calib', 'engines', 'plugins')


def usage() -> str:
    width = max(map(len, STAGES))
    lines = [f'usage: {PROG} STAGE [ARGS...]   ({PROG} STAGE --help for the stage\'s flags)', '', 'stages:']
    lines += [f'  {name:{width}}  {stage.summary} (= {stage.python_m})' for name, stage in STAGES.items()]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    stage = STAGES.get(name)
    if stage is None:
        print(f'{PROG}: error: unknown stage {name!r}; choose one of {", ".join(STAGES)}\n\n{usage()}', file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(stage.module)
    except ModuleNotFoundError as e:
        missing = (e.name or '').split('.')[0]
        if missing in OWN_PACKAGES:
            raise
        print(f'{PROG} {name}: error: it needs {missing or e}, which is not installed: {stage.install}',
              file=sys.stderr)
        return 1
    try:
        return module.main(args)
    except ToolkitError as e:  # stages report their own errors; this is the net under them
        print(f'{PROG} {name}: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
