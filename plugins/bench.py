"""Benchmark the post-processing: the TensorRT plugins against the same ONNX graph built from the
function bodies (standard ops), and against torch's batched_nms path, for 1, 8 and 32 images.
Then YOLACT++'s deformable convolution: the Triton kernel against the torch op
(yolact_torch/deform_conv.py, grid_sample) and a plain cuDNN conv of the same shape, at each DCN layer of
yolact_plus_resnet50 at 550 px, one image.

    python -m plugins.bench [--config yolact_base] [--batch 1 8 32] [--iterations 50] [--fp16]

Needs an NVIDIA GPU, TensorRT >= 10.8, torch with CUDA and Triton; elsewhere it says which is
missing and exits with status 3. Inputs are synthetic at the config's real sizes (P priors, K
classes, a 2*P3 prototype grid): boxes around the priors, softmax scores of which a few percent
pass conf_thresh. Times are CUDA-event milliseconds per batch (median), host copies excluded.

Also the small TensorRT helpers (`build_engine`, `EngineRunner`) the plugins' GPU tests use.
"""

from __future__ import annotations

import argparse
import statistics
import sys

BATCHES = (1, 8, 32)
UNAVAILABLE = 3  # exit status when this host cannot run the benchmark


def unavailable_reason() -> str | None:
    """None when the GPU benchmark can run here, else what is missing."""
    try:
        import torch
    except ImportError:
        return 'torch is not installed'
    if not torch.cuda.is_available():
        return 'no CUDA device is visible (the plugins run on NVIDIA GPUs)'
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'TensorRT is not installed (pip install -e .[tensorrt])'
    try:
        import tensorrt.plugin  # noqa: F401
    except ImportError:
        return 'this TensorRT has no tensorrt.plugin module (TensorRT >= 10.8 is needed)'
    return None


