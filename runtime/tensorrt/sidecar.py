"""The JSON sidecar beside every engine (`FILE.engine.json`) and the check a runtime makes before it
trusts an engine.

A serialized TensorRT engine is only valid for the TensorRT build and the GPU(s) it was made for,
and says little about the model inside it. The sidecar records both halves:

    {"format": "yolact-engine/1",
     "model":  ModelMetadata.to_dict()       (config, classes, input size, thresholds, precision, ...),
     "engine": {"tensorrt_flavour": "tensorrt" | "tensorrt_rtx", "tensorrt_version": "10.13.0.35",
                "build_gpu": "NVIDIA GeForce RTX 4090" | null (TensorRT-RTX builds on the CPU),
                "compute_capabilities": ["8.9"]   (the engine's targets, "major.minor"),
                "max_batch": 8, "plugins": ["yolact::FastNMS/1", ...] (TensorRT plugins the engine uses),
                "outputs": ["num_dets", "boxes", "scores", "classes", "masks"] (the engine's output tensors,
                           plus "box_scores" for YOLACT++; what a repository for it declares without TensorRT),
                "min_image": [32, 32], "opt_image": [1080, 1920], "max_image": [3840, 3840]
                           (the optimisation profile's image (H, W) range; the graph resizes to the model size),
                "onnx_file": "build/demo.fp16.onnx", "onnx_sha256": "...", "engine_sha256": "...",
                "built_at": "2026-11-22T04:00:00Z"}}

`check_sidecar` refuses an engine whose sidecar does not fit this host (another TensorRT, another
GPU, a plugin that is not registered, engine bytes that are not the ones built) with a message
that says to rebuild it with `make engine`.

The schema, its reader and the host check belong to the runtime, which consumes them; the engine
builder writes sidecars with engines.sidecar.write_sidecar. Standard library only: no tensorrt
import, so a runtime can check an engine before it loads TensorRT at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from runtime.errors import ToolkitError
from runtime.files import file_sha256
from runtime.metadata import MetadataError, ModelMetadata

SIDECAR_FORMAT = 'yolact-engine/1'
SIDECAR_SUFFIX = '.json'
TENSORRT_FLAVOURS = ('tensorrt', 'tensorrt_rtx')
# The engine fields holding the optimisation profile's image sizes, (height, width) each.
IMAGE_RANGE_FIELDS = ('min_image', 'opt_image', 'max_image')


class SidecarError(ToolkitError, ValueError):
    """A sidecar that is missing or malformed."""


class EngineMismatchError(SidecarError):
    """An engine that cannot be used on this host: the message lists why and says to rebuild."""


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`FILE.engine` -> `FILE.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def plugin_key(name: str, namespace: str, version: str) -> str:
    """How the sidecar names a TensorRT plugin: `namespace::name/version` (e.g. yolact::FastNMS/1).
    Builder and runtime both use this form, so `registered_plugins` compare as strings."""
    return f'{namespace}::{name}/{version}'


def rebuild_hint(onnx_file: str | None = None) -> str:
    """How to rebuild: the exact command when the source ONNX is known."""
    command = f'python -m engines.build --model {onnx_file or "FILE.onnx"} --force'
    return f'rebuild the engine on this host with `make engine` ({command})'


@dataclass(frozen=True)
class EngineInfo:
    """What the engine half of the sidecar records (see the module docstring for the meaning)."""

    tensorrt_flavour: str
    tensorrt_version: str
    build_gpu: str | None
    compute_capabilities: tuple[str, ...]
    max_batch: int
    plugins: tuple[str, ...]
    outputs: tuple[str, ...]
    min_image: tuple[int, int]
    opt_image: tuple[int, int]
    max_image: tuple[int, int]
    onnx_file: str
    onnx_sha256: str
    engine_sha256: str
    built_at: str


@dataclass(frozen=True)
class EngineSidecar:
    metadata: ModelMetadata
    engine: EngineInfo

    def to_dict(self) -> dict:
        return {'format': SIDECAR_FORMAT, 'model': self.metadata.to_dict(), 'engine': asdict(self.engine)}

    @classmethod
    def from_dict(cls, data, source: str = 'sidecar') -> 'EngineSidecar':
        """Rebuild from `to_dict()` output; SidecarError names the bad part and `source`."""
        if not isinstance(data, dict):
            raise SidecarError(f'{source}: expected a JSON object, got {type(data).__name__}; {rebuild_hint()}')
        if data.get('format') != SIDECAR_FORMAT:
            raise SidecarError(f'{source}: format {data.get("format")!r} is not {SIDECAR_FORMAT!r}; '
                               f'{rebuild_hint()}')
        try:
            metadata = ModelMetadata.from_dict(data.get('model'), f'{source} (model)')
        except MetadataError as e:
            raise SidecarError(f'{e}; {rebuild_hint()}') from None
        raw = data.get('engine')
        if not isinstance(raw, dict):
            raise SidecarError(f'{source}: no "engine" object; {rebuild_hint()}')
        missing = [f.name for f in fields(EngineInfo) if f.name not in raw]
        onnx_file = raw.get('onnx_file') if isinstance(raw.get('onnx_file'), str) else None
        if missing:
            raise SidecarError(f'{source}: engine field(s) {", ".join(missing)} missing; {rebuild_hint(onnx_file)}')
        try:
            values = {f.name: raw[f.name] for f in fields(EngineInfo)}
            for key in ('compute_capabilities', 'plugins', 'outputs'):
                if not isinstance(values[key], list) or not all(isinstance(v, str) for v in values[key]):
                    raise TypeError(f'{key} must be a list of strings')
                values[key] = tuple(values[key])
            if not isinstance(values['max_batch'], int) or values['max_batch'] < 1:
                raise TypeError('max_batch must be a positive integer')
            for key in IMAGE_RANGE_FIELDS:
                if not isinstance(values[key], list) or len(values[key]) != 2 \
                        or not all(isinstance(v, int) and v >= 1 for v in values[key]):
                    raise TypeError(f'{key} must be [height, width], positive integers')
                values[key] = tuple(values[key])
            for key in ('tensorrt_flavour', 'tensorrt_version', 'onnx_file', 'onnx_sha256', 'engine_sha256',
                        'built_at'):
                if not isinstance(values[key], str):
                    raise TypeError(f'{key} must be a string')
            if values['build_gpu'] is not None and not isinstance(values['build_gpu'], str):
                raise TypeError('build_gpu must be a string or null')
            if values['tensorrt_flavour'] not in TENSORRT_FLAVOURS:
                raise TypeError(f'tensorrt_flavour must be one of {", ".join(TENSORRT_FLAVOURS)}')
        except TypeError as e:
            raise SidecarError(f'{source}: malformed engine field ({e}); {rebuild_hint(onnx_file)}') from None
        return cls(metadata, EngineInfo(**values))




def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    """The sidecar of `engine_path` (read from `FILE.engine.json`); SidecarError when it is missing,
    not JSON or not a sidecar."""
    path = sidecar_path(engine_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SidecarError(f'{engine_path}: its sidecar {path} is missing (every engine built by '
                           f'`make engine` has one); {rebuild_hint()}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise SidecarError(f'{path}: cannot be read ({e}); {rebuild_hint()}') from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SidecarError(f'{path}: not valid JSON ({e}); {rebuild_hint()}') from None
    return EngineSidecar.from_dict(data, str(path))


def sidecar_mismatches(sidecar: EngineSidecar, engine_path: str | os.PathLike, *, tensorrt_flavour: str,
                       tensorrt_version: str, gpu_name: str | None, compute_capability: str | None,
                       registered_plugins=frozenset(), verify_checksum: bool = True) -> list[str]:
    """Why the engine at `engine_path`, described by `sidecar`, cannot run on this host (empty list:
    it can). The host: its TensorRT flavour ('tensorrt' | 'tensorrt_rtx') and version, its GPU's
    name and compute capability ('major.minor'; None when there is no GPU), and the plugin keys
    (see `plugin_key`) registered with TensorRT. `verify_checksum` re-hashes the engine file."""
    info = sidecar.engine
    problems = []
    if info.tensorrt_flavour != tensorrt_flavour or info.tensorrt_version != tensorrt_version:
        problems.append(f'it was built with {info.tensorrt_flavour} {info.tensorrt_version}, this host has '
                        f'{tensorrt_flavour} {tensorrt_version} (engines are tied to the exact TensorRT version)')
    if compute_capability is None:
        problems.append('this host has no usable CUDA GPU')
    elif compute_capability not in info.compute_capabilities:
        problems.append(f'it targets compute capability {", ".join(info.compute_capabilities)}, this GPU '
                        f'({gpu_name}) is {compute_capability}')
    elif info.build_gpu is not None and gpu_name != info.build_gpu:
        # TensorRT (not -RTX) picks kernels by timing them on the build GPU.
        problems.append(f'it was built and tuned on {info.build_gpu}, this GPU is {gpu_name}')
    missing = sorted(set(info.plugins) - set(registered_plugins))
    if missing:
        problems.append(f'it uses the TensorRT plugin(s) {", ".join(missing)}, which are not registered here '
                        f'(install the plugins extra: pip install -e .[plugins], or rebuild where they are absent '
                        f'so the ONNX function bodies are used)')
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        problems.append(f'the engine file {engine_path} does not exist')
    elif verify_checksum and file_sha256(engine_path) != info.engine_sha256:
        problems.append('the engine file is not the one the sidecar describes (checksum differs: '
                        'corrupted, truncated or replaced)')
    return problems


def check_sidecar(engine_path: str | os.PathLike, **host) -> EngineSidecar:
    """Read the sidecar of `engine_path` and check it against the host described by `host` (the
    keyword arguments of `sidecar_mismatches`). Returns the sidecar; raises SidecarError when it
    is missing or malformed, EngineMismatchError (listing every reason and saying to rebuild with
    `make engine`) when the engine does not fit."""
    sidecar = read_sidecar(engine_path)
    problems = sidecar_mismatches(sidecar, engine_path, **host)
    if problems:
        raise EngineMismatchError(f'{engine_path} cannot be used here: ' + '; '.join(problems) + '. '
                                  + rebuild_hint(sidecar.engine.onnx_file))
    return sidecar
