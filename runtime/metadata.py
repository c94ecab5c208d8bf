"""What a deployed model carries about itself: ONNX metadata_props, the engine's JSON sidecar and
the torch checkpoint all describe a model with this one record.

Part of the runtime's contract: the runtime reads it on hosts that have only onnxruntime or
TensorRT. The build-time side makes one from a config with model.config.metadata_from_config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from runtime import __version__
from runtime.errors import ToolkitError

PRECISIONS = ('fp32', 'fp16', 'int8')


class MetadataError(ToolkitError, ValueError):
    """Metadata that is missing, malformed or does not fit what reads it."""


@dataclass(frozen=True)
class ModelMetadata:
    """config: config name; input_size: (height, width) the model takes; mean_bgr / std_bgr:
    normalisation in 0..255 units; thresholds as used by Fast NMS; precision: fp32|fp16|int8."""

    config: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    input_size: tuple[int, int]
    mean_bgr: tuple[float, float, float]
    std_bgr: tuple[float, float, float]
    conf_thresh: float
    nms_thresh: float
    top_k: int
    max_dets: int
    cross_class: bool
    mask_threshold: float
    precision: str = 'fp32'
    toolkit_version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = 'metadata') -> 'ModelMetadata':
        """Rebuild from `to_dict()` output; names the missing or malformed field and `source`."""
        if not isinstance(data, dict):
            raise MetadataError(f'{source}: expected a JSON object, got {type(data).__name__}')
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in ('precision', 'toolkit_version'))
        if missing:
            raise MetadataError(f'{source}: missing field(s) {", ".join(missing)}; re-export the model')
        try:
            values = {n: data[n] for n in names if n in data}
            for key in ('class_names', 'category_ids', 'input_size', 'mean_bgr', 'std_bgr'):
                values[key] = tuple(values[key])
            values['category_ids'] = tuple(int(c) for c in values['category_ids'])
            values['input_size'] = tuple(int(s) for s in values['input_size'])
            meta = cls(**values)
        except (TypeError, ValueError) as e:
            raise MetadataError(f'{source}: malformed field ({e}); re-export the model') from None
        if meta.precision not in PRECISIONS:
            raise MetadataError(f'{source}: precision {meta.precision!r} is not one of {", ".join(PRECISIONS)}')
        if len(meta.class_names) != len(meta.category_ids):
            raise MetadataError(f'{source}: {len(meta.class_names)} class names but '
                                f'{len(meta.category_ids)} category ids')
        return meta

    @classmethod
    def from_json(cls, text: str, source: str = 'metadata') -> 'ModelMetadata':
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f'{source}: not valid JSON ({e})') from None
        return cls.from_dict(data, source)
