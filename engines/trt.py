"""Which TensorRT builds the engine: the compute-capability targets of a TensorRT-RTX build and the
build's progress bar (importing TensorRT and its log bridge are the runtime's: runtime/tensorrt/loader.py).

Two flavours share one Python API:
- `tensorrt` on a GPU host: builds for that GPU, timing kernels on it (a persistent timing cache
  makes rebuilds fast).
- `tensorrt_rtx` (TensorRT for RTX): builds ahead of time on the CPU, without a GPU, for a list of
  compute capabilities (7.5 to 12.1, not 9.0); kernels are specialised on the target at run time.
  Its networks are always strongly typed and it keeps no timing cache.
Both take precision from the ONNX graph (strongly typed networks), so nothing here depends on it.
"""

from __future__ import annotations

from tqdm import tqdm

from engines.errors import EngineBuildError
from runtime.tensorrt.loader import TensorRT

# TensorRT-RTX's own default targets exclude Turing (a portable engine that includes 7.5 runs
# slower on the newer GPUs); 7.5 has to be asked for, alone or in a list.
RTX_NOT_DEFAULT = ('7.5',)


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
