"""What the weights cannot say, from the user: class names, input size and a config file.

Every stage that loads a checkpoint takes the same three flags (declared once, in
runtime.checkpoint_flags, because runtime.infer takes them too); this module is the one place
that reads their values and applies them over a base config:

- class names: a comma-separated list, a JSON list, or a file holding one name a line or a JSON
  list. Their count must equal the weights' class count.
- input size: the original's max_size (the network's square input side, in pixels).
- config file: JSON or YAML with the original config's fields (dbolya/yolact, data/config.py):
  name, backbone (selected_layers, pred_scales, pred_aspect_ratios), num_classes (background
  included, as the original counts), max_size, class_names, mask_dim, nms_top_k, nms_conf_thresh,
  nms_thresh, max_num_detections. Applied over the base config; the flags win over the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from yolact_torch.config import ConfigError, YolactConfig
from yolact_torch.priors import feature_sizes, priors_per_location

log = logging.getLogger(__name__)


def parse_class_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """Names from a --class-names value: a file (one name a line, or a JSON list), a JSON list,
    or comma-separated; a sequence of names passes through. ConfigError on an empty or bad list."""
    if not isinstance(value, str):
        names = tuple(value)
    else:
        text, source = value, '--class-names'
        if _is_file(value):
            text, source = Path(value).read_text(encoding='utf-8'), value
        stripped = text.strip()
        if stripped.startswith('['):
            names = _parse_json(stripped, source)
            if not isinstance(names, list):
                raise ConfigError(f'{source}: give a JSON list of class names')
        elif source != '--class-names':
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            names = [name.strip() for name in text.split(',')]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f'class names must be non-empty strings, got {list(names)!r}: give them comma-separated, '
                          'as a JSON list, or in a file with one name a line')
    return tuple(names)


def _parse_json(text: str, source) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f'{source}: not valid JSON ({e})') from None


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # a list of names longer than a file name can be
        return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list_of(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


# Field -> (check, the type in words). The original's names and meanings.
_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    'name': (lambda v: isinstance(v, str) and bool(v), 'a non-empty string'),
    'backbone': (lambda v: isinstance(v, dict), 'a mapping'),
    'num_classes': (lambda v: _is_int(v) and v >= 2, 'an integer >= 2 (classes + 1 for background)'),
    'max_size': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'class_names': (_list_of(lambda x: isinstance(x, str) and bool(x)), 'a list of non-empty strings'),
    'mask_dim': (lambda v: v is None or (_is_int(v) and v > 0), 'a positive integer or null'),
    'nms_top_k': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
    'nms_conf_thresh': (lambda v: _is_number(v) and 0 <= v < 1, 'a number in [0, 1)'),
    'nms_thresh': (lambda v: _is_number(v) and 0 < v <= 1, 'a number in (0, 1]'),
    'max_num_detections': (lambda v: _is_int(v) and v > 0, 'a positive integer'),
}
_BACKBONE_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    'selected_layers': (_list_of(lambda x: _is_int(x) and x >= 0), 'a list of stage indices'),
    'pred_scales': (_list_of(_list_of(_is_number)), 'a list (one per FPN level) of lists of numbers'),
    'pred_aspect_ratios': (_list_of(_list_of(_list_of(_is_number))),
                           'a list (one per FPN level) of lists of lists of numbers'),
}
# Config file field -> YolactConfig field, where the toolkit's name differs.
_RENAMED = {'nms_conf_thresh': 'conf_thresh'}


def _checked(fields: dict, allowed: dict, source: str, prefix: str = '') -> dict:
    for key, value in fields.items():
        if key not in allowed:
            raise ConfigError(f'{source}: unknown field {prefix + key!r}; known fields: '
                              f'{", ".join(prefix + k for k in allowed)}')
        check, words = allowed[key]
        if not check(value):
            raise ConfigError(f'{source}: field {prefix}{key} must be {words}, got {value!r}')
    return fields


def read_config_file(path: str | Path) -> dict:
    """The fields of a JSON (.json) or YAML file, each checked for name and type; ConfigError names
    the first unknown field or wrong type."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    text = path.read_text(encoding='utf-8')
    if path.suffix.lower() == '.json':
        fields = _parse_json(text, path)
    else:
        import yaml  # only config files need it

        try:
            fields = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f'{path}: not valid YAML ({" ".join(str(e).split())})') from None
    if not isinstance(fields, dict):
        raise ConfigError(f'{path}: expected a mapping of config fields, got {type(fields).__name__}')
    _checked(fields, _FIELDS, str(path))
    _checked(fields.get('backbone', {}), _BACKBONE_FIELDS, str(path), 'backbone.')
    return fields


def apply_config_file(cfg: YolactConfig, fields: dict, source: str) -> YolactConfig:
    """`cfg` with the config file's fields (as read_config_file returns them) applied. The class
    fields (num_classes, class_names) are checked against the weights by `configure`, not here."""
    backbone = fields.get('backbone', {})
    if backbone:
        replaced = {k: tuple(v) for k, v in backbone.items() if k == 'selected_layers'}
        if 'pred_scales' in backbone:
            replaced['pred_scales'] = tuple(tuple(level) for level in backbone['pred_scales'])
        if 'pred_aspect_ratios' in backbone:
            replaced['pred_aspect_ratios'] = tuple(tuple(tuple(r) for r in level)
                                                   for level in backbone['pred_aspect_ratios'])
        cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, **replaced))
    plain = {_RENAMED.get(k, k): v for k, v in fields.items()
             if k not in ('backbone', 'num_classes', 'class_names') and not (k == 'mask_dim' and v is None)}
    cfg = dataclasses.replace(cfg, **plain)
    _check_levels(cfg, source)
    return cfg


