"""Importing TensorRT, and its log bridge: what the runtime needs to run an engine and the engine
builder needs to build one.

Two flavours share one Python API:
- `tensorrt` on a GPU host: builds for that GPU and runs its engines.
- `tensorrt_rtx` (TensorRT for RTX): builds ahead of time on the CPU, without a GPU, for a list of
  compute capabilities; kernels are specialised on the target at run time.
An engine runs only under the flavour and version it was built with (the sidecar records both).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from runtime.errors import ToolkitError

FLAVOURS = ('tensorrt', 'tensorrt_rtx')
INSTALL_HINT = ("install one: on a GPU host `pip install -e '.[tensorrt]'` (TensorRT, builds for that GPU); "
                "anywhere, without a GPU, `pip install -e '.[tensorrt-rtx]'` (TensorRT-RTX, builds on the CPU)")


class TensorRTError(ToolkitError, ValueError):
    """TensorRT cannot be loaded as asked (an unknown flavour, or one that is not installed)."""


class TensorRTUnavailable(TensorRTError):
    """No TensorRT Python package (of the requested flavour) can be imported."""


@dataclass(frozen=True)
class TensorRT:
    """An imported TensorRT flavour: module (`tensorrt` or `tensorrt_rtx`), flavour (its name),
    version (module.__version__)."""

    module: ModuleType
    flavour: str
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.flavour == 'tensorrt_rtx'

    @property
    def display_name(self) -> str:
        return f'{"TensorRT-RTX" if self.is_rtx else "TensorRT"} {self.version}'


def load_tensorrt(flavour: str = 'auto') -> TensorRT:
    """Import TensorRT: `flavour` 'tensorrt', 'tensorrt_rtx' (or 'tensorrt-rtx'), or 'auto' (TensorRT
    when installed, else TensorRT-RTX). TensorRTUnavailable says what is missing and how to install it."""
    flavour = flavour.replace('-', '_')
    if flavour not in FLAVOURS + ('auto',):
        raise TensorRTError(f'unknown TensorRT flavour {flavour!r}: use auto, tensorrt or tensorrt-rtx')
    candidates = FLAVOURS if flavour == 'auto' else (flavour,)
    failures = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            failures.append(f'{name}: {e}')
            continue
        return TensorRT(module=module, flavour=name, version=module.__version__)
    wanted = 'TensorRT is not installed' if flavour == 'auto' else f'{flavour} is not installed'
    raise TensorRTUnavailable(f'{wanted} ({"; ".join(failures)}); {INSTALL_HINT}')


def make_logger(trt: TensorRT, verbose: bool):
    """A TensorRT ILogger that forwards to Python logging (logger `engines.tensorrt`): warnings and
    errors always, TensorRT's info and verbose messages only when `verbose`."""
    module = trt.module
    severity = module.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.CRITICAL, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.INFO, severity.VERBOSE: logging.DEBUG}
    threshold = logging.DEBUG if verbose else logging.WARNING
    target = logging.getLogger('engines.tensorrt')

    class _Logger(module.ILogger):
        def __init__(self):
            module.ILogger.__init__(self)

        def log(self, level, msg):
            python_level = levels.get(level, logging.INFO)
            if python_level >= threshold:
                target.log(python_level, '[%s] %s', trt.flavour, msg)

    return _Logger()
