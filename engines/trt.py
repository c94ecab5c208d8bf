"""Which TensorRT builds the engine, and the small adapters around it.

Two flavours share one Python API:
- `tensorrt` on a GPU host: builds for that GPU, timing kernels on it (a persistent timing cache
  makes rebuilds fast).
- `tensorrt_rtx` (TensorRT for RTX): builds ahead of time on the CPU, without a GPU, for a list of
  compute capabilities (7.5 to 12.1, not 9.0); kernels are specialised on the target at run time.
  Its networks are always strongly typed and it keeps no timing cache.
Both take precision from the ONNX graph (strongly typed networks), so nothing here depends on it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

from tqdm import tqdm

from engines.errors import EngineBuildError

log = logging.getLogger(__name__)

FLAVOURS = ('tensorrt', 'tensorrt_rtx')
INSTALL_HINT = ("install one: on a GPU host `pip install -e '.[tensorrt]'` (TensorRT, builds for that GPU); "
                "anywhere, without a GPU, `pip install -e '.[tensorrt-rtx]'` (TensorRT-RTX, builds on the CPU)")
# TensorRT-RTX's own default targets exclude Turing (a portable engine that includes 7.5 runs
# slower on the newer GPUs); 7.5 has to be asked for, alone or in a list.
RTX_NOT_DEFAULT = ('7.5',)


class TensorRTUnavailable(EngineBuildError):
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
        raise EngineBuildError(f'unknown TensorRT flavour {flavour!r}: use auto, tensorrt or tensorrt-rtx')
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


def cuda_device() -> tuple[str, str] | None:
    """(name, compute capability 'major.minor') of CUDA device 0, or None when cuda-python, a
    driver or a device is missing."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip('\x00'), f'{props.major}.{props.minor}'


def rtx_compute_capabilities(trt: TensorRT) -> dict[str, object]:
    """TensorRT-RTX's targetable compute capabilities: {'8.6': ComputeCapability.SM86, ...}."""
    table = {}
    for name, value in trt.module.ComputeCapability.__members__.items():
        if name.startswith('SM'):
            digits = name[2:]
            table[f'{digits[:-1]}.{digits[-1]}'] = value
    return table


def choose_compute_capabilities(trt: TensorRT, requested: str | None,
                                gpu: tuple[str, str] | None) -> tuple[str, ...]:
    """The targets of a TensorRT-RTX build, as 'major.minor' strings. `requested`: None (TensorRT-RTX's
    default set: every target but Turing), 'current' (this host's GPU), or a comma list such as
    '8.6,12.0' (also 'sm86' / '86' spellings)."""
    table = rtx_compute_capabilities(trt)
    if requested is None:
        return tuple(cc for cc in table if cc not in RTX_NOT_DEFAULT)
    if requested.strip().lower() == 'current':
        if gpu is None:
            raise EngineBuildError('--compute-capability current needs a CUDA GPU on this host; name the targets '
                                   f'instead (any of {", ".join(table)})')
        requested = gpu[1]
    chosen = []
    for item in requested.split(','):
        text = item.strip().lower().removeprefix('sm_').removeprefix('sm')
        cc = text if '.' in text else f'{text[:-1]}.{text[-1:]}'
        if cc not in table:
            raise EngineBuildError(f'{trt.display_name} cannot build for compute capability {item.strip()!r}; '
                                   f'it targets {", ".join(table)}')
        if cc not in chosen:
            chosen.append(cc)
    return tuple(chosen)


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


def make_progress_monitor(trt: TensorRT):
    """A TensorRT IProgressMonitor that shows the top build phase as a tqdm bar (nested phases
    only advance it). Real models take minutes to build on a GPU host."""
    module = trt.module

    class _Progress(module.IProgressMonitor):
        def __init__(self):
            module.IProgressMonitor.__init__(self)
            self._top = None
            self._bar = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            if self._bar is None:
                self._top = phase_name
                self._bar = tqdm(total=num_steps, desc=phase_name, unit='step', leave=False)

        def step_complete(self, phase_name, step):
            if phase_name == self._top:
                self._bar.n = step + 1
                self._bar.refresh()
            return True  # never cancel

        def phase_finish(self, phase_name):
            if phase_name == self._top:
                self._bar.close()
                self._top = self._bar = None

    return _Progress()
