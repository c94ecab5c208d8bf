"""Triton model repositories for a .onnx or .engine of this toolkit.

Two layouts, both serving protocol.MODEL_NAME with the Python-backend step of triton_model.py:
  local_repository:    for the tritonserver bundled with nvidia-pytriton (Python backend only): the
                       step opens the model file itself with runtime.backends.
  official_repository: for NVIDIA's tritonserver containers: the network is its own model,
                       NETWORK_NAME (onnxruntime_onnx for .onnx, tensorrt_plan for .engine, whose
                       plugins are serialized inside the plan by the engine builder), and the step
                       calls it through BLS, so Triton batches and schedules the network itself.
Both declare box_scores for a YOLACT++ model (has_box_scores decides, from the model itself) and
only then. Each config.pbtxt is Triton's ModelConfig in protobuf text format.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime.backends import backend_for_path, open_backend
from runtime.contract import BOX_SCORES, INPUT_NAME
from runtime.errors import ToolkitError
from runtime.files import atomic_output, write_atomic
from runtime.metadata import ModelMetadata
from runtime.serve.protocol import (BOX_SCORES_OUTPUT, IMAGE_INPUT, IMAGE_RANGE_PARAMETER, MAX_IMAGE_PIXELS,
                                    MAX_PIXELS_PARAMETER, METADATA_PARAMETER, MODEL_NAME, THRESHOLD_INPUT,
                                    ServeError)
from runtime.tensorrt.sidecar import read_sidecar

NETWORK_NAME = 'yolact_net'
STEP_SOURCE = Path(__file__).with_name('triton_model.py')
# How long the dynamic batcher holds a request for others to join it: a few milliseconds buys
# batches under load and costs one image's latency little (tens of ms on a CPU).
QUEUE_DELAY_US = 2000
# The network file each platform loads from the version folder 1/.
PLATFORMS = {'ort': ('onnxruntime_onnx', 'model.onnx'), 'trt': ('tensorrt_plan', 'model.plan')}


@dataclass(frozen=True)
class ServingOptions:
    """max_batch: the most requests the dynamic batcher puts in one batch; instances: model
    instances (each a copy of the model in memory; on a GPU host, per GPU); max_pixels: the
    largest image (H * W) a request may carry."""

    max_batch: int = 8
    instances: int = 1
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self):
        if min(self.max_batch, self.instances, self.max_pixels) < 1:
            raise ServeError(f'--max-batch, --instances and --max-pixels must be at least 1, got {self.max_batch}, '
                             f'{self.instances} and {self.max_pixels}')


def model_metadata(model_file: Path) -> ModelMetadata:
    """The metadata of a model file for a repository: an engine's from its sidecar (no TensorRT
    needed, so a repository for a GPU host can be written anywhere), any other file's from its
    backend (servable_metadata)."""
    if backend_for_path(model_file) == 'trt':
        return read_sidecar(model_file).metadata
    return servable_metadata(model_file)


def servable_metadata(model_file: Path) -> ModelMetadata:
    """The metadata of a model file that the bundled server is to serve, read by opening the file
    with its backend on this host as the Python-backend step will: a model that cannot run here
    (an engine on a host without TensorRT or a GPU, a file that does not load) is a ServeError of
    one line before any server starts, not a failed start with the server's log."""
    try:
        with open_backend(model_file) as backend:
            return backend.metadata
    except ToolkitError as e:
        hint = ''
        if backend_for_path(model_file) == 'trt':
            from runtime.tensorrt.backend import TensorRTUnavailableError  # imported by open_backend already
            if isinstance(e, TensorRTUnavailableError):
                hint = (f'. To serve it here, serve the ONNX model it was built from (python -m runtime.serve '
                        f'--model {read_sidecar(model_file).engine.onnx_file}); for a GPU host\'s container, '
                        f'write a repository (--repository DIR)')
        raise ServeError(f'{model_file} cannot be served on this host: {e}{hint}') from None


def has_box_scores(model_file: Path) -> bool:
    """Whether the model outputs BOX_SCORES (a YOLACT++ model), read from the model itself: an
    engine's outputs from its sidecar (no TensorRT needed, as model_metadata), any other file's from
    its backend (an ONNX model's graph outputs). The one answer both repository writers declare."""
    if backend_for_path(model_file) == 'trt':
        return BOX_SCORES in read_sidecar(model_file).engine.outputs
    with open_backend(model_file) as backend:
        return BOX_SCORES in backend.output_names


def _pbtxt_string(text: str) -> str:
    return '"' + text.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n') + '"'


def _tensor(name: str, data_type: str, dims: list[int], extra: str = '') -> str:
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def _config(name: str, header: str, options: ServingOptions, kind: str, inputs: list[str], outputs: list[str],
            parameters: dict[str, str]) -> str:
    lines = [f'name: "{name}"', header, f'max_batch_size: {options.max_batch}',
             f'dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}',
             f'instance_group [ {{ count: {options.instances} kind: {kind} }} ]',
             'input [', ',\n'.join(inputs), ']', 'output [', ',\n'.join(outputs), ']']
    lines += [f'parameters {{ key: "{key}" value: {{ string_value: {_pbtxt_string(value)} }} }}'
              for key, value in parameters.items()]
    return '\n'.join(lines) + '\n'


