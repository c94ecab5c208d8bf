"""Reading and writing YOLACT checkpoints.

Two kinds load:
- a raw state dict in the official key layout: the official YOLACT and YOLACT++ releases
  (yolact_base_54_800000.pth, yolact_plus_resnet50_54_800000.pth, ...) and what anyone trained with dbolya/yolact on their own data
  (yolact_resnet50_pascal_12_3000.pth). The base config comes from the file name's longest known
  prefix (yolact_torch.config.config_from_filename) unless given, or else from the architecture the
  weights have; the class count always comes from the weights (yolact_torch.weights_layout), which
  are checked against the base config;
- the toolkit's own: a dict {'format': FORMAT, 'config': name, 'class_names': [...],
  'category_ids': [...], 'model': state dict in the official key layout, 'config_fields': every
  field of the YolactConfig it was trained with (files written before it was added have none and
  take the named config), and optionally 'iteration', 'optimizer', 'scheduler', 'epoch', ...}.
  Its class names override the config's, so a model fine-tuned on another class set loads with
  its base config, and a config changed by --input-size or --config-file travels with it.
Every file is read with torch.load(weights_only=True): a checkpoint never runs code. Any file that
is not a loadable YOLACT checkpoint raises one CheckpointError that says why and what to do.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import torch
from torch import Tensor

from yolact_torch.config import CONFIGS, BackboneConfig, ConfigError, YolactConfig, config_from_filename, get_config, trained_config_name
from yolact_torch.user_options import configure
from yolact_torch.weights_layout import LayoutError, configs_fitting, differences, layout_of_config, read_layout
from yolact_torch.yolact import Yolact
from runtime.errors import ToolkitError
from runtime.files import write_atomic

FORMAT = 'yolact-deploy/1'
_OWN_FIELDS = ('format', 'config', 'class_names', 'category_ids', 'model')
CONFIG_FIELDS = 'config_fields'
_SHOWN_KEYS = 5  # how many differing keys an error message lists


class CheckpointError(ToolkitError, ValueError):
    """A file that is not a checkpoint, or one that does not fit the requested config."""


def save_checkpoint(path, model: torch.nn.Module, cfg: YolactConfig, **extra) -> Path:
    """Write `model`'s weights with `cfg`'s name and classes in the toolkit's format; returns the path.

    extra: more entries (iteration, optimizer / scheduler state dicts, epoch, ...); they must be
    made of tensors, numbers, strings and containers of them, as weights_only loading allows.
    Written to a temporary file in the same folder, then renamed: never a half-written checkpoint;
    OutputError (runtime.files) when it cannot be written.
    """
    clash = sorted(set(extra) & {*_OWN_FIELDS, CONFIG_FIELDS})
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
        'category_ids': [int(c) for c in cfg.category_ids], 'model': model.state_dict(),
        CONFIG_FIELDS: dataclasses.asdict(cfg), **extra}
    # Serialised in memory first: torch.save reports a failed file write (a full disk) as an
    # unexplained RuntimeError from its zip writer, and write_atomic as an OutputError naming the path.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return write_atomic(path, buffer.getbuffer())


def read_checkpoint(path, map_location='cpu') -> dict:
    """The file's top-level dict (a raw state dict or the toolkit's checkpoint dict), loaded with
    weights_only=True; CheckpointError if it is missing, unreadable or not a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds (pickle, zip, EOF, weights_only)
        raise CheckpointError(_load_failure(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a checkpoint (expected a state dict '
                              'or a checkpoint dict)')
    return obj


# torch.load's refusal under weights_only of a pickle that names a function or class outside the
# allowed set: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked" or
# "Unsupported global: GLOBAL __main__.Payload was not an allowed global by default".
_BLOCKED_GLOBAL = re.compile(r'GLOBAL ([\w.]+)')
_UNPICKLER_DETAIL = 'WeightsUnpickler error:'


def _load_failure(path: Path, error: Exception) -> str:
    """One line saying why torch.load failed. torch's own weights_only message advises loading
    with weights_only=False, which would run whatever the file holds: it is not passed on."""
    text = str(error)
    blocked = _BLOCKED_GLOBAL.search(text)
    if blocked:
        return (f'{path} was blocked: loading it would call or build {blocked.group(1)}, which a checkpoint of '
                'weights never needs. The file may be unsafe (made to run code when loaded): do not load it by '
                'other means; get the checkpoint from a trusted source')
    if _UNPICKLER_DETAIL in text:
        detail = next((line.strip() for line in text.split(_UNPICKLER_DETAIL, 1)[1].splitlines() if line.strip()), '')
    else:
        detail = (text.strip().splitlines() or [type(error).__name__])[0][:200]
    return (f'{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {detail}); give a YOLACT .pth '
            'file (an official release or one saved by this toolkit)')


def load_model(path, config: str | YolactConfig | None = None, map_location='cpu', *,
               class_names=None, input_size: int | None = None,
               config_file=None) -> tuple[Yolact, YolactConfig]:
    """Build the model a checkpoint describes and load its weights; returns (model in eval mode, config).

    config: a config name or YolactConfig; None takes it from the checkpoint (toolkit format), the
    file name or the weights (raw state dicts). class_names, input_size, config_file: the
    --class-names, --input-size and --config-file flags (runtime.checkpoint_flags), applied by
    yolact_torch.user_options.configure.
    """
    path = Path(path)
    obj = read_checkpoint(path, map_location)
    flags = {'class_names': class_names, 'input_size': input_size, 'config_file': config_file}
    if 'format' in obj:
        state, saved = _own_format(obj, path, config)
        cfg = configure(saved, weights_classes=len(saved.class_names), default_names=saved.class_names,
                        default_ids=saved.category_ids, **flags)
        state = _clean_state_dict(state, path, cfg.fpn_num_downsample)
    else:
        base = _base_config(path, config)
        state = _clean_state_dict(obj, path, base.fpn_num_downsample if base is not None else None)
        cfg = _official_config(state, path, base, config is not None, flags)
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
                              'yolact_torch.checkpoint.save_checkpoint')
    names, ids = obj['class_names'], obj['category_ids']
    if (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
            or not isinstance(ids, (list, tuple)) or len(ids) != len(names)):
        raise CheckpointError(f'{path}: class_names must be a list of strings with one category id each')
    saved_name = obj['config']
    if config is None and CONFIG_FIELDS in obj:
        cfg = _config_from_fields(obj[CONFIG_FIELDS], path)
    elif config is None:
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


def _base_config(path: Path, config) -> YolactConfig | None:
    """The config given, else the one the file name's longest known prefix names, else None."""
    if isinstance(config, YolactConfig):
        return config
    if isinstance(config, str):
        return get_config(config)
    try:
        return config_from_filename(path)
    except ConfigError:
        return None


def _config_from_fields(fields, path: Path) -> YolactConfig:
    """The YolactConfig save_checkpoint stored with dataclasses.asdict (nested tuples as saved)."""
    try:
        return YolactConfig(**{**fields, 'backbone': BackboneConfig(**fields['backbone'])})
    except (TypeError, KeyError) as e:
        raise CheckpointError(f'{path}: its {CONFIG_FIELDS} do not describe a config of this toolkit version ({e}); '
                              f'load it with --config NAME') from None


def _official_config(state: dict[str, Tensor], path: Path, base: YolactConfig | None, named: bool,
                     flags: dict) -> YolactConfig:
    """The config of a raw state dict: `base` (see _base_config; None: the first known config
    whose architecture the weights have) with the weights' class count and the user's flags,
    checked against what the weights say. named: the user gave the config."""
    try:
        layout = read_layout(state)
    except LayoutError as e:
        raise CheckpointError(f'{path.name} is not a YOLACT state dict: {e}') from None
    fitting = configs_fitting(layout)
    if base is None and not fitting:
        raise CheckpointError(f'{path.name} fits no known config ({", ".join(CONFIGS)}): its weights have '
                              f'{layout.describe()}. If it is a YOLACT, pass --config NAME and --config-file FILE '
                              'with the config it was trained with')
    base = base or CONFIGS[fitting[0]]
    trained = trained_config_name(path)
    # The base config's class names are the model's only when the file is that config's own
    # (an official release) or the user named the config; a copy trained on other data is not.
    vouched = named or trained == base.name
    cfg = configure(base, weights_classes=layout.num_classes - 1, name=trained,
                    default_names=base.class_names if vouched else None, default_ids=base.category_ids, **flags)
    contradictions = differences(layout, layout_of_config(cfg))
    if contradictions:
        fix = (f'they fit {", ".join(fitting)}: pass --config {fitting[0]}' if fitting else
               f'they fit no known config ({", ".join(CONFIGS)})')
        raise CheckpointError(f'{path.name} does not fit config {base.name}: {"; ".join(contradictions)}. Its weights '
                              f'have {layout.describe()}; {fix}')
    return cfg


def _clean_state_dict(state, path: Path, num_downsample: int | None) -> dict[str, Tensor]:
    """Validated copy: 'module.' prefixes (DDP) stripped, and the keys the original's load_weights
    drops for backward compatibility dropped (backbone.layer* that are not backbone.layers*, and
    fpn.downsample_layers beyond the config's count, num_downsample; None keeps them all)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f'{path} is not a state dict (a mapping of names to tensors) nor a {FORMAT} '
                              'checkpoint: give a YOLACT .pth file')
    cleaned = {}
    for key, value in state.items():
        key = key.removeprefix('module.')
        if key.startswith('backbone.layer') and not key.startswith('backbone.layers'):
            continue
        if (num_downsample is not None and key.startswith('fpn.downsample_layers.')
                and int(key.split('.')[2]) >= num_downsample):
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
