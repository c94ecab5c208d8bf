"""ONNX -> serialized TensorRT engine, with its JSON sidecar.

    python -m engines.build --model build/yolact_tiny_shapes.fp16.onnx [--output FILE.engine]
                            [--max-batch 8] [--min-image 32x32] [--opt-image 1080x1920]
                            [--max-image 3840x3840] [--force]
    make engine [PRECISION=fp32|fp16|int8] [MODEL=build/yolact_tiny_shapes.onnx] [MAX_BATCH=8]
                [MIN_IMAGE=32x32] [OPT_IMAGE=1080x1920] [MAX_IMAGE=3840x3840]

Precision is the graph's (calib/ makes the fp16 and int8 graphs; the network is strongly typed), so
the builder takes no precision flag beyond a check that the model is the one asked for. The engine
has one optimisation profile over the batch (1..max batch, tuned for max batch) and the image's
height and width (the graph resizes each image to the model size; by default 32x32 up to 3840x3840,
4K frames in either orientation, tuned for 1080x1920 camera frames). With
`tensorrt` on a GPU host, kernel timings persist in a timing cache; TensorRT-RTX builds on the CPU
without one (a cache would make it query a GPU). The yolact plugins are registered when present;
otherwise TensorRT builds the ONNX function bodies of yolact::FastNMS and yolact::MaskAssembly as
standard layers, and the log says which happened.

Outputs are written atomically, the engine and `FILE.engine.json` (engines/sidecar.py) as a pair: both in full
to temporary names, then renamed, so a failed write keeps the old pair usable. An engine whose
sidecar shows the same ONNX bytes, TensorRT, targets, batch, image range and plugins is reused
unless `--force`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from engines.errors import EngineBuildError
from engines.onnx_source import OnnxSource, load_onnx
from engines.sidecar import sidecar_bytes
from engines.trt import choose_compute_capabilities, make_progress_monitor, rtx_compute_capabilities
from plugins import register_tensorrt_plugins
from runtime import artifacts
from runtime.cuda.device import cuda_device
from runtime.errors import ToolkitError
from runtime.files import atomic_output, check_writable, file_sha256, write_atomic
from runtime.metadata import PRECISIONS
from runtime.tensorrt.loader import TensorRT, load_tensorrt, make_logger
from runtime.tensorrt.sidecar import EngineInfo, EngineSidecar, SidecarError, plugin_key, read_sidecar, sidecar_path

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
# The image (height, width) range of the optimisation profile: 32 px (below it the runtime
# enlarges on the host) up to 4K frames in either orientation; tuned for 1080p camera frames.
DEFAULT_MIN_IMAGE = (32, 32)
DEFAULT_OPT_IMAGE = (1080, 1920)
DEFAULT_MAX_IMAGE = (3840, 3840)
TIMING_CACHE_NAME = 'tensorrt.timing.cache'


def register_plugins(trt: TensorRT) -> tuple[bool, str]:
    """Register the yolact TensorRT plugins (plugins.register_tensorrt_plugins). Returns
    (registered, why not)."""
    if trt.is_rtx:
        # Registering would fill the registry of `tensorrt`, which a TensorRT-RTX build never reads.
        return False, 'the yolact plugins are TensorRT Python plugins (tensorrt.plugin), which TensorRT-RTX lacks'
    return register_tensorrt_plugins()


def plugins_in_network(trt: TensorRT, network) -> tuple[str, ...]:
    """Sorted plugin keys (runtime.tensorrt.sidecar.plugin_key) of the network's plugin layers."""
    module = trt.module
    keys = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        # get_layer returns the ILayer base; the plugin accessors live on the subclass.
        if layer.type == module.LayerType.PLUGIN_V3:
            layer.__class__ = module.IPluginV3Layer
            core = layer.plugin.get_capability_interface(module.PluginCapabilityType.CORE)
            keys.add(plugin_key(core.plugin_name, core.plugin_namespace, core.plugin_version))
        elif layer.type == module.LayerType.PLUGIN_V2:
            layer.__class__ = module.IPluginV2Layer
            plugin = layer.plugin
            keys.add(plugin_key(plugin.plugin_type, plugin.plugin_namespace, plugin.plugin_version))
    return tuple(sorted(keys))