def step_config(metadata: ModelMetadata, options: ServingOptions, kind: str, box_scores: bool,
                **parameters: str) -> str:
    """config.pbtxt of the Python-backend step (protocol.py's wire format; box_scores: the model
    has them, has_box_scores). The image input may differ in size between the requests of one batch
    (ragged): the step resizes each."""
    inputs = [_tensor(IMAGE_INPUT, 'TYPE_UINT8', [-1, -1, 3], ' allow_ragged_batch: true'),
              _tensor(THRESHOLD_INPUT, 'TYPE_FP32', [1], ' optional: true')]
    outputs = [_tensor('boxes', 'TYPE_FP32', [-1, 4]), _tensor('scores', 'TYPE_FP32', [-1]),
               _tensor('classes', 'TYPE_INT32', [-1]), _tensor('mask_lengths', 'TYPE_INT32', [-1]),
               _tensor('masks', 'TYPE_UINT8', [-1])]
    if box_scores:
        outputs.append(_tensor(BOX_SCORES_OUTPUT, 'TYPE_FP32', [-1]))
    return _config(MODEL_NAME, 'backend: "python"', options, kind, inputs, outputs,
                   {METADATA_PARAMETER: metadata.to_json(), MAX_PIXELS_PARAMETER: str(options.max_pixels),
                    **parameters})


def network_config(metadata: ModelMetadata, platform: str, options: ServingOptions, box_scores: bool) -> str:
    """config.pbtxt of the network, from the ONNX contract (runtime/contract.py): images uint8
    [B, H, W, 3] at the image's own size (the network resizes; -1: any); num_dets [B], boxes
    [B, D, 4], scores and classes [B, D], masks [B, D, Hp, Wp] with D = metadata.max_dets (Hp, Wp
    are the model's prototype grid, -1: Triton reads them from the model), and box_scores [B, D]
    where the model has them (has_box_scores)."""
    detections = metadata.max_dets
    inputs = [_tensor(INPUT_NAME, 'TYPE_UINT8', [-1, -1, 3])]
    outputs = [_tensor('num_dets', 'TYPE_INT32', [1], ' reshape: { shape: [ ] }'),
               _tensor('boxes', 'TYPE_FP32', [detections, 4]), _tensor('scores', 'TYPE_FP32', [detections]),
               _tensor('classes', 'TYPE_INT32', [detections]), _tensor('masks', 'TYPE_FP32', [detections, -1, -1])]
    if box_scores:
        outputs.append(_tensor(BOX_SCORES, 'TYPE_FP32', [detections]))
    return _config(NETWORK_NAME, f'platform: "{platform}"', options, 'KIND_GPU', inputs, outputs, {})


def engine_parameters(model_file: Path) -> dict[str, str]:
    """The step's parameters for an engine's optimisation profile (protocol.IMAGE_RANGE_PARAMETER,
    from the sidecar): none for other model files, which take any image size."""
    if backend_for_path(model_file) != 'trt':
        return {}
    engine = read_sidecar(model_file).engine
    return {IMAGE_RANGE_PARAMETER: json.dumps({'min': list(engine.min_image), 'max': list(engine.max_image)})}


def _write_step(repository: Path, config: str) -> None:
    write_atomic(repository / MODEL_NAME / 'config.pbtxt', config.encode())
    write_atomic(repository / MODEL_NAME / '1' / 'model.py', STEP_SOURCE.read_bytes())


def local_repository(model_file: Path, metadata: ModelMetadata, repository: Path, options: ServingOptions) -> Path:
    """A repository for the bundled server: the step opens `model_file` (absolute path) itself, on
    CPU instances (the bundled server has no GPU backends; a .engine still runs on the GPU)."""
    _write_step(repository, step_config(metadata, options, 'KIND_CPU', has_box_scores(model_file),
                                        model_file=str(Path(model_file).resolve()), **engine_parameters(model_file)))
    return repository


def official_repository(model_file: Path, metadata: ModelMetadata, repository: Path,
                        options: ServingOptions) -> Path:
    """A repository for NVIDIA's tritonserver containers: NETWORK_NAME (the model file, copied)
    and the step calling it through BLS. The step runs on CPU instances; the network on the GPU."""
    backend = backend_for_path(model_file)
    if backend not in PLATFORMS:
        raise ServeError(f'{model_file}: the official containers serve .onnx or .engine files; export or build '
                         f'one first (python -m export, make engine)')
    platform, file_name = PLATFORMS[backend]
    engine_batch = read_sidecar(model_file).engine.max_batch if backend == 'trt' else options.max_batch
    if options.max_batch > engine_batch:  # Triton does not load a tensorrt_plan configured above its profile
        raise ServeError(f'{model_file}: --max-batch {options.max_batch} is above the engine profile\'s maximum batch '
                         f'{engine_batch}; pass --max-batch {engine_batch}, or rebuild the engine with '
                         f'--max-batch {options.max_batch} (make engine MAX_BATCH={options.max_batch})')
    box_scores = has_box_scores(model_file)
    write_atomic(repository / NETWORK_NAME / 'config.pbtxt',
                 network_config(metadata, platform, options, box_scores).encode())
    with atomic_output(repository / NETWORK_NAME / '1' / file_name) as tmp:
        shutil.copyfile(model_file, tmp)
    _write_step(repository, step_config(metadata, options, 'KIND_CPU', box_scores, network=NETWORK_NAME,
                                        **engine_parameters(model_file)))
    return repository
