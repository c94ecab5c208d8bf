"""The onnxruntime backend: runs an ONNX model exported by `python -m export` (Fast NMS and mask
assembly inside the graph, as the yolact::FastNMS / yolact::MaskAssembly function bodies, which
onnxruntime executes). CUDA execution provider when a CUDA device is usable, CPU otherwise."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, BackendError, RawDetections
from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS, RAW_OUTPUTS, metadata_from_props
from runtime.cuda.device import device_count
from runtime.metadata import MetadataError, ModelMetadata


# onnxruntime's x86 u8s8 integer kernels (QLinearConv, MatMulInteger, ...) on a CPU without VNNI add
# each pair of u8 x s8 products into 16 bits with saturation (vpmaddubsw): 255 x 127 x 2 overflows, so an
# INT8 model in onnxruntime's layout (uint8 activations, int8 weights) loses accuracy there, and only
# there (measured on an AVX2 EPYC: 4.6x the coefficient error of the same model's exact integer result).
# This session option rewrites the int8 weights to uint8 (w + 128, zero point moved with them), so the
# u8u8 kernels, which do not saturate, compute the exact sums; slower, so it is set only where needed.
# VNNI's vpdpbusd sums u8 x s8 in 32 bits: exact, and the fast path stays.
EXACT_INT8_OPTION = 'session.x64quantprecision'
VNNI_FLAGS = ('avx512_vnni', 'avx_vnni')
X86_MACHINES = ('x86_64', 'amd64', 'i386', 'i686')
CPUINFO = Path('/proc/cpuinfo')
# onnxruntime's message when the option meets two fused convolutions on one int8 weight (calib gives
# each convolution its own since the runtime chose these kernels).
SHARED_WEIGHT_FAILURE = 'Attempt to replace the existing tensor'


@functools.lru_cache(maxsize=None)
def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI); None off x86 or where the CPU's flags
    cannot be read (not Linux)."""
    if platform.machine().lower() not in X86_MACHINES:
        return None
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        return None
    flags = next((line.split(':', 1)[1].split() for line in cpuinfo.splitlines() if line.startswith('flags')), None)
    return None if flags is None else any(flag in flags for flag in VNNI_FLAGS)


def exact_int8_kernels_needed() -> bool:
    """True where onnxruntime's u8s8 kernels can saturate: x86 without VNNI, or an x86 CPU whose
    flags could not be read (the exact kernels cost speed, never accuracy)."""
    return platform.machine().lower() in X86_MACHINES and not cpu_has_vnni()


def int8_kernels() -> str:
    """Which integer kernels onnxruntime's CPU provider runs for an INT8 model on this CPU, in words."""
    if exact_int8_kernels_needed():
        return 'u8u8 (exact: this CPU has no VNNI, on which the faster u8s8 kernels saturate)'
    if cpu_has_vnni():
        return 'u8s8 (VNNI: exact and fast)'
    return "onnxruntime's default (not an x86 CPU)"


def default_providers(ort) -> list[str]:
    """['CUDAExecutionProvider', 'CPUExecutionProvider'] when a GPU and the CUDA provider are both
    there, else ['CPUExecutionProvider']."""
    if device_count() > 0 and 'CUDAExecutionProvider' in ort.get_available_providers():
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


def cuda_fallback_warnings(requested: list[str] | None, granted: list[str]) -> list[str]:
    """A warning when CUDA was asked for (in `requested`, or by default because a CUDA device is
    there) but the session runs without it: onnxruntime falls back to the CPU silently at the log
    level create_session sets (a CPU-only onnxruntime, or a CUDA build for another CUDA major)."""
    wants_cuda = 'CUDAExecutionProvider' in requested if requested else device_count() > 0
    if not wants_cuda or 'CUDAExecutionProvider' in granted:
        return []
    import onnxruntime as ort  # create_session imported it

    return [f'CUDA was asked for but onnxruntime {ort.__version__} runs on {", ".join(granted)} (its providers: '
            f'{", ".join(ort.get_available_providers())}): install the onnxruntime-gpu of this host\'s CUDA, '
            'pip install "yolact-deploy[gpu]" (CUDA 13) or "yolact-deploy[gpu-cuda12]"']