def _parse(trt: TensorRT, builder, logger, source: OnnxSource):
    """Parse the ONNX into a network. The yolact nodes carry a plugin_namespace attribute, so
    TensorRT's parser takes a registered plugin of that name over the node's function body, and
    the function body otherwise."""
    module = trt.module
    # Precision comes from the ONNX types. TensorRT-RTX (and TensorRT 11) networks are always
    # strongly typed and may lack the flag; TensorRT 10 needs it, or it would choose precisions itself.
    strongly_typed = getattr(module.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)
    flags = 0 if trt.is_rtx or strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = module.OnnxParser(network, logger)
    if not parser.parse(source.data, str(source.path)):
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            where = f'node {error.node_name()!r} ({error.node_operator()})' if error.node() >= 0 else 'model'
            errors.append(f'{where}: {error.desc()}')
        raise EngineBuildError(f'{trt.display_name} cannot parse {source.path}: ' + '; '.join(errors)
                               + '. Custom ops need their ONNX function body (export with `make export`) '
                               'or a registered plugin.')
    return network, parser


def _describe_network(network, verbose: bool) -> None:
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        log.info('input  %-10s %s %s', tensor.name, tensor.dtype.name, tuple(tensor.shape))
    for index in range(network.num_outputs):
        tensor = network.get_output(index)
        log.info('output %-10s %s %s', tensor.name, tensor.dtype.name, tuple(tensor.shape))
    if verbose:
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            outputs = ', '.join(f'{layer.get_output(i).dtype.name}{tuple(layer.get_output(i).shape)}'
                                for i in range(layer.num_outputs))
            log.debug('layer %4d %-16s %s -> %s', index, layer.type.name, layer.name, outputs)


def _load_timing_cache(config, path: Path):
    """Attach the timing cache at `path` (a new one when it is absent, unreadable, or from another
    GPU or TensorRT) to `config`; returns it, for saving after the build."""
    blob = path.read_bytes() if path.is_file() else b''
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        log.info('timing cache: %s (loaded)', path)
        return cache
    if blob:
        log.warning('timing cache %s is unreadable or from another GPU or TensorRT: starting a new one', path)
    else:
        log.info('timing cache: %s (new)', path)
    cache = config.create_timing_cache(b'')
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


# Sidecar fields that describe how an engine was made (not when, nor its own bytes).
_BUILD_SETTINGS = ('tensorrt_flavour', 'tensorrt_version', 'build_gpu', 'compute_capabilities', 'max_batch',
                   'plugins', 'min_image', 'opt_image', 'max_image', 'onnx_sha256')


def _reusable(engine_path: Path, wanted: EngineInfo, precision: str) -> EngineSidecar | None:
    """The existing engine's sidecar when that engine was built from the same ONNX bytes and
    precision with the same TensorRT, targets, batch and plugins, and is intact; else None (with
    the reason logged)."""
    if not engine_path.is_file():
        return None
    try:
        existing = read_sidecar(engine_path)
    except SidecarError as e:
        log.info('rebuilding: %s', e)
        return None
    changed = [name for name in _BUILD_SETTINGS if getattr(existing.engine, name) != getattr(wanted, name)]
    if existing.metadata.precision != precision:
        changed.append('precision')
    if changed:
        log.info('rebuilding: %s was built with another %s', engine_path, ', '.join(changed))
        return None
    if file_sha256(engine_path) != existing.engine.engine_sha256:
        log.info('rebuilding: %s is not the engine its sidecar describes', engine_path)
        return None
    return existing


def _targets(trt: TensorRT, compute_capability: str | None) -> tuple[str | None, tuple[str, ...]]:
    """(build GPU name or None, target compute capabilities) of this build."""
    gpu = cuda_device()
    if trt.is_rtx:
        return None, choose_compute_capabilities(trt, compute_capability, gpu)
    if compute_capability is not None:
        raise EngineBuildError('--compute-capability chooses TensorRT-RTX targets; TensorRT builds for the GPU '
                               'of this host')
    if gpu is None:
        raise EngineBuildError('TensorRT builds need a CUDA GPU and none is usable here; build without one with '
                               "TensorRT-RTX: pip install -e '.[tensorrt-rtx]' and --flavour tensorrt-rtx")
    return gpu[0], (gpu[1],)


