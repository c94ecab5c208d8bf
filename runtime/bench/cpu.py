"""python -m runtime.bench (`make bench`): latency per stage for torch eager and onnxruntime.

It times artifacts, as trtexec does, and builds none: each model is given as its checkpoint
(--models [LABEL=]FILE.pth), and its other artifacts are found by the naming rule
(runtime.artifacts): the raw export build/NAME.raw.onnx, the post-processing alone
build/NAME.postprocess.onnx, the raw export's FP16/INT8/INT8-ort variants and the engines.
`make bench` builds them first with python -m export, export.bench_artifacts, calib and
engines.build; a missing one is a note naming what makes it.

Stages, per batch of B images of 640x480 (B = 1 and 4 by default):
- pre: resize to the model size and stack (runtime.pipeline, the same for every backend);
- network: the network alone (torch: Normalize + Yolact; ORT: the --no-postprocess export, whose
  graph includes normalisation, softmax and box decoding);
- post: Fast NMS + mask assembly (and for YOLACT++ the maskiou_net re-scoring and the sort by it)
  of a synthetic head with DETECTIONS detections per image (torch: yolact_torch.postprocess.detect
  through the torch backend; ORT: NAME.postprocess.onnx, the nodes the export appends after the
  network: the yolact::FastNMS / yolact::MaskAssembly function nodes, and YOLACT++'s after them);
- paste: the runtime's pasting of those masks into 640x480 images (runtime.pipeline.to_detections).
Each row gives p50/p90 per stage, images/s from the sum of the stage medians, and the network's
achieved GFLOP/s (2 x the convolutions' multiply-accumulates / network p50) next to this machine's
float32 matrix-multiply rate, measured just before and after that row's network samples.

Rows are data: each is a dict, the table shows the columns some row has. Other row sources (FP16 /
INT8 exports, TensorRT engines) append a callable to ROW_SOURCES: source(context: BenchContext)
-> (rows, notes). The torch rows need torch (the torch backend loads the checkpoint); the others
do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.artifacts import export_path, postprocess_only_path
from runtime.bench import precision as bench_precision
from runtime.bench import tensorrt as trt_bench
from runtime.contract import INPUT_NAME, RAW_OUTPUTS
from runtime.errors import ToolkitError
from runtime.pipeline import to_detections

STAGES = ('pre', 'network', 'post', 'paste')
IMAGE_HW = (480, 640)
DETECTIONS = 100  # per image, as the post-processing target is stated for
# numpy's BLAS threads keep spinning on the cores for ~0.1 s after a matrix product; a network timed
# in that window ran at half speed (the demo model's first 10 runs: 11-16 ms instead of 6.7).
BLAS_IDLE_S = 0.3
# Calls of a few milliseconds run slower for ~0.2 s after the cores were idle or busy with another
# stage (thread pools waking, caches refilling): the demo network's first five runs after a pause
# took 7-8 ms against 6.7 after. By default warm-up lasts at least this long, so p50 is the
# steady state.
WARMUP_S = 0.5


# --- measurements -------------------------------------------------------------------------------

def timed(fn: Callable[[], object], iterations: int, warmup: int, warmup_s: float = 0.0) -> np.ndarray:
    """Seconds per call of fn over `iterations` calls after the unmeasured warm-up: at least
    `warmup` calls, going on until they have taken `warmup_s` seconds (WARMUP_S says why)."""
    warm_until = time.perf_counter() + warmup_s
    done = 0
    while done < warmup or time.perf_counter() < warm_until:
        fn()
        done += 1
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return np.array(samples)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate: the best of `repeats` numpy products of two
    size x size matrices (BLAS on every core), in GFLOP/s (2 size^3 operations each)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), np.float32), rng.random((size, size), np.float32)
    best = timed(lambda: a @ b, repeats, warmup=1).min()
    return 2 * size ** 3 / best / 1e9


def timed_network(run: Callable[[], object], iterations: int, warmup: int,
                  warmup_s: float = 0.0) -> tuple[np.ndarray, float]:
    """The network's samples (seconds) and the matmul rate measured just before and after them
    (their mean): on a shared machine the rate moves, and the ratio wants both under the same load."""
    before = matmul_gflops()
    time.sleep(BLAS_IDLE_S)
    samples = timed(run, iterations, warmup, warmup_s)
    return samples, (before + matmul_gflops()) / 2


def network_gmac(raw_onnx: str | Path) -> float:
    """Multiply-accumulates of one image's forward pass (every Conv, and every yolact::DeformConv2d
    as the convolution it deforms: the same output shape and MACs, its bilinear sampling not
    counted), in GMAC, from the model's shapes (batch set to 1, then ONNX shape inference)."""
    import onnx

    from plugins import DEFORM_CONV_OP, DOMAIN

    model = onnx.load(str(raw_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    # Shape inference does not see through the DeformConv2d function bodies (their Reshapes are
    # computed), so each call stands in as its Conv (inputs x, offset, mask, weight, bias).
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == DEFORM_CONV_OP:
            a = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
            node.CopyFrom(onnx.helper.make_node(
                'Conv', [node.input[0], node.input[3], node.input[4]], list(node.output), name=node.name,
                strides=[a['stride_h'], a['stride_w']], pads=[a['pad_h'], a['pad_w'], a['pad_h'], a['pad_w']],
                dilations=[a['dilation_h'], a['dilation_w']]))
    # data_prop: the Resize sizes are computed from Shape; with the batch fixed they become known.
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.output)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == 'Conv':
            out_shape = shapes.get(node.output[0], [])
            if not out_shape or 0 in out_shape:
                raise ValueError(f'{raw_onnx}: the output shape of Conv {node.name} is not inferable, so the '
                                 'GMAC count would be short')
            out_channels, in_per_group, *kernel = weights[node.input[1]]
            total += int(np.prod(out_shape)) * in_per_group * int(np.prod(kernel))
    return total / 1e9


def synthetic_head(batch: int, num_priors: int, num_classes: int, mask_dim: int, proto_hw: tuple[int, int],
                   detections: int = DETECTIONS, seed: int = 0) -> dict[str, np.ndarray]:
    """A decoded head (export.graph.DecodedHead's arrays, numpy) that gives `detections` detections per
    image: 1.5x as many candidate priors with one confident class each and boxes of 5-40% of the
    image, the rest below the confidence threshold. num_classes excludes the background."""
    rng = np.random.default_rng(seed)
    candidates = int(detections * 1.5)  # some overlap and are suppressed; the rest exceed the cap
    boxes = np.zeros((batch, num_priors, 4), np.float32)
    # Non-candidates: every class at 0.04 / K, below conf_thresh; rows sum below 1 (background > 0).
    scores = np.full((batch, num_priors, num_classes), 0.04 / num_classes, np.float32)
    for b in range(batch):
        size = rng.uniform(0.05, 0.4, (num_priors, 2))
        low = rng.uniform(0, 1 - size)
        boxes[b] = np.concatenate([low, low + size], 1)
        chosen = rng.choice(num_priors, candidates, replace=False)
        scores[b, chosen, rng.integers(0, num_classes, candidates)] = rng.uniform(0.5, 0.95, candidates)
    return {'boxes': boxes, 'class_scores': scores,
            'coef': rng.uniform(-1, 1, (batch, num_priors, mask_dim)).astype(np.float32),
            'proto': np.maximum(rng.normal(0, 1, (batch, *proto_hw, mask_dim)), 0).astype(np.float32)}


# --- what a run measures ------------------------------------------------------------------------

class MissingArtifactError(ToolkitError):
    """An artifact the benchmark times does not exist; the message names the command that makes it."""


@dataclass
class BenchModel:
    """A model under test: its artifacts (checkpoint, raw export, post-processing alone), per-image
    GMAC, and what its raw export says of it."""

    label: str
    checkpoint: Path
    raw_onnx: Path
    post_onnx: Path
    gmac: float
    config: str
    input_size: tuple[int, int]  # (H, W) of the network's input
    mask_threshold: float
    num_priors: int
    num_classes: int  # without the background
    mask_dim: int
    proto_hw: tuple[int, int]


@dataclass
class BenchContext:
    models: list[BenchModel]
    batches: Sequence[int]
    iterations: int
    warmup: int
    threads: int
    warmup_s: float
    matmul_gflops: float
    images: list[np.ndarray] = field(default_factory=list)  # uint8 [480, 640, 3] BGR


RowSource = Callable[[BenchContext], tuple[list[dict], list[str]]]


def stage_row(samples: dict[str, np.ndarray], *, batch: int, gmac: float, matmul: float, **labels) -> dict:
    """A table row from per-stage samples (seconds): p50/p90 in ms, images/s, GFLOP/s."""
    row = dict(labels, batch=batch)
    for stage, values in samples.items():
        row[f'{stage}_p50'] = float(np.percentile(values, 50) * 1e3)
        row[f'{stage}_p90'] = float(np.percentile(values, 90) * 1e3)
    total_s = sum(row[f'{stage}_p50'] for stage in samples) / 1e3
    row['images_per_s'] = batch / total_s
    if 'network' in samples:
        row['network_gflops'] = 2 * gmac * batch / (row['network_p50'] / 1e3)
        row['matmul_gflops'] = matmul
        row['network_pct_of_matmul'] = 100 * row['network_gflops'] / matmul
    return row


def _common_stages(context: BenchContext, model: BenchModel, batch: int):
    """The pre-processing and pasting callables, which do not depend on the backend."""
    images = [context.images[i % len(context.images)] for i in range(batch)]

    def pre():
        # The host only stacks: the graph resizes (the images share one size, IMAGE_HW).
        return np.stack(images)

    def paste(raw):
        return to_detections(raw, [IMAGE_HW] * batch, score_threshold=0, mask_threshold=model.mask_threshold)

    return pre, paste


def _stage_samples(context: BenchContext, pre: Callable[[], object], network_samples: np.ndarray,
                   post: Callable[[], object], paste: Callable[[], object]) -> dict[str, np.ndarray]:
    """Per-stage samples of one row: pre, post and paste (zero-argument callables) timed here; the
    network's samples come from the caller's timed_network, which also measures the matmul rate."""
    return {
        'pre': timed(pre, context.iterations, context.warmup, context.warmup_s),
        'network': network_samples,
        'post': timed(post, context.iterations, context.warmup, context.warmup_s),
        'paste': timed(paste, context.iterations, context.warmup, context.warmup_s),
    }


def ort_rows(context: BenchContext) -> tuple[list[dict], list[str]]:
    """onnxruntime (CPU) rows: the raw export for the network, the post-processing model alone."""
    from runtime.backends.ort_backend import create_session

    rows = []
    for model in context.models:
        network = create_session(model.raw_onnx, num_threads=context.threads)
        post = create_session(model.post_onnx, num_threads=context.threads)
        post_inputs = [i.name for i in post.get_inputs()]  # plugins.onnx_model.DECODED_HEAD_NAMES
        for batch in context.batches:
            pre, paste = _common_stages(context, model, batch)
            images = pre()
            head = synthetic_head(batch, model.num_priors, model.num_classes, model.mask_dim, model.proto_hw)
            feed = dict(zip(post_inputs, head.values()))
            raw = dict(zip([o.name for o in post.get_outputs()], post.run(None, feed)))
            network_samples, matmul = timed_network(lambda: network.run(None, {INPUT_NAME: images}),
                                                    context.iterations, context.warmup, context.warmup_s)
            samples = _stage_samples(context, pre, network_samples, lambda: post.run(None, feed), lambda: paste(raw))
            rows.append(stage_row(samples, batch=batch, gmac=model.gmac, matmul=matmul,
                                  model=model.label, backend='ort', precision='fp32'))
    return rows, []


def torch_rows(context: BenchContext) -> tuple[list[dict], list[str]]:
    """torch eager rows: the torch backend on each model's checkpoint, its network and its
    post-processing (yolact_torch.postprocess.detect) timed apart on the same inputs as onnxruntime's."""
    from runtime.backends.torch_backend import TorchBackend

    rows, notes = [], []
    for model in context.models:
        if not model.checkpoint.is_file():
            notes.append(f'{model.label}: torch rows skipped, no checkpoint {model.checkpoint}')
            continue
        try:
            backend = TorchBackend(model.checkpoint, num_threads=context.threads).load()
        except ToolkitError as e:  # torch missing (BackendError), a checkpoint it cannot read
            notes.append(f'{model.label}: torch rows skipped: {e}')
            continue
        with backend:
            for batch in context.batches:
                pre, paste = _common_stages(context, model, batch)
                images = pre()
                head = synthetic_head(batch, model.num_priors, model.num_classes, model.mask_dim, model.proto_hw)
                raw_head = backend.head_decoding_to(head)
                raw = backend.postprocess(raw_head)
                network_samples, matmul = timed_network(lambda: backend.network(images), context.iterations,
                                                        context.warmup, context.warmup_s)
                samples = _stage_samples(context, pre, network_samples, lambda: backend.postprocess(raw_head),
                                         lambda: paste(raw))
                rows.append(stage_row(samples, batch=batch, gmac=model.gmac, matmul=matmul,
                                      model=model.label, backend='torch', precision='fp32'))
    return rows, notes


# Row sources run in this order; others append theirs (FP16/INT8 exports, TensorRT engines).
ROW_SOURCES: list[RowSource] = [torch_rows, ort_rows, trt_bench.bench_rows, bench_precision.precision_rows]


# --- the table ----------------------------------------------------------------------------------

# (row key, header, format); a column is shown when some row has its key.
COLUMNS = [
    ('model', 'model', '{}'), ('backend', 'backend', '{}'), ('precision', 'prec', '{}'), ('batch', 'B', '{}'),
    ('streams', 'streams', '{}'),
    *[(f'{stage}_{q}', f'{stage} {q} ms', '{:.1f}') for stage in STAGES for q in ('p50', 'p90')],
    ('latency_p50_ms', 'batch p50 ms', '{:.1f}'), ('latency_p99_ms', 'batch p99 ms', '{:.1f}'),
    ('images_per_s', 'img/s', '{:.2f}'), ('network_gflops', 'net GFLOP/s', '{:.1f}'),
    ('matmul_gflops', 'matmul GFLOP/s', '{:.1f}'), ('network_pct_of_matmul', 'net % of matmul', '{:.0f}%'),
    ('gpu_memory_mb', 'GPU MB', '{:.0f}'),
]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `rows` with the COLUMNS some row has ('-' where a row lacks one)."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows)]
    lines = ['| ' + ' | '.join(header for _, header, _ in columns) + ' |',
             '|' + '|'.join('---' for _ in columns) + '|']
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else '-' for key, _, fmt in columns]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# --- preparing the models -----------------------------------------------------------------------