def create_session(path: str | os.PathLike, *, providers: list[str] | None = None,
                   num_threads: int | None = None):
    """An onnxruntime InferenceSession for `path` with every graph optimisation enabled.

    num_threads: intra-op threads (None: onnxruntime's default, one per core). Raises BackendError
    for a missing, truncated or non-ONNX file, naming the file and the fix.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError(f'the ort backend needs onnxruntime (pip install "yolact-deploy[cpu]", on a GPU host '
                           f'[gpu]): {e}') from None
    path = Path(path)
    if not path.is_file():
        raise BackendError(f'ONNX model not found: {path}')
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
    # Only the provider fallback warning would be logged below ERROR; it is reported by `providers`.
    options.log_severity_level = 3
    if exact_int8_kernels_needed():  # changes nothing in a float model
        options.add_session_config_entry(EXACT_INT8_OPTION, '1')
    try:
        return ort.InferenceSession(str(path), options, providers=providers or default_providers(ort))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types per failure
        if exact_int8_kernels_needed() and SHARED_WEIGHT_FAILURE in str(e):
            raise BackendError(
                f"{path}: onnxruntime's exact INT8 kernels, which this CPU needs (no VNNI), cannot load it: its "
                'convolutions share quantised weights (an INT8 model from an older calib). Convert it again: '
                'python -m calib --precision int8 --layout onnxruntime') from None
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(f'{path} is not a loadable ONNX model ({first_line[:300]}); the file may be '
                           'truncated or not ONNX: re-export it with python -m export') from None


class OrtBackend(Backend):
    """path: an .onnx file written by `python -m export` (with post-processing).

    config / cross_class: when given, must match how the model was exported (post-processing is
    fixed at export); a mismatch raises BackendError saying how to re-export. providers:
    onnxruntime execution providers (default: CUDA when usable, else CPU). num_threads: intra-op
    threads (default: one per core).
    """

    name = 'ort'

    def __init__(self, path: str | Path, *, config: str | None = None, cross_class: bool | None = None,
                 providers: list[str] | None = None, num_threads: int | None = None):
        super().__init__(path)
        self.config_name = config
        self.cross_class = cross_class
        self.requested_providers = providers
        self.num_threads = num_threads
        self.session = None
        self._fixed_batch = False

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses (after any fallback)."""
        return self.session.get_providers() if self.session is not None else []

    @property
    def description(self) -> str:
        text = f'onnxruntime on {", ".join(self.providers)}'
        if self.metadata.precision == 'int8' and self.providers[0] == 'CPUExecutionProvider':
            text += f'; INT8 kernels: {int8_kernels()}'
        return text

    def _load_impl(self) -> None:
        session = create_session(self.path, providers=self.requested_providers, num_threads=self.num_threads)
        self.warnings = cuda_fallback_warnings(self.requested_providers, session.get_providers())
        metadata = read_session_metadata(session, self.path)
        self._check_interface(session, metadata)
        self._check_options(metadata)
        batch_dim = session.get_inputs()[0].shape[0]
        self.session, self.metadata = session, metadata
        # Our exports have a dynamic batch; a file edited to a fixed one takes exactly that many.
        self._fixed_batch = isinstance(batch_dim, int) and batch_dim > 0
        self.max_batch = batch_dim if self._fixed_batch else None
        self.output_names = tuple(o.name for o in session.get_outputs())

    def _check_interface(self, session, metadata: ModelMetadata) -> None:
        inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
        if outputs == list(RAW_OUTPUTS):
            raise BackendError(f'{self.path} was exported with --no-postprocess (raw head outputs); the runtime '
                               'needs the post-processing: export it again without --no-postprocess')
        # YOLACT++ models (a maskiou_net) also have BOX_SCORES; the rest have exactly POSTPROCESS_OUTPUTS.
        if sorted(outputs) not in (sorted(POSTPROCESS_OUTPUTS), sorted([*POSTPROCESS_OUTPUTS, BOX_SCORES])):
            raise BackendError(f'{self.path} has outputs {outputs}, not {list(POSTPROCESS_OUTPUTS)} (and '
                               f'{BOX_SCORES} for YOLACT++): export the model with python -m export')
        # Height and width are symbolic: the graph resizes each image to metadata.input_size itself.
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != 'tensor(uint8)' \
                or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3 \
                or any(isinstance(dim, int) for dim in inputs[0].shape[1:3]):
            got = ', '.join(f'{i.name} {i.type} {i.shape}' for i in inputs)
            raise BackendError(f'{self.path} takes {got}, not {INPUT_NAME} uint8 [batch, height, width, 3] (images '
                               'of any size, resized inside the graph): export the model again with python -m export')

    def _check_options(self, metadata: ModelMetadata) -> None:
        if self.config_name is not None and self.config_name != metadata.config:
            raise BackendError(f'{self.path} is a {metadata.config} model, not {self.config_name}: drop --config '
                               'or export the checkpoint of that config')
        if self.cross_class is not None and bool(self.cross_class) != metadata.cross_class:
            flag = '--cross-class' if self.cross_class else 'without --cross-class'
            raise BackendError(f'{self.path} was exported with {"cross" if metadata.cross_class else "per"}-class '
                               f'Fast NMS; it is fixed at export: export again {flag}')

    def _infer_impl(self, images: np.ndarray) -> RawDetections:
        count = len(images)
        if self._fixed_batch and count < self.max_batch:
            # A model with a fixed batch size takes exactly that many images: pad, then drop the padding.
            padding = np.zeros((self.max_batch - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        outputs = self.session.run(list(self.output_names), {INPUT_NAME: images})
        return {name: value[:count] for name, value in zip(self.output_names, outputs)}

    def _close_impl(self) -> None:
        self.session = None


def read_session_metadata(session, path: str | os.PathLike) -> ModelMetadata:
    """The ModelMetadata the exporter stored under METADATA_KEY; BackendError if missing or malformed."""
    try:
        return metadata_from_props(session.get_modelmeta().custom_metadata_map, str(path),
                                   fix='export the checkpoint with python -m export')
    except MetadataError as e:  # open_backend's callers catch BackendError
        raise BackendError(str(e)) from None
