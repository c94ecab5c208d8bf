"""Reading and writing YOLACT checkpoints.

Two kinds load:
- the official YOLACT and YOLACT++ releases (yolact_base_54_800000.pth,
  yolact_plus_resnet50_54_800000.pth, ...): a raw state dict; the config
  comes from the file name as the original infers it (model.config.config_from_filename) unless
  given;
- the toolkit's own: a dict {'format': FORMAT, 'config': name, 'class_names': [...],
  'category_ids': [...], 'model': state dict in the official key layout, and optionally
  'iteration', 'optimizer', 'scheduler', 'epoch', ...}. Its class names override the config's, so
  a model fine-tuned on another class set loads with its base config.
Every file is read with torch.load(weights_only=True): a checkpoint never runs code. Any file that
is not a loadable YOLACT checkpoint raises one CheckpointError that says why and what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from model.config import CONFIGS, ConfigError, YolactConfig, config_from_filename, get_config
from model.yolact import Yolact
from runtime.errors import ToolkitError
from runtime.files import atomic_output

FORMAT = 'yolact-deploy/1'
_OWN_FIELDS = ('format', 'config', 'class_names', 'category_ids', 'model')
_SHOWN_KEYS = 5  # how many differing keys an error message lists


class CheckpointError(ToolkitError, ValueError):
    """A file that is not a checkpoint, or one that does not fit the requested config."""


def save_checkpoint(path, model: torch.nn.Module, cfg: YolactConfig, **extra) -> Path:
    """Write `model`'s weights with `cfg`'s name and classes in the toolkit's format; returns the path.

    extra: more entries (iteration, optimizer / scheduler state dicts, epoch, ...); they must be
    made of tensors, numbers, strings and containers of them, as weights_only loading allows.
    Written to a temporary file in the same folder, then renamed: never a half-written checkpoint.
    """
    clash = sorted(set(extra) & set(_OWN_FIELDS))
    if clash:
        raise ValueError(f'save_checkpoint: {", ".join(clash)} are written from the model and config; '
                         'do not pass them as extra entries')
    model = getattr(model, 'module', model)  # DistributedDataParallel wraps the model
    model_cfg = getattr(model, 'cfg', None)
    if model_cfg is not None and model_cfg.num_classes != cfg.num_classes:
        raise ValueError(f'save_checkpoint: the model predicts {model_cfg.num_classes - 1} classes but the config '
                         f'names {cfg.num_classes - 1}: pass the config the model was built with')
    checkpoint = {
        'format': FORMAT, 'config': cfg.name, 'class_names': list(cfg.class_names),
        'category_ids': [int(c) for c in cfg.category_ids], 'model': model.state_dict(), **extra}
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def read_checkpoint(path, map_location='cpu') -> dict:
    """The file's top-level dict (a raw state dict or the toolkit's checkpoint dict), loaded with
    weights_only=True; CheckpointError if it is missing, unreadable or not a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds (pickle, zip, EOF, weights_only)
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint ({_load_failure_reason(e)}); give a YOLACT .pth '
            'file (an official release or one saved by this toolkit)') from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a checkpoint (expected a state dict '
                              'or a checkpoint dict)')
    return obj


def _load_failure_reason(error: Exception) -> str:
    """The informative line of a torch.load failure (weights_only errors bury it mid-message)."""
    text = str(error)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        detail = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), '')
        return f'not a PyTorch file, or it holds objects weights_only loading refuses: {detail}'
    first_line = (text.strip().splitlines() or [type(error).__name__])[0]
    return f'{type(error).__name__}: {first_line[:200]}'


def load_model(path, config: str | YolactConfig | None = None, map_location='cpu') -> tuple[Yolact, YolactConfig]:
    """Build the model a checkpoint describes and load its weights; returns (model in eval mode, config).

    config: a config name or YolactConfig; None takes it from the checkpoint (toolkit format) or
    from the file name (official releases).
    """
    path = Path(path)
    obj = read_checkpoint(path, map_location)
    if 'format' in obj:
        state, cfg = _own_format(obj, path, config)
    else:
        state, cfg = obj, _official_config(path, config)
    state = _clean_state_dict(state, path, cfg)
    model = Yolact(cfg)
    _check_keys(state, model.state_dict(), path, cfg)
    model.load_state_dict(state)
    return model.eval(), cfg


def _own_format(obj: dict, path: Path, config) -> tuple[dict, YolactConfig]:
    if obj['format'] != FORMAT:
        raise CheckpointError(f'{path} has checkpoint format {obj["format"]!r}; this toolkit reads {FORMAT!r}')
    missing = [f for f in _OWN_FIELDS if f not in obj]
    if missing:
        raise CheckpointError(f'{path} is a {FORMAT} checkpoint without {", ".join(missing)}: re-save it with '
                              'model.checkpoint.save_checkpoint')
    names, ids = obj['class_names'], obj['category_ids']
    if (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            or not isinstance(ids, (list, tuple)) or len(ids) != len(names)):
        raise CheckpointError(f'{path}: class_names must be a list of strings with one category id each')
    saved_name = obj['config']
    if config is None:
        if saved_name not in CONFIGS:
            raise CheckpointError(f'{path} was saved for config {saved_name!r}, which is not a named config: '
                                  'pass the YolactConfig it was trained with')
        cfg = CONFIGS[saved_name]
    else:
        cfg = get_config(config) if isinstance(config, str) else config
        if cfg.name != saved_name:
            raise CheckpointError(f'{path} was saved for config {saved_name!r}, not {cfg.name!r}: load it with '
                                  f'config {saved_name!r} (or no config)')
    return obj['model'], cfg.with_classes(names, ids)


def _official_config(path: Path, config) -> YolactConfig:
    if isinstance(config, YolactConfig):
        return config
    if isinstance(config, str):
        return get_config(config)
    try:
        return config_from_filename(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _clean_state_dict(state, path: Path, cfg: YolactConfig) -> dict[str, Tensor]:
    """Validated copy: 'module.' prefixes (DDP) stripped, and the keys the original's load_weights
    drops for backward compatibility dropped (backbone.layer* that are not backbone.layers*, and
    fpn.downsample_layers beyond the config's count)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f'{path} is not a state dict (a mapping of names to tensors) nor a {FORMAT} '
                              'checkpoint: give a YOLACT .pth file')
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix('module.')
        if key.startswith('backbone.layer') and not key.startswith('backbone.layers'):
            continue
        if key.startswith('fpn.downsample_layers.') and int(key.split('.')[2]) >= cfg.fpn_num_downsample:
            continue
        cleaned[key] = value
    return cleaned


def _check_keys(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path, cfg: YolactConfig) -> None:
    for key, value in expected.items():
        # Checkpoints from before PyTorch 0.4.1 have no BatchNorm counters; they do not affect inference.
        if key.endswith('.num_batches_tracked') and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f'{k} {list(state[k].shape)} (model {list(expected[k].shape)})'
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    for label, keys in (('shape mismatches', mismatched), ('missing keys', missing), ('unexpected keys', unexpected)):
        if keys:
            more = f' and {len(keys) - _SHOWN_KEYS} more' if len(keys) > _SHOWN_KEYS else ''
            problems.append(f'{label}: {", ".join(keys[:_SHOWN_KEYS])}{more}')
    raise CheckpointError(
        f'{path.name} does not fit config {cfg.name} ({cfg.num_classes - 1} classes): {"; ".join(problems)}. '
        f'It was saved for another architecture or class count: pass the config it was trained with '
        f'(one of {", ".join(CONFIGS)}).')