def model_artifacts(spec: str) -> BenchModel:
    """'[LABEL=]CHECKPOINT.pth' -> BenchModel with the artifacts the naming rule gives that checkpoint
    (label: the checkpoint's name by default). MissingArtifactError when the raw export or the
    post-processing model is missing, naming the command that makes it."""
    label, _, checkpoint = spec.rpartition('=')
    checkpoint = Path(checkpoint)
    raw_onnx = export_path(checkpoint, postprocess=False)
    post_onnx = postprocess_only_path(raw_onnx)
    makers = {raw_onnx: f'python -m export --checkpoint {checkpoint} --no-postprocess',
              post_onnx: f'python -m export.bench_artifacts postprocess --raw {raw_onnx} --checkpoint {checkpoint}'}
    for path, command in makers.items():
        if not path.is_file():
            raise MissingArtifactError(f'{path} is missing: make bench builds it ({command})')
    return describe_model(label or export_path(checkpoint).stem, checkpoint, raw_onnx, post_onnx)


def describe_model(label: str, checkpoint: Path, raw_onnx: Path, post_onnx: Path) -> BenchModel:
    """The BenchModel of a raw export: sizes from its output shapes, config, input size and mask
    threshold from its metadata."""
    from runtime.backends.ort_backend import create_session, read_session_metadata

    session = create_session(raw_onnx)
    meta = read_session_metadata(session, raw_onnx)
    shapes = {o.name: o.shape for o in session.get_outputs()}
    if list(shapes) != list(RAW_OUTPUTS):
        raise MissingArtifactError(f'{raw_onnx} has outputs {list(shapes)}, not the raw head {list(RAW_OUTPUTS)}: '
                                   f'export it again with python -m export --checkpoint {checkpoint} --no-postprocess')
    num_priors, num_classes = shapes['conf'][1:3]
    proto_h, proto_w, mask_dim = shapes['proto'][1:4]
    return BenchModel(label, checkpoint, raw_onnx, post_onnx, network_gmac(raw_onnx), meta.config,
                      tuple(meta.input_size), meta.mask_threshold, num_priors, num_classes - 1, mask_dim,
                      (proto_h, proto_w))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m runtime.bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--models', nargs='+', required=True, metavar='[LABEL=]CHECKPOINT',
                        help='checkpoints (.pth) whose artifacts (runtime.artifacts: build/NAME.raw.onnx, '
                             'build/NAME.postprocess.onnx, their FP16/INT8 variants, engines) are timed; '
                             '`make bench` builds them. LABEL names the model in the table (default: NAME)')
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 4], help='batch sizes (default: 1 4)')
    parser.add_argument('--iterations', type=int, default=10, help='timed runs per stage (default: 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs first (default: 2)')
    parser.add_argument('--warmup-seconds', type=float, default=WARMUP_S,
                        help='untimed runs go on until they have taken this long, so that short stages are '
                             'timed warm (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=os.cpu_count(),
                        help='intra-op threads for torch and onnxruntime (default: every core)')
    parser.add_argument('--sources', nargs='+', choices=[source.__name__ for source in ROW_SOURCES],
                        default=[source.__name__ for source in ROW_SOURCES],
                        help='row sources to run (default: all)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if min(args.batches) < 1 or args.iterations < 1 or args.warmup < 0 or args.warmup_seconds < 0:
        print('error: batches and --iterations must be at least 1, --warmup and --warmup-seconds at least 0',
              file=sys.stderr)
        return 2
    notes, models = [], []
    for spec in args.models:
        try:
            models.append(model_artifacts(spec))
        except ToolkitError as e:
            notes.append(f'{spec} skipped: {e}')
    if not models:
        print('error: no model to benchmark: ' + '; '.join(notes), file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    context = BenchContext(models, args.batches, args.iterations, args.warmup, args.threads, args.warmup_seconds,
                           matmul_gflops=0.0,
                           images=[rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8) for _ in range(4)])
    context.matmul_gflops = matmul_gflops()
    rows = []
    for source in (source for source in ROW_SOURCES if source.__name__ in args.sources):
        print(f'measuring {source.__name__} ...', file=sys.stderr)
        source_rows, source_notes = source(context)
        rows += source_rows
        notes += source_notes
    # The matrix-multiply rate is measured again at the end: the machine may be shared.
    final_rate = matmul_gflops()
    for model in models:
        print(f'{model.label}: {model.config}, {model.gmac:.1f} GMAC per image', file=sys.stderr)
    print(format_table(rows))
    print(f'\nfloat32 matmul: {context.matmul_gflops:.1f} GFLOP/s at the start, {final_rate:.1f} at the end; '
          f'{args.threads} threads; {DETECTIONS} detections per image pasted at {IMAGE_HW[1]}x{IMAGE_HW[0]}.')
    for note in notes:
        print(f'note: {note}')
    return 0