def build_engine(onnx_bytes: bytes, shapes: dict, *, fp16: bool = False):
    """A deserialised TensorRT engine of an ONNX model. shapes: input name -> (min, opt, max) shapes.
    Returns (engine, number of plugin layers in the network)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT could not parse the post-processing graph: {errors}')
    plugin_layers = sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError('TensorRT failed to build the post-processing engine (see its log above)')
    return trt.Runtime(logger).deserialize_cuda_engine(serialized), plugin_layers


class EngineRunner:
    """Runs an engine on torch CUDA tensors: `runner(feeds) -> {output name: tensor}`."""

    def __init__(self, engine):
        import tensorrt as trt

        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, feeds: dict, stream=None) -> dict:
        import tensorrt as trt
        import torch

        stream = stream or torch.cuda.current_stream()
        for name in self.inputs:
            tensor = feeds[name].contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name in self.outputs:
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16,
                     trt.int32: torch.int32}[self.engine.get_tensor_dtype(name)]
            results[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device='cuda')
            self.context.set_tensor_address(name, results[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError('TensorRT failed to run the post-processing engine')
        return results


def synthetic_inputs(config, batch: int, *, dtype, seed: int = 0) -> dict:
    """Post-processing inputs at the config's sizes, on the GPU: decoded boxes around the priors,
    softmax class scores (background dropped), tanh coefficients, ReLU prototypes."""
    import torch

    from yolact_torch.priors import feature_sizes, make_priors

    generator = torch.Generator(device='cuda').manual_seed(seed)
    priors = make_priors(config).cuda()
    num_priors, num_classes = priors.shape[0], len(config.class_names)
    grid = 2 * feature_sizes(config)[0][0]
    centre = priors[:, :2] + 0.02 * torch.randn(batch, num_priors, 2, device='cuda', generator=generator)
    size = priors[:, 2:] * torch.exp(0.2 * torch.randn(batch, num_priors, 2, device='cuda', generator=generator))
    logits = 3 * torch.randn(batch, num_priors, num_classes + 1, device='cuda', generator=generator)
    logits[..., 0] += 6  # mostly background, as a trained model: a few percent pass conf_thresh
    return {
        'decoded_boxes': torch.cat([centre - size / 2, centre + size / 2], dim=-1).to(dtype),
        'class_scores': logits.softmax(-1)[..., 1:].to(dtype),
        'coef': torch.tanh(torch.randn(batch, num_priors, config.mask_dim, device='cuda', generator=generator)).to(dtype),
        'proto': torch.relu(torch.randn(batch, grid, grid, config.mask_dim, device='cuda', generator=generator)).to(dtype)}


def batched_nms_path(config, inputs: dict):
    """The usual torch pipeline: per-class threshold, torchvision's batched_nms, top max_dets,
    then masks by matmul, sigmoid and crop. Returns None when torchvision is missing."""
    try:
        from torchvision.ops import batched_nms
    except ImportError:
        return None
    import torch

    from yolact_torch.postprocess import crop_masks

    def run():
        results = []
        for boxes, scores, coef, proto in zip(inputs['decoded_boxes'].float(), inputs['class_scores'].float(),
                                              inputs['coef'].float(), inputs['proto'].float()):
            prior, cls = torch.nonzero(scores > config.conf_thresh, as_tuple=True)
            det_scores = scores[prior, cls]
            keep = batched_nms(boxes[prior], det_scores, cls, config.nms_thresh)[:config.max_num_detections]
            kept = prior[keep]
            masks = torch.sigmoid(proto @ coef[kept].T).permute(2, 0, 1)
            results.append(crop_masks(masks, boxes[kept], config.crop_padding))
        return results
    return run


def time_ms(fn, iterations: int, warmup: int = 5) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def deform_conv_rows(iterations: int, dtype) -> list[tuple]:
    """(layer, x shape, stride, Triton ms, torch op ms, cuDNN conv ms, count, max |Triton - torch op|) per
    DCN layer shape of yolact_plus_resnet50 at 550 px (plugins.deform_conv.bench's table)."""
    import torch

    from yolact_torch.deform_conv import deform_conv2d as torch_deform_conv2d
    from plugins.deform_conv.bench import YOLACT_PLUS_RESNET50_DCN
    from plugins.deform_conv.kernels import deform_conv2d as triton_deform_conv2d
    from plugins.deform_conv.reference import output_size

    generator = torch.Generator(device='cuda').manual_seed(0)
    rows = []
    for name, channels, size, stride, count in YOLACT_PLUS_RESNET50_DCN:
        out = output_size(size, 3, stride, 1, 1)

        def randn(*shape, scale=1.0):
            return (scale * torch.randn(*shape, device='cuda', generator=generator)).to(dtype)

        x, weight, bias = randn(1, channels, size, size), randn(channels, channels, 3, 3, scale=0.05), randn(channels)
        offset = randn(1, 18, out, out, scale=1.5)
        mask = torch.rand(1, 9, out, out, device='cuda', generator=generator).to(dtype)
        triton_y = triton_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=1)
        torch_y = torch_deform_conv2d(x, offset, mask, weight, bias, [stride] * 2, [1, 1], [1, 1], 1)
        rows.append((name, [1, channels, size, size], stride,
                     time_ms(lambda: triton_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=1),
                             iterations),
                     time_ms(lambda: torch_deform_conv2d(x, offset, mask, weight, bias, [stride] * 2, [1, 1], [1, 1], 1),
                             iterations),
                     time_ms(lambda: torch.nn.functional.conv2d(x, weight, bias, stride=stride, padding=1), iterations),
                     count, (triton_y.float() - torch_y.float()).abs().max().item()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m plugins.bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='yolact_base', help='model config giving the sizes and thresholds')
    parser.add_argument('--batch', type=int, nargs='+', default=list(BATCHES), help='batch sizes to time')
    parser.add_argument('--iterations', type=int, default=50, help='timed runs per case (median reported)')
    parser.add_argument('--fp16', action='store_true', help='float16 inputs and engines')
    args = parser.parse_args(argv)

    reason = unavailable_reason()
    if reason:
        print(f'plugins.bench cannot run on this host: {reason}. Run `make bench-plugins` on a GPU host.',
              file=sys.stderr)
        return UNAVAILABLE
    import torch
    from onnx import TensorProto
    from tqdm import tqdm

    from yolact_torch.config import get_config
    from plugins import register_tensorrt_plugins
    from plugins.onnx_model import nms_and_masks_model

    config = get_config(args.config)
    dtype = torch.float16 if args.fp16 else torch.float32
    model = nms_and_masks_model(conf_thresh=config.conf_thresh, iou_thresh=config.nms_thresh, top_k=config.nms_top_k,
                              max_dets=config.max_num_detections, cross_class=False,
                              crop_padding=config.crop_padding,
                              float_type=TensorProto.FLOAT16 if args.fp16 else TensorProto.FLOAT).SerializeToString()
    sample = synthetic_inputs(config, 1, dtype=dtype)
    low, high = min(args.batch), max(args.batch)
    shapes = {name: ((low, *t.shape[1:]), (high, *t.shape[1:]), (high, *t.shape[1:])) for name, t in sample.items()}
    # The standard-op engine first: registering the plugins cannot be undone in a process.
    standard_engine, _ = build_engine(model, shapes, fp16=args.fp16)
    registered, why = register_tensorrt_plugins()
    if not registered:
        print(f'plugins.bench: the plugins did not register: {why}', file=sys.stderr)
        return UNAVAILABLE
    plugin_engine, plugin_layers = build_engine(model, shapes, fp16=args.fp16)
    if plugin_layers != 2:
        print(f'plugins.bench: expected 2 plugin layers in the engine, TensorRT made {plugin_layers}', file=sys.stderr)
        return 1
    runners = {'plugins': EngineRunner(plugin_engine), 'standard ops': EngineRunner(standard_engine)}
    rows = []
    for batch in tqdm(args.batch, desc='batch sizes'):
        inputs = synthetic_inputs(config, batch, dtype=dtype)
        row = {name: time_ms(lambda r=runner: r(dict(inputs)), args.iterations) for name, runner in runners.items()}
        torch_path = batched_nms_path(config, inputs)
        row['torch batched_nms'] = time_ms(torch_path, args.iterations) if torch_path else None
        rows.append((batch, row))
    print(f'\n{config.name}: P={sample["decoded_boxes"].shape[1]} K={len(config.class_names)} '
          f'grid={sample["proto"].shape[1]} {"fp16" if args.fp16 else "fp32"}, {torch.cuda.get_device_name()}')
    names = list(rows[0][1])
    print(f'{"batch":>5} | ' + ' | '.join(f'{n + " ms":>20}' for n in names) + ' | plugin speed-up vs standard ops')
    for batch, row in rows:
        cells = ' | '.join(f'{row[n]:20.3f}' if row[n] is not None else f'{"n/a (no torchvision)":>20}' for n in names)
        print(f'{batch:>5} | {cells} | {row["standard ops"] / row["plugins"]:.1f}x')

    print(f'\nDeformConv2d, yolact_plus_resnet50 at 550 px, one image, {"fp16" if args.fp16 else "fp32"}')
    print(f'{"layer":11s} {"x":>18s} {"stride":>6s} {"Triton ms":>10s} {"torch op ms":>11s} {"cuDNN conv ms":>13s} '
          f'{"count":>5s} {"max |Triton - torch|":>20s}')
    totals, layers = [0.0, 0.0, 0.0], 0
    for name, shape, stride, triton_ms, torch_ms, conv_ms, count, diff in deform_conv_rows(args.iterations, dtype):
        totals = [t + count * v for t, v in zip(totals, (triton_ms, torch_ms, conv_ms))]
        layers += count
        print(f'{name:11s} {str(shape):>18s} {stride:6d} {triton_ms:10.3f} {torch_ms:11.3f} {conv_ms:13.3f} '
              f'{count:5d} {diff:20.2g}')
    print(f'{f"all {layers} DCN layers":37s} {totals[0]:10.3f} {totals[1]:11.3f} {totals[2]:13.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
