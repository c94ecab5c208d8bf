"""What a deployed model carries about itself: ONNX metadata_props, the engine's JSON sidecar and
the torch checkpoint all describe a model with this one record.

Part of the runtime's contract: the runtime reads it on hosts that have only onnxruntime or
TensorRT. The build-time side makes one from a config with yolact_torch.config.metadata_from_config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from runtime import __version__
from runtime.errors import ToolkitError

PRECISIONS = ('fp32', 'fp16', 'int8')


class MetadataError(ToolkitError, ValueError):
    """Metadata that is missing, malformed or does not fit what reads it."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _list_of(value, check, length: int | None = None) -> bool:
    return isinstance(value, (list, tuple)) and (length is None or len(value) == length) and all(map(check, value))


def field_problems(data: dict) -> list[str]:
    """One 'field: what is wrong' per field of a ModelMetadata dict (to_dict()) that holds the wrong
    type or an impossible value, so a model is refused when it loads, not at its first image."""
    problems = []

    def check(name: str, ok: bool, expected: str) -> None:
        if not ok:
            shown = repr(data[name])  # 80 class names would drown the line
            problems.append(f'{name} is {shown if len(shown) <= 60 else shown[:57] + "..."}, expected {expected}')

    check('config', isinstance(data['config'], str) and data['config'] != '', 'a config name')
    names, ids = data['class_names'], data['category_ids']
    check('class_names', _list_of(names, lambda n: isinstance(n, str) and n.strip() != '') and len(names) > 0,
          'a non-empty list of non-empty names')
    check('category_ids', _list_of(ids, _is_int) and len(set(ids)) == len(ids), 'a list of distinct integers')
    if not problems and len(names) != len(ids):
        problems.append(f'class_names has {len(names)} names but category_ids {len(ids)} ids, expected one per class')
    check('input_size', _list_of(data['input_size'], lambda v: _is_int(v) and v > 0, 2),
          '[height, width] in pixels')
    check('mean_bgr', _list_of(data['mean_bgr'], _is_number, 3), 'three numbers')
    check('std_bgr', _list_of(data['std_bgr'], lambda v: _is_number(v) and v > 0, 3), 'three positive numbers')
    for name in ('conf_thresh', 'nms_thresh', 'mask_threshold'):
        check(name, _is_number(data[name]) and 0 <= data[name] <= 1, 'a number in [0, 1]')
    for name in ('top_k', 'max_dets'):
        check(name, _is_int(data[name]) and data[name] > 0, 'a positive integer')
    check('cross_class', isinstance(data['cross_class'], bool), 'true or false')
    if 'precision' in data:
        check('precision', data['precision'] in PRECISIONS, f'one of {", ".join(PRECISIONS)}')
    if 'toolkit_version' in data:
        check('toolkit_version', isinstance(data['toolkit_version'], str), 'a version string')
    return problems


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
        problems = field_problems(data)
        if problems:
            raise MetadataError(f'{source}: {"; ".join(problems)}: re-export the model')
        values = {n: data[n] for n in names if n in data}
        for key in ('class_names', 'category_ids', 'input_size', 'mean_bgr', 'std_bgr'):
            values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, source: str = 'metadata') -> 'ModelMetadata':
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MetadataError(f'{source}: not valid JSON ({e})') from None
        return cls.from_dict(data, source)
