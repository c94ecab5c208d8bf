"""onnxruntime CPU time of the `yolact::DeformConv2d` function body against a plain Conv of the same
shape, at the DCN layers of yolact_plus_resnet50 at 550 px, and the tolerance each needed against
the float64 reference. A measurement, not a test:

    python -m plugins.deform_conv.bench [--threads 2] [--runs 10]
    python -m plugins.deform_conv.bench --model yolact_plus_resnet50.raw.onnx [--threads 2] [--runs 5]

With --model (an exported YOLACT++ model, e.g. `--no-postprocess`): the DeformConv2d bodies' share of
the whole network's onnxruntime node time, from onnxruntime's profile.

YOLACT++ ResNet-50 (dbolya/yolact data/config.py `resnet50_dcnv2_backbone`, dcn_layers [0, 4, 6, 3],
interval 1) replaces conv2 (3x3, padding 1) of every bottleneck of layers 2-4 by DCN; the first
block of each layer has stride 2. At 550 px the layers see 138 -> 69, 69, 69 -> 35, 35, 35 -> 18, 18.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

# (name, channels, input size, stride, how many blocks of the backbone have this shape)
YOLACT_PLUS_RESNET50_DCN = [('layer2.0', 128, 138, 2, 1), ('layer2.1-3', 128, 69, 1, 3), ('layer3.0', 256, 69, 2, 1),
                            ('layer3.1-5', 256, 35, 1, 5), ('layer4.0', 512, 35, 2, 1), ('layer4.1-2', 512, 18, 1, 2)]


def cpu_name() -> str:
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(':', 1)[1].strip() for line in out.splitlines() if line.startswith('Model name'))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or 'unknown CPU'


def sessions(channels: int, size: int, stride: int, threads: int, rng):
    """(DeformConv2d session, Conv session, feeds of each, the DCN case) for one layer shape."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from plugins import DOMAIN
    from plugins.deform_conv import onnx_function
    from plugins.deform_conv.reference import output_size
    from plugins.onnx_model import DOMAIN_VERSION, IR_VERSION

    out = output_size(size, 3, stride, 1, 1)
    weight = (rng.normal(size=(channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    bias = rng.normal(size=channels).astype(np.float32)
    x = rng.normal(size=(1, channels, size, size)).astype(np.float32)
    offset = rng.normal(scale=1.5, size=(1, 18, out, out)).astype(np.float32)
    mask = rng.random((1, 9, out, out)).astype(np.float32)
    value = helper.make_tensor_value_info
    initializers = [numpy_helper.from_array(weight, 'weight'), numpy_helper.from_array(bias, 'bias')]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(nodes, inputs, functions=()):
        graph = helper.make_graph(nodes, 'layer', inputs, [value('y', TensorProto.FLOAT, None)],
                                  initializer=initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19),
                                                        helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
        model.ir_version = IR_VERSION
        model.functions.extend(functions)
        return ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])

    dcn_inputs = [value(name, TensorProto.FLOAT, a.shape) for name, a in (('x', x), ('offset', offset), ('mask', mask))]
    dcn = session([onnx_function.make_node(onnx_function.INPUTS, ['y'], stride=stride, padding=1)], dcn_inputs,
                  [onnx_function.make_function(19)])
    conv = session([helper.make_node('Conv', ['x', 'weight', 'bias'], ['y'], strides=[stride] * 2, pads=[1] * 4)],
                   [value('x', TensorProto.FLOAT, x.shape)])
    return dcn, conv, {'x': x, 'offset': offset, 'mask': mask}, {'x': x}, (x, offset, mask, weight, bias)


def median_ms(session, feeds: dict, runs: int) -> float:
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def network_share(model_path: str, threads: int, runs: int) -> None:
    """Print the DeformConv2d function bodies' share of `model_path`'s onnxruntime node time.

    onnxruntime inlines model-local functions under generic node names, so the model is inlined here
    first (the graph onnxruntime would run) and the bodies' nodes, which the inliner leaves unnamed,
    are named for the profile. Input: one random uint8 image at the model's input size.
    """
    import collections
    import json
    import os
    import tempfile

    import onnx
    import onnx.inliner
    import onnxruntime as ort

    from runtime.contract import INPUT_NAME, metadata_from_props

    model = onnx.load(model_path)
    height, width = metadata_from_props({p.key: p.value for p in model.metadata_props}, model_path).input_size
    model = onnx.inliner.inline_local_functions(model)
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f'DeformConv2d_body_{index}'
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix='dcn-share-'), 'profile')
    session = ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    feeds = {INPUT_NAME: np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)}
    wall = median_ms(session, feeds, runs)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    first_timed = [e for e in events if e.get('name') == 'model_run'][-runs]['ts']
    node_us = collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time') and event['ts'] >= first_timed:
            node_us['dcn' if event['name'].startswith('DeformConv2d_body_') else 'other'] += event['dur']
    dcn_ms, total_ms = node_us['dcn'] / runs / 1e3, sum(node_us.values()) / runs / 1e3
    print(f'CPU: {cpu_name()}; onnxruntime {ort.__version__}, {threads} threads, {runs} runs, one {height}x{width} image')
    print(f'network wall {wall:.0f} ms (median); node time {total_ms:.0f} ms, of which DeformConv2d bodies '
          f'{dcn_ms:.0f} ms ({100 * dcn_ms / total_ms:.1f}%; their conv_offset_mask convs are not counted)')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m plugins.deform_conv.bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='onnxruntime intra-op threads')
    parser.add_argument('--runs', type=int, default=10, help='timed runs per layer (median)')
    parser.add_argument('--no-check', action='store_true', help='skip the float64 reference (slow on big layers)')
    parser.add_argument('--model', help="an exported YOLACT++ .onnx: measure the DCN bodies' share of its network time")
    args = parser.parse_args(argv)
    if args.model:
        network_share(args.model, args.threads, args.runs)
        return 0

    import onnxruntime as ort

    from plugins.deform_conv.reference import deform_conv2d

    rng = np.random.default_rng(0)
    print(f'CPU: {cpu_name()}; onnxruntime {ort.__version__}, {args.threads} threads, median of {args.runs} runs')
    print(f'{"layer":11s} {"x":>18s} {"stride":>6s} {"DeformConv2d ms":>15s} {"Conv ms":>8s} {"ratio":>6s} '
          f'{"count":>5s} {"needed atol":>11s}')
    total_dcn = total_conv = 0.0
    for name, channels, size, stride, count in YOLACT_PLUS_RESNET50_DCN:
        dcn, conv, dcn_feeds, conv_feeds, inputs = sessions(channels, size, stride, args.threads, rng)
        dcn_ms, conv_ms = median_ms(dcn, dcn_feeds, args.runs), median_ms(conv, conv_feeds, args.runs)
        total_dcn += count * dcn_ms
        total_conv += count * conv_ms
        needed = '-'
        if not args.no_check:
            expected = deform_conv2d(*(a.astype(np.float64) for a in inputs), stride=stride, padding=1)
            needed = f'{np.abs(dcn.run(None, dcn_feeds)[0] - expected).max():.2g}'
        print(f'{name:11s} {str([1, channels, size, size]):>18s} {stride:6d} {dcn_ms:15.1f} {conv_ms:8.1f} '
              f'{dcn_ms / conv_ms:6.1f} {count:5d} {needed:>11s}', flush=True)
    layers = sum(count for *_, count in YOLACT_PLUS_RESNET50_DCN)
    print(f'{f"all {layers} DCN layers of one 550 px image":47s} {total_dcn:8.1f} {total_conv:8.1f} '
          f'{total_dcn / total_conv:6.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