def check_image_range(min_image: tuple[int, int], opt_image: tuple[int, int], max_image: tuple[int, int]) -> None:
    """EngineBuildError unless each (height, width) is positive and min <= opt <= max on both axes."""
    for flag, size in (('--min-image', min_image), ('--opt-image', opt_image), ('--max-image', max_image)):
        if len(size) != 2 or min(size) < 1:
            raise EngineBuildError(f'{flag} {size}: give a height and a width of at least 1, e.g. 1080x1920')
    for axis, name in ((0, 'height'), (1, 'width')):
        if not min_image[axis] <= opt_image[axis] <= max_image[axis]:
            raise EngineBuildError(f'image {name}s must satisfy --min-image <= --opt-image <= --max-image; got '
                                   f'{min_image[axis]}, {opt_image[axis]}, {max_image[axis]}')


def _make_config(trt: TensorRT, builder, source: OnnxSource, max_batch: int, images: dict[str, tuple[int, int]],
                 targets: tuple[str, ...], verbose: bool):
    """The builder config: one profile over the batch (min 1, opt = max = max_batch; a fixed batch
    is its own range) and the image size (images: min_image, opt_image, max_image as (H, W)), the
    layer detail kept in the engine, a progress bar, and for TensorRT-RTX its targets. Returns
    (config, progress monitor): the monitor must outlive the build."""
    module = trt.module
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    min_batch = source.input_batch or 1
    profile.set_shape(source.input_name, (min_batch, *images['min_image'], 3), (max_batch, *images['opt_image'], 3),
                      (max_batch, *images['max_image'], 3))
    config.add_optimization_profile(profile)
    config.profiling_verbosity = (module.ProfilingVerbosity.DETAILED if verbose
                                  else module.ProfilingVerbosity.LAYER_NAMES_ONLY)
    progress = make_progress_monitor(trt)
    config.progress_monitor = progress
    if trt.is_rtx:
        table = rtx_compute_capabilities(trt)
        config.num_compute_capabilities = len(targets)
        for index, cc in enumerate(targets):
            config.set_compute_capability(table[cc], index)
    return config, progress


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None = None, *,
                 max_batch: int = DEFAULT_MAX_BATCH, min_image: tuple[int, int] = DEFAULT_MIN_IMAGE,
                 opt_image: tuple[int, int] = DEFAULT_OPT_IMAGE, max_image: tuple[int, int] = DEFAULT_MAX_IMAGE,
                 precision: str | None = None, force: bool = False,
                 flavour: str = 'auto', compute_capability: str | None = None,
                 timing_cache: str | os.PathLike | None = None, use_timing_cache: bool = True,
                 verbose: bool = False) -> tuple[Path, EngineSidecar]:
    """Build (or reuse) the engine for `onnx_path`; returns (engine path, its sidecar).

    min_image / opt_image / max_image: the profile's image (height, width) range; the runtime
    refuses larger images and enlarges smaller ones on the host.
    precision: when given, the model's precision must be this one (a guard for `make engine
    PRECISION=...`). flavour: 'auto' | 'tensorrt' | 'tensorrt-rtx'. compute_capability: TensorRT-RTX
    targets ('8.6,12.0', 'current'; default: all but Turing). timing_cache: file for TensorRT on a GPU
    (default `tensorrt.timing.cache` beside the engine). verbose: TensorRT's detailed build log, the
    layer list, and detailed layer information kept in the engine.
    EngineBuildError (TensorRTUnavailable when no TensorRT is installed) for every bad input."""
    if precision is not None and precision not in PRECISIONS:
        raise EngineBuildError(f'unknown precision {precision!r}: use one of {", ".join(PRECISIONS)}')
    if max_batch < 1:
        raise EngineBuildError(f'--max-batch must be at least 1, got {max_batch}')
    images = dict(min_image=tuple(min_image), opt_image=tuple(opt_image), max_image=tuple(max_image))
    check_image_range(**images)
    source = load_onnx(onnx_path)
    if precision is not None and source.metadata.precision != precision:
        raise EngineBuildError(f'{source.path} is a {source.metadata.precision} model, not {precision}: pass the '
                               f'{precision} model (made by `make calib`) or PRECISION={source.metadata.precision}')
    if source.input_batch is not None and source.input_batch != max_batch:
        raise EngineBuildError(f'{source.path} has a fixed batch of {source.input_batch}: pass --max-batch '
                               f'{source.input_batch}, or export with a dynamic batch dimension')
    engine_path = Path(engine_path) if engine_path is not None else artifacts.engine_path(source.path)
    # Before the build, which takes minutes: an engine that cannot be written is refused now.
    check_writable(engine_path, 'engine')
    check_writable(sidecar_path(engine_path), 'engine sidecar')
    trt = load_tensorrt(flavour)
    build_gpu, targets = _targets(trt, compute_capability)
    plugins_registered, reason = register_plugins(trt)
    logger = make_logger(trt, verbose)
    builder = trt.module.Builder(logger)
    # The parser owns the weights the network points to: it stays referenced until the build.
    network, _parser = _parse(trt, builder, logger, source)
    plugins = plugins_in_network(trt, network)
    plugin_ops = {key.split('::', 1)[1].split('/')[0] for key in plugins}
    bodies = [op for op in source.function_ops if op.split('::', 1)[1] not in plugin_ops]
    if plugins:
        log.info('plugins: %s', ', '.join(plugins))
    if bodies:
        why = 'plugins registered, but not for these ops' if plugins_registered else f'no plugins ({reason})'
        log.info('%s: %s built from their ONNX function bodies as standard layers', why, ', '.join(bodies))
    _describe_network(network, verbose)

    wanted = EngineInfo(tensorrt_flavour=trt.flavour, tensorrt_version=trt.version, build_gpu=build_gpu,
                        compute_capabilities=targets, max_batch=max_batch, plugins=plugins,
                        outputs=tuple(network.get_output(i).name for i in range(network.num_outputs)), **images,
                        onnx_file=str(source.path), onnx_sha256=source.sha256, engine_sha256='', built_at='')
    if not force:
        existing = _reusable(engine_path, wanted, source.metadata.precision)
        if existing is not None:
            log.info('reusing %s (same ONNX, %s, %s; --force rebuilds)', engine_path, source.metadata.precision,
                     trt.display_name)
            return engine_path, existing

    config, progress = _make_config(trt, builder, source, max_batch, images, targets, verbose)
    cache = None
    if trt.is_rtx:
        if timing_cache is not None:
            log.warning('--timing-cache ignored: TensorRT-RTX builds on the CPU, where a timing cache would make it '
                        'query a GPU')
        log.info('building on the CPU with %s for compute capability %s', trt.display_name, ', '.join(targets))
    else:
        if use_timing_cache:
            cache_path = Path(timing_cache) if timing_cache is not None else engine_path.parent / TIMING_CACHE_NAME
            cache = _load_timing_cache(config, cache_path)
        log.info('building with %s on %s (compute capability %s)', trt.display_name, build_gpu, targets[0])

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f'{trt.display_name} could not build an engine from {source.path}; rerun with '
                               '--verbose for the builder\'s log')
    engine_bytes = bytes(memoryview(serialized))
    if cache is not None:
        write_atomic(cache_path, bytes(memoryview(cache.serialize())))

    info = dataclasses.replace(wanted, engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
                               built_at=datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    sidecar = EngineSidecar(source.metadata, info)
    write_engine_pair(engine_path, engine_bytes, sidecar)
    return engine_path, sidecar


def _image_size(text: str) -> tuple[int, int]:
    """'1080x1920' -> (1080, 1920): an image height and width, for argparse."""
    height, sep, width = text.lower().partition('x')
    if not sep or not height.strip().isdigit() or not width.strip().isdigit():
        raise argparse.ArgumentTypeError(f'{text!r} is not HEIGHTxWIDTH, e.g. 1080x1920')
    return int(height), int(width)


def write_engine_pair(engine_path: Path, engine_bytes: bytes, sidecar: EngineSidecar) -> None:
    """Install the engine and its sidecar together: both are written in full to temporary names
    first, and only then renamed over the old pair. A write that fails (a full disk) leaves the old
    engine and its sidecar as they were, still usable; renames within a folder do not fail for
    want of space. OutputError for a path that cannot be written."""
    with atomic_output(engine_path) as engine_tmp:
        engine_tmp.write_bytes(engine_bytes)
        # Nested after the engine's write, so that a failure names the file that failed.
        with atomic_output(sidecar_path(engine_path)) as sidecar_tmp:
            sidecar_tmp.write_bytes(sidecar_bytes(sidecar))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m engines.build',
        description='Build a TensorRT engine (and its FILE.engine.json sidecar) from a YOLACT ONNX model. '
                    'Precision comes from the ONNX (make calib makes the fp16/int8 models).')
    parser.add_argument('--model', required=True, help='the ONNX model (from make export / make calib)')
    parser.add_argument('--output', help='engine file to write (default: the model path with .engine)')
    parser.add_argument('--max-batch', type=int, default=DEFAULT_MAX_BATCH,
                        help='largest batch the engine accepts; its profile covers 1..N (default %(default)s)')
    for flag, default, role in (('--min-image', DEFAULT_MIN_IMAGE, 'smallest image (smaller ones are enlarged '
                                                                   'on the host)'),
                                ('--opt-image', DEFAULT_OPT_IMAGE, 'image size TensorRT tunes for'),
                                ('--max-image', DEFAULT_MAX_IMAGE, 'largest image the engine accepts')):
        parser.add_argument(flag, type=_image_size, default=default, metavar='HxW',
                            help=f'{role} (default {default[0]}x{default[1]})')
    parser.add_argument('--precision', choices=PRECISIONS,
                        help='check that the model has this precision (make engine passes PRECISION)')
    parser.add_argument('--force', action='store_true',
                        help='rebuild even if an engine for the same ONNX, precision and TensorRT exists')
    parser.add_argument('--flavour', default='auto', choices=('auto', 'tensorrt', 'tensorrt-rtx'),
                        help='TensorRT on a GPU host or TensorRT-RTX (CPU build); auto: TensorRT when installed')
    parser.add_argument('--compute-capability', metavar='LIST',
                        help="TensorRT-RTX targets, e.g. '8.6,12.0' or 'current' (default: 8.0 and newer, "
                             'not 9.0; 7.5 only on request)')
    parser.add_argument('--timing-cache', metavar='FILE',
                        help=f'TensorRT timing cache (default: {TIMING_CACHE_NAME} beside the engine); '
                             'not used by TensorRT-RTX')
    parser.add_argument('--no-timing-cache', action='store_true', help='build without a timing cache')
    parser.add_argument('--verbose', action='store_true',
                        help="detailed build log: TensorRT's verbose messages and every layer")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format='%(message)s')
    try:
        engine_path, sidecar = build_engine(
            args.model, args.output, max_batch=args.max_batch, min_image=args.min_image, opt_image=args.opt_image,
            max_image=args.max_image, precision=args.precision, force=args.force,
            flavour=args.flavour, compute_capability=args.compute_capability, timing_cache=args.timing_cache,
            use_timing_cache=not args.no_timing_cache, verbose=args.verbose)
    except ToolkitError as e:  # EngineBuildError, SidecarError, MetadataError: each names the fix
        print(f'error: {e}', file=sys.stderr)
        return 1
    info = sidecar.engine
    print(f'{engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) and {sidecar_path(engine_path).name}: '
          f'{sidecar.metadata.precision}, {info.tensorrt_flavour} {info.tensorrt_version}, '
          f'compute capability {", ".join(info.compute_capabilities)}, batch 1..{info.max_batch}, images '
          f'{info.min_image[0]}x{info.min_image[1]} to {info.max_image[0]}x{info.max_image[1]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
