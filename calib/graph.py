"""Split an exported model into its network and its post-processing, and join them again.

Precision conversion touches only the network: the post-processing (the model-local functions
yolact::FastNMS and yolact::MaskAssembly, and anything computed from their outputs) stays FP32.
modelopt's passes (opset conversion, ORT quantisation, autocast) drop model-local functions, so
instead of asking them to leave the functions alone we hand them the network alone and re-attach
the post-processing nodes, function bodies and metadata afterwards. YOLACT++'s deformable
convolutions, function calls inside the network, are inlined into it instead and collapsed back
when joining (calib/deform_conv.py).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import onnx
from onnx import helper

from calib.deform_conv import (InlinedCall, collapse_deform_convs, copy_proto, inline_deform_convs, is_deform_conv,
                               offset_inputs)
from export.onnx_export import attach_metadata, read_metadata
from plugins import DEFORM_CONV_OP, DOMAIN
from plugins.deform_conv.onnx_function import make_function as make_deform_conv_function
from runtime.errors import ToolkitError
from runtime.metadata import MetadataError, ModelMetadata

# Where the mask inputs come from: MaskAssembly's first two inputs (proto [B,Hp,Wp,M] and
# coef [B,P,M]), or, for a model exported without post-processing, these raw outputs.
MASK_ASSEMBLY_OP = 'MaskAssembly'
RAW_MASK_OUTPUTS = ('proto', 'coef')
# YOLACT++'s offset/mask convolutions stay FP32 unless told otherwise (kept_convolutions). Measured on
# yolact_plus_tiny (README, "Precision and engines"): quantised, they changed no raw output beyond
# noise, but in the onnxruntime INT8 layout, which rounds convolution outputs to uint8, the clipped
# range moved the largest offsets by up to 7 pixels (1.5 kept FP32); FP32 costs little beside the
# deformable convolution, which is FP32 anyway.
KEEP_OFFSETS = True


class CalibrationError(ToolkitError, ValueError):
    """Bad input to calibration (model, images, options); the message names the fix."""


@dataclass(frozen=True)
class SplitModel:
    """network: a standalone model with the original inputs and, as outputs, every tensor the
    post-processing reads plus the original outputs the network itself produces.
    postprocess_nodes: the original graph's function calls and every node downstream of them.
    mask_inputs: names of the network outputs holding the prototypes and the mask coefficients.
    deform_convs: YOLACT++'s `yolact::DeformConv2d` calls, inlined into the network (empty for YOLACT).
    """

    network: onnx.ModelProto
    postprocess_nodes: tuple[onnx.NodeProto, ...]
    mask_inputs: tuple[str, ...]
    original: onnx.ModelProto
    deform_convs: tuple[InlinedCall, ...] = ()


def model_metadata(model: onnx.ModelProto) -> ModelMetadata:
    """The ModelMetadata the exporter stored in `model`, or CalibrationError naming the fix."""
    try:
        return read_metadata(model, 'the input model')
    except MetadataError as e:
        raise CalibrationError(str(e)) from None


def split_postprocess(model: onnx.ModelProto) -> SplitModel:
    """Cut `model` before its model-local function calls (see the module docstring).

    A model exported without post-processing has no post-processing calls: its network is all of
    it. YOLACT++'s yolact::DeformConv2d calls belong to the network, which gets them inlined.
    """
    deform_conv = next((f for f in model.functions if (f.domain, f.name) == (DOMAIN, DEFORM_CONV_OP)), None)
    if deform_conv is None and any(is_deform_conv(n) for n in model.graph.node):
        raise CalibrationError(f'the model calls {DOMAIN}::{DEFORM_CONV_OP} but has no function body for it: '
                               're-export it with python -m export')
    model = copy_proto(model)
    for i, node in enumerate(model.graph.node):
        # Nodes are named in the result (modelopt names them otherwise; ours must match its names).
        node.name = node.name or f'{node.op_type}_{i}'
    local = {(f.domain, f.name) for f in model.functions} - {(DOMAIN, DEFORM_CONV_OP)}
    post_outputs: set[str] = set()
    network_nodes, post_nodes = [], []
    for node in model.graph.node:
        if (node.domain, node.op_type) in local or any(i in post_outputs for i in node.input):
            post_nodes.append(node)
            post_outputs.update(node.output)
        else:
            network_nodes.append(node)

    produced = {o for n in network_nodes for o in n.output} | {i.name for i in model.graph.input}
    wanted = [i for n in post_nodes for i in n.input if i in produced]
    wanted += [o.name for o in model.graph.output if o.name in produced]
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    outputs = []
    for name in dict.fromkeys(wanted):
        if name not in types:
            raise CalibrationError(f'cannot infer the type of tensor {name!r}: re-export the model')
        outputs.append(types[name])

    mask_assembly = [n for n in post_nodes if n.op_type == MASK_ASSEMBLY_OP]
    if mask_assembly:
        mask_inputs = tuple(mask_assembly[0].input[:2])
    else:
        mask_inputs = tuple(o.name for o in model.graph.output if o.name in RAW_MASK_OUTPUTS)

    used = {i for n in network_nodes for i in n.input}
    graph = helper.make_graph(
        network_nodes, model.graph.name + '_network', list(model.graph.input), outputs,
        [t for t in model.graph.initializer if t.name in used])
    network = helper.make_model(
        graph, opset_imports=[o for o in model.opset_import if o.domain in ('', 'ai.onnx')])
    network.ir_version = model.ir_version
    calls = inline_deform_convs(network, deform_conv)
    return SplitModel(network, tuple(post_nodes), mask_inputs, model, calls)


def join_postprocess(network: onnx.ModelProto, split: SplitModel, precision: str) -> onnx.ModelProto:
    """The converted `network` with the original post-processing re-attached.

    Outputs, function bodies, other domains' opset imports and metadata come from the original
    model; the metadata's precision becomes `precision`. The inlined deformable convolutions become
    calls again (calib/deform_conv.py). The function bodies are restamped with the network's default
    opset (modelopt raises it to 19+); the post-processing bodies use only ops whose signatures are
    the same across opsets 18..22 (plugins/onnx_builder.py), and the ONNX checker run on the result
    would name any op for which that is not so. DeformConv2d's body differs by opset (GridSample-20
    renamed its mode), so it is made afresh for that opset.
    """
    original = split.original
    network = collapse_deform_convs(network, split.deform_convs)
    graph = onnx.GraphProto()
    graph.CopyFrom(network.graph)
    graph.name = original.graph.name
    graph.node.extend(split.postprocess_nodes)
    del graph.output[:]
    graph.output.extend(original.graph.output)
    # Constants the network does not use but the post-processing or the outputs do (the raw
    # export's `priors` output is an initializer) come from the original.
    present = {t.name for t in graph.initializer}
    needed = {i for n in split.postprocess_nodes for i in n.input} | {o.name for o in original.graph.output}
    graph.initializer.extend(t for t in original.graph.initializer if t.name in needed - present)

    opsets = {o.domain: o.version for o in network.opset_import}
    for o in original.opset_import:
        opsets.setdefault(o.domain, o.version)
    default_opset = opsets.get('', opsets.get('ai.onnx'))
    functions = []
    for f in original.functions:
        if (f.domain, f.name) == (DOMAIN, DEFORM_CONV_OP):
            functions.append(make_deform_conv_function(default_opset))
            continue
        f = copy_proto(f)
        for o in f.opset_import:
            if o.domain in ('', 'ai.onnx'):
                o.version = default_opset
        functions.append(f)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], functions=functions)
    model.ir_version = max(network.ir_version, original.ir_version)
    meta = dataclasses.replace(model_metadata(original), precision=precision)
    attach_metadata(model, meta)
    return model


def _walk_back(model: onnx.ModelProto, tensors) -> tuple[list[str], list[str]]:
    """(names of the non-Conv nodes, names of the Conv nodes) reached walking back from `tensors`
    through non-Conv nodes, in the order reached."""
    producer = {o: n for n in model.graph.node for o in n.output}
    passed, convs, seen = [], [], set()
    queue = deque(tensors)
    while queue:
        node = producer.get(queue.popleft())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == 'Conv':
            convs.append(node.name)
        else:
            passed.append(node.name)
            queue.extend(node.input)
    return passed, convs


def producing_convs(model: onnx.ModelProto, tensors) -> list[str]:
    """Names of the Conv nodes nearest upstream of `tensors` (walking back through non-Conv nodes).

    For the mask inputs these are the ProtoNet's last convolution and the prediction head's
    mask-coefficient convolutions (one per FPN level): the layers kept in higher precision by
    `--keep-sensitive`.
    """
    return _walk_back(model, tensors)[1]


def kept_convolutions(split: SplitModel, *, keep_sensitive: bool, keep_offsets: bool) -> list[str]:
    """Names of the network's Conv nodes that stay FP32, in the order found.

    keep_sensitive: the ones producing the mask inputs (producing_convs).
    keep_offsets: YOLACT++'s offset/mask convolutions (`...conv2.conv_offset_mask`), the ones feeding
        each deformable convolution's offset and mask inputs: an error in an offset moves where the
        convolution samples, which changes the sample by the error times the feature's local slope.
    """
    kept = producing_convs(split.network, split.mask_inputs) if keep_sensitive else []
    if keep_offsets:
        kept += [c for c in producing_convs(split.network, offset_inputs(split.deform_convs)) if c not in kept]
    return kept


def preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute the first convolution's input from the images: the cast, the
    resize to the model size and the normalisation (yolact_torch/preprocess.py). They stay FP32 in the FP16
    and INT8 models: the resize's coordinates reach the input's size (thousands) and its weights
    need float32's 24 bits to give the original's pixels.
    """
    first_conv = next(n for n in model.graph.node if n.op_type == 'Conv')
    upstream = set(_walk_back(model, first_conv.input[:1])[0])
    return [n.name for n in model.graph.node if n.name in upstream]  # in graph order


