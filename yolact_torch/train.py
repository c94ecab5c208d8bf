"""Train YOLACT as the original does: SGD with momentum and weight decay, linear warm-up, step
decay; the four losses of yolact_torch.losses; one or more processes (torchrun -> DistributedDataParallel,
gloo on CPU, nccl on GPU).

    python -m yolact_torch.train --config yolact_tiny --data shapes/train.json --iters 3000
    torchrun --nproc_per_node 2 -m yolact_torch.train --config yolact_tiny --data shapes/ --iters 3000

The class set is the data's (names and category ids, any ids, kept in every checkpoint;
--class-names renames them): a config's architecture is used with the data's categories
(`--init` from a checkpoint with another class count re-initialises the class-dependent layers
and lists them; `--init-plain` starts a YOLACT++ config from a YOLACT checkpoint of its
backbone). Checkpoints are written atomically every --save-every iterations with the
optimizer state; `--resume` continues exactly (same batches, same augmentation, same schedule).
The final weights are written without optimizer state (<out>/<config>_final.pth).
--input-size and --config-file change the config trained (max_size, prior layout, thresholds); the
checkpoints carry the whole config, so later stages need no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from yolact_torch.checkpoint import CONFIG_FIELDS, load_model, read_checkpoint, save_checkpoint
from yolact_torch.config import YolactConfig, get_config
from yolact_torch.deform_conv import DCN
from yolact_torch.user_options import configure
from yolact_torch.data.augment import TrainAugmentation
from yolact_torch.data.coco import CocoDataset
from yolact_torch.data.training import IterationBatches, TrainingStream, collate
from yolact_torch.losses import LossTerms, yolact_loss
from yolact_torch.preprocess import Normalize
from yolact_torch.weights_layout import differences, layout_of_config
from yolact_torch.yolact import Yolact
from runtime.checkpoint_flags import add_checkpoint_flags, checkpoint_flags
from runtime.errors import ToolkitError
from runtime.files import check_writable
from runtime.host_memory import available_memory, check_fits, largest_fitting

LOSS_NAMES = ('box', 'conf', 'mask', 'semantic', 'maskiou')
# Config fields the flags set that a resumed run must keep (the schedule's may be extended).
RESUMED_CONFIG_FIELDS = ('name', 'backbone', 'max_size', 'mask_dim', 'conf_thresh', 'nms_thresh', 'nms_top_k',
                         'max_num_detections')


class TrainingError(ToolkitError, ValueError):
    """A training run that cannot start; the message names the fix."""


def learning_rate(iteration: int, cfg: YolactConfig) -> float:
    """The original's schedule: linear warm-up from cfg.lr_warmup_init to cfg.lr over
    cfg.lr_warmup_until iterations, then cfg.lr * gamma ** (number of cfg.lr_steps passed)."""
    if cfg.lr_warmup_until > 0 and iteration <= cfg.lr_warmup_until:
        return cfg.lr_warmup_init + (cfg.lr - cfg.lr_warmup_init) * iteration / cfg.lr_warmup_until
    return cfg.lr * cfg.gamma ** sum(iteration >= step for step in cfg.lr_steps)


def make_optimizer(model: torch.nn.Module, cfg: YolactConfig) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def step_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The generator of the loss's random choices at one step: a function of the step, for resume."""
    state = np.random.SeedSequence([seed, iteration, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def train_step(model: torch.nn.Module, normalize: Normalize, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, targets, cfg: YolactConfig, iteration: int, seed: int,
               rank: int = 0) -> LossTerms | None:
    """One SGD step at the schedule's learning rate. images: float32 [B, S, S, 3] BGR 0..255.
    Returns the detached loss terms, or None when the loss was not finite (the step is skipped,
    as the original does)."""
    for group in optimizer.param_groups:
        group['lr'] = learning_rate(iteration, cfg)
    x = normalize(images).contiguous(memory_format=torch.channels_last)
    out = model(x)
    net = getattr(model, 'module', model)
    losses = yolact_loss(out, net.priors, targets, cfg, step_generator(seed, iteration, rank), net.maskiou_net)
    total = losses.total
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(total):
        return None
    total.backward()
    optimizer.step()
    return LossTerms(*(t.detach() for t in losses))


def _take_over(model: Yolact, source_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy `source_state` into `model` wherever names and shapes agree; returns the names of the
    model's tensors left at their fresh initialisation."""
    target_state = model.state_dict()
    kept = {k: v for k, v in source_state.items() if k in target_state and v.shape == target_state[k].shape}
    model.load_state_dict(kept, strict=False)
    return sorted(k for k in target_state if k not in kept)


def initialise_from(model: Yolact, path: Path, base_config: str) -> list[str]:
    """Copy a checkpoint's weights into `model` wherever names and shapes agree (fine-tuning from
    an official or own checkpoint, possibly with another class count). Returns the names of the
    parameters left at their fresh initialisation."""
    source, _ = load_model(path, config=base_config)
    return _take_over(model, source.state_dict())


def initialise_from_plain(model: Yolact, path: Path) -> tuple[str, list[str], list[str]]:
    """Start a YOLACT++ `model` from a YOLACT checkpoint of the same architecture otherwise (loaded
    with its own config; another class count is allowed, as for --init).

    Each DCN takes the plain 3x3 conv's weight doubled (the keys agree: conv2.weight): with its
    offset/mask conv at zero, a DCN samples the plain conv's taps with mask sigmoid(0) = 0.5, so it
    starts equal to the conv it replaces (its bias is zero too). The DCNs' offset/mask convs and
    biases and the maskiou_net keep the fresh initialisation `model` has. Returns (the source's
    config name, the doubled weights' names, the names left fresh); TrainingError when the
    checkpoint is not such a YOLACT.
    """
    if not any(isinstance(module, DCN) for module in model.modules()):
        raise TrainingError(f'--init-plain: config {model.cfg.name} has no DCNs to start from a plain conv; use --init')
    source, source_cfg = load_model(path)
    found, expected = layout_of_config(source_cfg), layout_of_config(model.cfg)
    if found.deformable or found.maskiou:
        raise TrainingError(f'{path} is already a YOLACT++ ({source_cfg.name}): start from it with --init')
    other = differences(dataclasses.replace(found, deformable=expected.deformable, maskiou=expected.maskiou),
                        expected)
    if other:
        raise TrainingError(f'{path} ({source_cfg.name}) differs from {model.cfg.name} in more than the DCNs and '
                            f'maskiou_net: {"; ".join(other)}. Use a YOLACT checkpoint of {model.cfg.name}\'s '
                            'backbone, or --init')
    state = source.state_dict()
    doubled = [f'{name}.weight' for name, module in model.named_modules() if isinstance(module, DCN)]
    for key in doubled:
        state[key] = 2 * state[key]
    return source_cfg.name, doubled, _take_over(model, state)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m yolact_torch.train', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True, help='named config (architecture, input size, loss weights)')
    parser.add_argument('--data', required=True, type=Path,
                        help='COCO instances JSON, or a folder holding train.json (the shapes layout)')
    parser.add_argument('--images', type=Path, help='image folder (default: the JSON\'s folder)')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--iters', type=int, help='total iterations (default: the config\'s max_iter)')
    length.add_argument('--epochs', type=float, help='total passes over the data')
    parser.add_argument('--batch-size', type=int, default=8, help='images per iteration, over all processes (default: %(default)s)')
    parser.add_argument('--lr', type=float, help='base learning rate (default: the config\'s)')
    parser.add_argument('--lr-steps', type=str,
                        help='comma-separated iterations at which the lr is multiplied by gamma '
                             '(default: the config\'s); fractions < 1 are shares of the total')
    parser.add_argument('--warmup-iters', type=int, help='warm-up length (default: the config\'s)')
    parser.add_argument('--warmup-lr', type=float, help='learning rate at iteration 0 (default: the config\'s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of data order, augmentation and initialisation (default: %(default)s)')
    for stage in ('photometric', 'expand', 'crop', 'mirror'):
        parser.add_argument(f'--no-{stage}', dest=stage, action='store_false',
                            help=f'turn off the {stage} augmentation (on in the original)')
    parser.add_argument('--freeze-bn', choices=('auto', 'on', 'off'), default='auto',
                        help='keep batch norms fixed; auto: on with --init or --init-plain when each process has '
                             'fewer than 6 images (the original\'s rule), off when training from scratch '
                             '(default: auto)')
    start = parser.add_mutually_exclusive_group()
    start.add_argument('--init', type=Path, help='start from these weights (official or own checkpoint)')
    start.add_argument('--init-plain', type=Path,
                       help='YOLACT++ configs: start from a YOLACT checkpoint of the same backbone (e.g. '
                            'yolact_plus_tiny from yolact_tiny); each DCN starts equal to the plain 3x3 conv '
                            'it replaces, the offset convs and maskiou_net fresh')
    parser.add_argument('--resume', type=Path,
                        help='continue a run from one of its checkpoints with its settings; --iters/--epochs '
                             'and --lr-steps may extend it')
    parser.add_argument('--out', type=Path, default=Path('out/train'), help='checkpoint folder (default: %(default)s)')
    parser.add_argument('--save-every', type=int, default=500, help='checkpoint interval in iterations (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=1, help='data loading processes per training process (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads per process; 1 is faster on a CPU shared with other work (default: %(default)s)')
    add_checkpoint_flags(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """TrainingError for settings that cannot make a run, before anything is loaded: each would
    otherwise crash mid-run or save untrained weights as final."""
    problems = []
    for flag, value, least in (('--iters', args.iters, 1), ('--batch-size', args.batch_size, 1),
                               ('--save-every', args.save_every, 1), ('--threads', args.threads, 1),
                               ('--workers', args.workers, 0), ('--warmup-iters', args.warmup_iters, 0)):
        if value is not None and value < least:
            problems.append(f'{flag} must be at least {least}, got {value}')
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        problems.append(f'--epochs must be a positive number, got {args.epochs}')
    for flag, value in (('--lr', args.lr), ('--warmup-lr', args.warmup_lr)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(f'{flag} must be a finite number >= 0, got {value}')
    if problems:
        raise TrainingError('; '.join(problems))


def training_memory(cfg: YolactConfig, batch_size: int) -> tuple[int, int]:
    """(fixed bytes, bytes per image) of a training step of `cfg`'s network: the weights with their
    gradients and SGD momentum (fixed), and the activations autograd keeps for the backward pass
    (per image). Counted from the shapes on the meta device, where nothing is computed; the count
    is a lower bound (the loss and the backward pass's temporaries come on top)."""
    def saved_bytes(batch: int) -> tuple[int, int]:
        with torch.device('meta'):
            model = Yolact(cfg).train()
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.empty(batch, 3, *cfg.input_size, device='meta'))
        return total, sum(p.numel() * p.element_size() for p in model.parameters())

    one, weights = saved_bytes(1)
    per_image = saved_bytes(2)[0] - one
    return one - per_image + 3 * weights, per_image


def check_batch_fits(cfg: YolactConfig, local_batch: int, device: torch.device) -> None:
    """MemoryLimitError when `local_batch` images per step cannot fit in the device's free memory."""
    fixed, per_image = training_memory(cfg, local_batch)
    available = torch.cuda.mem_get_info(device)[0] if device.type == 'cuda' else available_memory()
    fitting = largest_fitting(fixed, per_image, available)
    check_fits(fixed + per_image * local_batch, f'--batch-size {local_batch} (per process) of {cfg.name}',
               f'pass --batch-size {fitting} or less' if fitting else 'this config cannot train here', available)


def _resolve_settings(args, cfg: YolactConfig, resumed: dict | None) -> dict:
    """The settings that define a run; a resumed run takes them from its checkpoint (only its
    length and learning-rate steps may change, see `run`)."""
    if resumed is not None:
        return dict(resumed['run'])
    return {
        'batch_size': args.batch_size, 'seed': args.seed,
        'lr': cfg.lr if args.lr is None else args.lr,
        'lr_steps': args.lr_steps, 'warmup_iters': cfg.lr_warmup_until if args.warmup_iters is None else args.warmup_iters,
        'warmup_lr': cfg.lr_warmup_init if args.warmup_lr is None else args.warmup_lr,
        'photometric': args.photometric, 'expand': args.expand, 'crop': args.crop, 'mirror': args.mirror,
        'freeze_bn': args.freeze_bn}


def _total_iters(args, cfg: YolactConfig, dataset_len: int, batch_size: int, resumed: dict | None) -> int:
    if args.iters is not None:
        return args.iters
    if args.epochs is not None:
        return math.ceil(args.epochs * dataset_len / batch_size)
    if resumed is not None:
        return int(resumed['run_iters'])
    if cfg.max_iter > 0:
        return cfg.max_iter
    raise TrainingError(f'config {cfg.name} sets no max_iter: pass --iters or --epochs')


def _lr_steps(spec: str | None, cfg: YolactConfig, total: int) -> tuple[int, ...]:
    if spec is None:
        return cfg.lr_steps
    try:
        values = [float(v) for v in spec.split(',') if v.strip()]
    except ValueError:
        raise TrainingError(f'--lr-steps {spec!r}: give comma-separated iterations or fractions') from None
    return tuple(int(v * total) if v < 1 else int(v) for v in values)


def run(args: argparse.Namespace) -> Path:
    check_args(args)
    # The checkpoint folder is checked before the data is read, and not created until training starts.
    check_writable(args.out / 'checkpoint.pth', '--out')
    torch.set_num_threads(args.threads)
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    distributed = world_size > 1
    if distributed:
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    device = torch.device(f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}' if torch.cuda.is_available() else 'cpu')
    is_main = rank == 0

    def say(message: str) -> None:
        if is_main:
            tqdm.write(message)

    base_cfg = get_config(args.config)
    resumed = read_checkpoint(args.resume) if args.resume else None
    if resumed is not None and ('run' not in resumed or 'optimizer' not in resumed):
        raise TrainingError(f'{args.resume} has no optimizer state or run settings: resume from a checkpoint '
                            'written during training (<out>/<config>_<iteration>.pth), or use --init')
    if resumed is not None and resumed.get('config') != base_cfg.name:
        raise TrainingError(f'{args.resume} was trained with config {resumed.get("config")!r}, not '
                            f'{base_cfg.name!r}: resume with --config {resumed.get("config")}')
    dataset = CocoDataset(args.data, args.images, require_annotations=True)
    if dataset.skipped:
        say(f'{dataset.json_path}: skipped {dataset.skipped_summary()}')
    cfg = configure(base_cfg, weights_classes=len(dataset.class_names), default_names=dataset.class_names,
                    default_ids=dataset.category_ids, **checkpoint_flags(args))
    cfg = cfg.with_classes(cfg.class_names, dataset.category_ids)  # renamed or not, the data's ids
    if cfg.class_names != base_cfg.class_names:
        say(f'config {base_cfg.name} has {len(base_cfg.class_names)} classes; training with the data\'s '
            f'{len(cfg.class_names)}: {", ".join(cfg.class_names)}')
    if resumed is not None and list(resumed['class_names']) != list(cfg.class_names):
        raise TrainingError(f'{args.resume} was trained on the classes {", ".join(resumed["class_names"])}, '
                            f'but {dataset.json_path} has {", ".join(cfg.class_names)}: resume with its data')
    if resumed is not None and CONFIG_FIELDS in resumed:
        now = dataclasses.asdict(cfg)
        changed = [k for k in RESUMED_CONFIG_FIELDS if resumed[CONFIG_FIELDS].get(k) != now[k]]
        if changed:
            raise TrainingError(f'{args.resume} was trained with another {", ".join(changed)}: resume with the '
                                '--config, --input-size and --config-file it was started with')

    settings = _resolve_settings(args, cfg, resumed)
    total = _total_iters(args, cfg, len(dataset), settings['batch_size'], resumed)
    # A resumed run keeps its steps unless new ones are given (to extend a run: --iters and
    # --lr-steps; it then equals a run started with those values, as long as no step passed).
    steps = settings['lr_steps'] if resumed is not None and args.lr_steps is None else _lr_steps(args.lr_steps, cfg, total)
    if resumed is not None and tuple(steps) != tuple(settings['lr_steps']):
        say(f'learning-rate steps changed from {list(settings["lr_steps"])} to {list(steps)}')
    settings['lr_steps'] = tuple(steps)
    cfg = dataclasses.replace(cfg, lr=settings['lr'], lr_steps=tuple(steps), max_iter=total,
                              lr_warmup_until=settings['warmup_iters'], lr_warmup_init=settings['warmup_lr'])

    check_batch_fits(cfg, settings['batch_size'] // world_size, device)
    torch.manual_seed(settings['seed'])
    model = Yolact(cfg)
    model.init_weights()
    if args.init and resumed is None:
        fresh = initialise_from(model, args.init, base_cfg.name)
        if fresh:
            say(f'--init {args.init}: re-initialised {len(fresh)} tensors that do not fit '
                f'{len(cfg.class_names)} classes: {", ".join(fresh)}')
    if args.init_plain and resumed is None:
        source_name, doubled, fresh = initialise_from_plain(model, args.init_plain)
        say(f'--init-plain {args.init_plain} ({source_name}): took over {len(model.state_dict()) - len(fresh)} '
            f'tensors, {len(doubled)} DCN weights as the plain conv2 weight doubled; fresh: {len(fresh)} '
            f'({", ".join(fresh)})')
    if resumed is not None:
        model.load_state_dict(resumed['model'])
    if settings['freeze_bn'] == 'auto':
        small_batches = settings['batch_size'] // world_size < 6
        initialised = args.init is not None or args.init_plain is not None
        settings['freeze_bn'] = 'on' if initialised and small_batches else 'off'
    freeze = settings['freeze_bn'] == 'on'
    model.freeze_bn(freeze)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, cfg)
    start = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed['optimizer'])
        start = int(resumed['iteration'])
        say(f'resuming {args.resume} at iteration {start} of {total}')
    if distributed:
        model = DistributedDataParallel(model)

    augmentation = TrainAugmentation(cfg, photometric=settings['photometric'], expand=settings['expand'],
                                     crop=settings['crop'], mirror=settings['mirror'])
    stream = TrainingStream(dataset, augmentation, settings['seed'])
    loader = DataLoader(stream, batch_sampler=IterationBatches(start, total, settings['batch_size'], rank, world_size),
                        collate_fn=collate, num_workers=args.workers,
                        persistent_workers=False, prefetch_factor=2 if args.workers else None)
    normalize = Normalize(cfg).to(device)
    args.out.mkdir(parents=True, exist_ok=True)

    def save(iteration: int, final: bool = False) -> Path:
        if final:
            return save_checkpoint(args.out / f'{cfg.name}_final.pth', model, cfg, iteration=iteration)
        return save_checkpoint(args.out / f'{cfg.name}_{iteration}.pth', model, cfg, iteration=iteration,
                               optimizer=optimizer.state_dict(), run=settings, run_iters=total)

    say(f'training {cfg.name} on {len(dataset)} images of {dataset.json_path}: iterations {start}..{total}, '
        f'batch {settings["batch_size"]} over {world_size} process(es), lr {cfg.lr} (steps {list(steps)}), '
        f'batch norm {"frozen" if freeze else "training"}')
    started = time.monotonic()
    progress = tqdm(total=total, initial=start, unit='it', desc=cfg.name, disable=not is_main, dynamic_ncols=True)
    iteration = start
    skipped = 0
    for images, targets in loader:
        images = images.to(device)
        targets = [type(t)(*(x.to(device) for x in t)) for t in targets]
        losses = train_step(model, normalize, optimizer, images, targets, cfg, iteration, settings['seed'], rank)
        iteration += 1
        if losses is None:
            skipped += 1
        else:
            shown = LOSS_NAMES if cfg.maskiou_net else LOSS_NAMES[:-1]
            progress.set_postfix({n: f'{v.item():.3f}' for n, v in zip(shown, losses)}
                                 | {'lr': f'{learning_rate(iteration - 1, cfg):.1e}'}, refresh=False)
        progress.update()
        if is_main and iteration % args.save_every == 0 and iteration < total:
            save(iteration)
    progress.close()
    final = None
    if is_main:
        save(iteration)
        final = save(iteration, final=True)
        say(f'done: {iteration - start} iterations in {time.monotonic() - started:.0f} s'
            f'{f", {skipped} skipped (loss not finite)" if skipped else ""}; weights: {final}')
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ToolkitError as e:  # DatasetError, CheckpointError, TrainingError, ConfigError
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