def _check_levels(cfg: YolactConfig, source: str) -> None:
    bcfg = cfg.backbone
    levels = len(bcfg.selected_layers) + cfg.fpn_num_downsample
    if len(bcfg.pred_scales) != levels or len(bcfg.pred_aspect_ratios) != levels:
        raise ConfigError(f'{source}: the FPN has {levels} levels ({len(bcfg.selected_layers)} selected layers + '
                          f'{cfg.fpn_num_downsample} downsampled) but pred_scales has {len(bcfg.pred_scales)} and '
                          f'pred_aspect_ratios {len(bcfg.pred_aspect_ratios)}: give one entry per level')
    if max(bcfg.selected_layers, default=len(bcfg.layers)) >= len(bcfg.layers):
        raise ConfigError(f'{source}: selected_layers {list(bcfg.selected_layers)} but the {bcfg.name} backbone has '
                          f'stages 0..{len(bcfg.layers) - 1}')
    try:
        priors_per_location(cfg)
    except ValueError as e:
        raise ConfigError(f'{source}: {e}') from None


def check_input_size(cfg: YolactConfig, source: str = '--input-size') -> None:
    """ConfigError unless cfg.max_size is a size the network takes: every FPN level (by the conv
    arithmetic) smaller than the one before, so each level sees the image rather than padding."""
    sides = [h for h, _ in feature_sizes(cfg)] if cfg.max_size > 0 else []
    if not sides or any(finer <= coarser for finer, coarser in zip(sides, sides[1:])):
        smallest = next(s for s in range(1, 4096) if _is_pyramid(dataclasses.replace(cfg, max_size=s)))
        raise ConfigError(f'{source} {cfg.max_size}: the network needs an input size of at least {smallest} '
                          f'pixels for {cfg.name} (at {cfg.max_size} its FPN levels are {sides or "empty"}, each '
                          'must be smaller than the one before): give a larger size, e.g. 550 as the original')


def _is_pyramid(cfg: YolactConfig) -> bool:
    sides = [h for h, _ in feature_sizes(cfg)]
    return all(finer > coarser for finer, coarser in zip(sides, sides[1:]))


def generated_class_names(count: int) -> tuple[str, ...]:
    """class_1..class_N, for weights whose names nobody gave."""
    return tuple(f'class_{i}' for i in range(1, count + 1))


def configure(base: YolactConfig, *, weights_classes: int, name: str | None = None,
              default_names: Sequence[str] | None = None, default_ids: Sequence[int] | None = None,
              class_names: str | Sequence[str] | None = None, input_size: int | None = None,
              config_file: str | Path | None = None) -> YolactConfig:
    """The config a checkpoint is used with: `base`, then the config file, then the flags.

    weights_classes: classes the weights predict (background excluded). name: the config name the
    model was trained under (default: the file's, else base's). default_names / default_ids: the
    names the checkpoint or base config supplies when no flag or file does (ignored unless there
    are weights_classes of them); without any, class_1..class_N with one log line saying how to
    name them. ConfigError names the conflict (two class counts, a bad size, a bad file).
    """
    fields = read_config_file(config_file) if config_file is not None else {}
    cfg = apply_config_file(base, fields, str(config_file)) if fields else base
    if 'num_classes' in fields and fields['num_classes'] - 1 != weights_classes:
        raise ConfigError(f'{config_file}: num_classes {fields["num_classes"]} ({fields["num_classes"] - 1} classes '
                          f'+ background) but the weights predict {weights_classes} classes + background: '
                          f'set num_classes to {weights_classes + 1}')
    if class_names is not None:
        names, source = parse_class_names(class_names), '--class-names'
    elif 'class_names' in fields:
        names, source = tuple(fields['class_names']), str(config_file)
    elif default_names is not None and len(default_names) == weights_classes:
        names, source = tuple(default_names), None
    else:
        names, source = generated_class_names(weights_classes), None
        log.warning(f'the classes are called class_1..class_{weights_classes}: name them with --class-names '
                    '"a,b,..." (or a file with one name a line)')
    if len(names) != weights_classes:
        raise ConfigError(f'{source} gives {len(names)} class names but the weights predict {weights_classes} '
                          f'classes: give {weights_classes} names')
    ids = default_ids if source is None and default_ids is not None and len(default_ids) == len(names) else None
    cfg = cfg.with_classes(names, ids)
    if input_size is not None:
        cfg = dataclasses.replace(cfg, max_size=int(input_size))
    chosen = fields.get('name', name)
    if chosen is not None:
        cfg = dataclasses.replace(cfg, name=chosen)
    check_input_size(cfg, '--input-size' if input_size is not None else f'max_size of {cfg.name}')
    return base if cfg == base else cfg  # unchanged: the named config itself