def module_names(model: onnx.ModelProto, conv_names) -> tuple[str, ...]:
    """The PyTorch reference's module names (e.g. `yolact.proto_net.10`) of the Conv nodes named
    `conv_names`: each one's weight initializer without its `.weight` suffix, which the export
    keeps, unlike the node names (`node_conv2d_32`). Convolutions sharing a weight (the prediction
    head, applied at every FPN level) give one name; in the order of first appearance."""
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == 'Conv'}
    return tuple(dict.fromkeys(weights[name].removesuffix('.weight') for name in conv_names))


def convolution_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the activations the Conv nodes read (their first input): tensors INT8 needs a
    calibrated range for, whichever layout places the Q/DQ."""
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == 'Conv'))


def after_last_convolutions(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes with no convolution downstream: the heads' reshapes, activations and
    the box decoding. INT8 gains no speed there (TensorRT's INT8 kernels are the convolutions) and
    would round decoded box coordinates and scores to 8 bits, so they stay FP32.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_conv: set[str] = set()
    for node in reversed(model.graph.node):  # graph nodes are in topological order
        if any(c.op_type == 'Conv' or c.name in feeds_conv for o in node.output for c in consumers.get(o, ())):
            feeds_conv.add(node.name)
    return [n.name for n in model.graph.node if n.op_type != 'Conv' and n.name not in feeds_conv]
