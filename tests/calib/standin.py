"""A small stand-in for an exported YOLACT model, built op by op so calibration tests run in seconds.

Same contract as the real export: uint8 NHWC `images` input of any size, a resize to SIZE x SIZE
(onnxruntime's Resize; the export's exact taps are yolact_torch/preprocess.py's) and normalisation in the graph, Conv+Relu
network, a prototype branch (NHWC) and box/score/coefficient heads, then post-processing as
model-local functions in domain "yolact" (FastNMS, MaskAssembly) whose bodies contain quantisable
ops (a MatMul) that must stay FP32, and ModelMetadata under metadata_props.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from calib.graph import split_postprocess
from export.onnx_export import attach_metadata
from plugins.deform_conv import onnx_function as deform_conv_function
from yolact_torch.config import metadata_from_config, yolact_tiny

OPSET = 19
SIZE = 16  # input height and width
CHANNELS = 16  # modelopt quantises convolutions with >= 16 channels (TensorRT's INT8 kernels)
MASK_DIM = 4
NUM_CLASSES = 3
TOP = 5
PROTO_CONV, COEF_CONV = 'proto_net.conv', 'head.coef_layer'
DECODE_MUL = 'decode_mul'
OFFSET_CONV, DCN = 'backbone.dcn.conv_offset_mask', 'backbone.dcn'


def _fast_nms_function() -> onnx.FunctionProto:
    const = lambda name, values: h.make_node('Constant', [], [name], value=nh.from_array(np.array(values, np.int64)))  # noqa: E731
    return h.make_function('yolact', 'FastNMS', ['boxes', 'scores'], ['num_dets', 'det_indices'], [
        const('axis2', [2]), const('axis1', [1]), const('k', [TOP]),
        h.make_node('ReduceMax', ['scores', 'axis2'], ['best'], keepdims=0),
        h.make_node('Constant', [], ['thresh'], value_float=0.4),
        h.make_node('Greater', ['best', 'thresh'], ['keep']),
        h.make_node('Cast', ['keep'], ['keep_i'], to=T.INT32),
        h.make_node('ReduceSum', ['keep_i', 'axis1'], ['num_dets'], keepdims=0),
        h.make_node('TopK', ['best', 'k'], ['top_scores', 'top_indices'], axis=1),
        h.make_node('Cast', ['top_indices'], ['det_indices'], to=T.INT32),
    ], [h.make_opsetid('', OPSET)])


def _mask_assembly_function() -> onnx.FunctionProto:
    const = lambda name, values: h.make_node('Constant', [], [name], value=nh.from_array(np.array(values, np.int64)))  # noqa: E731
    return h.make_function('yolact', 'MaskAssembly', ['proto', 'coef', 'det_indices'], ['masks'], [
        const('axis2', [2]), const('repeat', [1, 1, MASK_DIM]), const('flat', [0, -1, MASK_DIM]),
        h.make_node('Cast', ['det_indices'], ['indices'], to=T.INT64),
        h.make_node('Unsqueeze', ['indices', 'axis2'], ['indices3']),
        h.make_node('Tile', ['indices3', 'repeat'], ['gather_indices']),
        h.make_node('GatherElements', ['coef', 'gather_indices'], ['det_coef'], axis=1),
        h.make_node('Reshape', ['proto', 'flat'], ['proto_flat']),
        h.make_node('Transpose', ['det_coef'], ['det_coef_t'], perm=[0, 2, 1]),
        h.make_node('MatMul', ['proto_flat', 'det_coef_t'], ['logits']),
        h.make_node('Sigmoid', ['logits'], ['masks']),
    ], [h.make_opsetid('', OPSET)])


def build_standin(seed: int = 0, size: int = SIZE, deformable: bool = False) -> onnx.ModelProto:
    """The stand-in model, resizing images of any size to size x size; outputs num_dets int32 [B]
    and masks float32 [B, size*size, TOP].

    deformable: a YOLACT++ stand-in: a deformable convolution block after the first convolution, as
    the export writes YOLACT++'s (OFFSET_CONV, then DCN, a `yolact::DeformConv2d` call, and its function).
    """
    rng = np.random.default_rng(seed)
    initializers = []

    def tensor(name, array):
        initializers.append(nh.from_array(np.asarray(array), name))
        return name

    def weight(name, *shape, scale):
        return tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    cfg = yolact_tiny
    nodes = [
        h.make_node('Cast', ['images'], ['pixels'], to=T.FLOAT, name='cast_input'),
        h.make_node('Resize', ['pixels', '', '', tensor('input_size', np.array([size, size]))], ['resized'],
                    axes=[1, 2], mode='linear', name='resize_to_input'),
        h.make_node('Sub', ['resized', tensor('mean', np.float32(cfg.mean_bgr))], ['centred'], name='normalise_sub'),
        h.make_node('Div', ['centred', tensor('std', np.float32(cfg.std_bgr))], ['normalised'], name='normalise_div'),
        h.make_node('Transpose', ['normalised'], ['x'], perm=[0, 3, 1, 2], name='to_nchw'),
    ]
    features, channels = 'x', 3
    for i in range(3):
        # conv2 applies conv1's weights again, as YOLACT's prediction head serves every FPN level.
        params = ['conv1.weight', 'conv1.bias'] if i == 2 else [
            weight(f'conv{i}.weight', CHANNELS, channels, 3, 3, scale=0.2), weight(f'conv{i}.bias', CHANNELS, scale=0.05)]
        nodes.append(h.make_node('Conv', [features, *params], [f'conv{i}'], pads=[1] * 4, name=f'backbone.conv{i}'))
        nodes.append(h.make_node('Relu', [f'conv{i}'], [f'relu{i}'], name=f'backbone.relu{i}'))
        features, channels = f'relu{i}', CHANNELS
        if i == 0 and deformable:
            nodes += _deformable_block(features, weight)
            features = 'dcn_relu'
    nodes += [
        h.make_node('Conv', [features, weight('proto.weight', MASK_DIM, CHANNELS, 1, 1, scale=0.3),
                             weight('proto.bias', MASK_DIM, scale=0.05)], ['proto_nchw'], name=PROTO_CONV),
        h.make_node('Relu', ['proto_nchw'], ['proto_relu'], name='proto_net.relu'),
        h.make_node('Transpose', ['proto_relu'], ['proto'], perm=[0, 2, 3, 1], name='proto_nhwc'),
    ]
    for name, out_channels, activation, conv_name in (
            ('boxes', 4, 'Sigmoid', 'head.bbox_layer'), ('scores', NUM_CLASSES, 'Softmax', 'head.conf_layer'),
            ('coef', MASK_DIM, 'Tanh', COEF_CONV)):
        nodes += [
            h.make_node('Conv', [features, weight(f'{name}.weight', out_channels, CHANNELS, 1, 1, scale=0.3),
                                 weight(f'{name}.bias', out_channels, scale=0.05)], [f'{name}_nchw'], name=conv_name),
            h.make_node('Transpose', [f'{name}_nchw'], [f'{name}_nhwc'], perm=[0, 2, 3, 1], name=f'{name}_nhwc'),
            h.make_node('Reshape', [f'{name}_nhwc', tensor(f'{name}.shape', np.array([0, -1, out_channels]))],
                        [f'{name}_flat'], name=f'{name}_flat'),
            h.make_node(activation, [f'{name}_flat'], [name if name != 'boxes' else 'box_offsets'],
                        name=f'{name}_activation', **({'axis': -1} if activation == 'Softmax' else {})),
        ]
    # Box decoding against per-prior constants, as the export's: arithmetic after the last
    # convolution, which INT8 must leave alone.
    nodes += [
        h.make_node('Mul', ['box_offsets', tensor('prior_scale', rng.uniform(0.5, 1.5, (size * size, 4)).astype(np.float32))],
                    ['box_scaled'], name=DECODE_MUL),
        h.make_node('Sub', ['box_offsets', tensor('prior_offset', rng.uniform(-0.5, 0.5, (size * size, 4)).astype(np.float32))],
                    ['box_shifted'], name='decode_sub'),
        # Two computed operands, like the export's centre/size arithmetic.
        h.make_node('Add', ['box_scaled', 'box_shifted'],
                    ['boxes'], name='decode_add'),
    ]
    nodes += [
        h.make_node('FastNMS', ['boxes', 'scores'], ['num_dets', 'det_indices'], domain='yolact', name='fast_nms'),
        h.make_node('MaskAssembly', ['proto', 'coef', 'det_indices'], ['masks'], domain='yolact', name='mask_assembly'),
    ]
    graph = h.make_graph(
        nodes, 'standin', [h.make_tensor_value_info('images', T.UINT8, ['batch', 'height', 'width', 3])],
        [h.make_tensor_value_info('num_dets', T.INT32, ['batch']),
         h.make_tensor_value_info('masks', T.FLOAT, ['batch', size * size, TOP])], initializers)
    functions = [_fast_nms_function(), _mask_assembly_function()]
    model = h.make_model(graph, opset_imports=[h.make_opsetid('', OPSET), h.make_opsetid('yolact', 1)],
                         functions=functions + ([deform_conv_function.make_function(OPSET)] if deformable else []))
    model.ir_version = 10
    cfg = dataclasses.replace(cfg.with_classes(cfg.class_names[:NUM_CLASSES - 1]), max_size=size)
    meta = metadata_from_config(cfg, max_dets=TOP)
    attach_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def _deformable_block(features: str, weight) -> list[onnx.NodeProto]:
    """YOLACT++'s deformable 3x3 conv on `features` [B, CHANNELS, SIZE, SIZE], as exported: the offset/mask
    convolution, split into (dy, dx) offsets and a sigmoid mask, the DCN call, then a Relu -> `dcn_relu`.
    Offsets of about a pixel (fractional, some samples outside the image)."""
    taps = 9
    return [
        h.make_node('Conv', [features, weight('dcn.conv_offset_mask.weight', 3 * taps, CHANNELS, 3, 3, scale=0.05),
                             weight('dcn.conv_offset_mask.bias', 3 * taps, scale=1.0)], ['offset_mask'],
                    pads=[1] * 4, name=OFFSET_CONV),
        h.make_node('Split', ['offset_mask'], ['o1', 'o2', 'm'], axis=1, num_outputs=3, name='dcn_split'),
        h.make_node('Concat', ['o1', 'o2'], ['offset'], axis=1, name='dcn_offset'),
        h.make_node('Sigmoid', ['m'], ['mask'], name='dcn_mask'),
        deform_conv_function.make_node(
            [features, 'offset', 'mask', weight('dcn.weight', CHANNELS, CHANNELS, 3, 3, scale=0.1),
             weight('dcn.bias', CHANNELS, scale=0.05)], ['dcn'], padding=1, name=DCN),
        h.make_node('Relu', ['dcn'], ['dcn_relu'], name='backbone.dcn_relu'),
    ]


def smooth_images(count: int, size: int = SIZE, seed: int = 1) -> np.ndarray:
    """uint8 [count, size, size, 3]: blurred noise, closer to photographs than white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 4, 4, 3)).astype(np.uint8)
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in small])


def raw_export_like(standin) -> onnx.ModelProto:
    """The stand-in cut as `--no-postprocess` exports: head outputs plus a constant `priors` output."""
    raw = split_postprocess(standin).network
    raw.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), 'priors'))
    raw.graph.output.append(onnx.helper.make_tensor_value_info('priors', onnx.TensorProto.FLOAT, [2, 4]))
    onnx.helper.set_model_props(raw, {p.key: p.value for p in standin.metadata_props})
    return raw
