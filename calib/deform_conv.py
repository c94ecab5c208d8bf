"""YOLACT++'s deformable convolutions through precision conversion: inline, convert, collapse.

A `yolact::DeformConv2d` call sits inside the network (the backbone's conv2 of stages 2-4), and
modelopt's passes drop model-local functions, so the call cannot simply be handed to them. Nor can
the network be cut there: the part after the first call would escape conversion. So each call is
inlined into the network before conversion, its body's nodes named `<call name>/dcn/<i>` and its
internal tensors `<call name>/dcn/<tensor>`; the converters exclude those nodes (they stay FP32, the
precision of the function body and of the TensorRT plugin); afterwards each call's body nodes are
collapsed back into the original call node, which reads whatever tensors now cross the boundary
(a Cast autocast put there, a DequantizeLinear output), so TensorRT's parser maps it to the plugin
and onnxruntime runs the body as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

from plugins import DEFORM_CONV_OP, DOMAIN

BODY_MARK = '/dcn/'


class CollapseError(RuntimeError):
    """A converter rewrote an inlined body so that its call cannot be restored (a bug to report)."""


def is_deform_conv(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == DEFORM_CONV_OP


@dataclass(frozen=True)
class InlinedCall:
    """One inlined `yolact::DeformConv2d` call: `node`, the original call node (its inputs the FP32
    network's x, offset, mask, weight, bias; its output y). Its body's nodes are named `prefix<i>`."""

    node: onnx.NodeProto

    @property
    def prefix(self) -> str:
        return self.node.name + BODY_MARK


def inline_deform_convs(network: onnx.ModelProto, function: onnx.FunctionProto | None) -> tuple[InlinedCall, ...]:
    """Replace each `yolact::DeformConv2d` call in `network` (in place) by `function`'s body (None
    only where there is no call). Every call node must have a unique name (calib.graph names them).
    Returns the calls, in graph order."""
    inlined, nodes = [], []
    for node in network.graph.node:
        if not is_deform_conv(node):
            nodes.append(node)
            continue
        call = InlinedCall(copy_proto(node))
        actual = {**dict(zip(function.input, node.input)), **dict(zip(function.output, node.output))}
        attributes = {a.name: a for a in node.attribute}
        for i, body_node in enumerate(function.node):
            copy = copy_proto(body_node)
            copy.name = f'{call.prefix}{i}'
            copy.input[:] = [actual.get(name, call.prefix + name) if name else name for name in copy.input]
            copy.output[:] = [actual.get(name, call.prefix + name) for name in copy.output]
            _bind_attributes(copy, attributes)
            nodes.append(copy)
        inlined.append(call)
    del network.graph.node[:]
    network.graph.node.extend(nodes)
    return tuple(inlined)


def _bind_attributes(node: onnx.NodeProto, values: dict[str, onnx.AttributeProto]) -> None:
    """Replace `node`'s references to the function's attributes by the call's values."""
    bound = []
    for attribute in node.attribute:
        if attribute.ref_attr_name:
            value = onnx.AttributeProto()
            value.CopyFrom(values[attribute.ref_attr_name])
            value.name = attribute.name
            bound.append(value)
        else:
            bound.append(attribute)
    del node.attribute[:]
    node.attribute.extend(bound)


def body_nodes(network: onnx.ModelProto, calls: tuple[InlinedCall, ...]) -> list[str]:
    """Names of `network`'s nodes that came from the inlined calls' bodies, in graph order."""
    prefixes = tuple(c.prefix for c in calls)
    return [n.name for n in network.graph.node if prefixes and n.name.startswith(prefixes)]


def internal_nodes(network: onnx.ModelProto, calls: tuple[InlinedCall, ...]) -> set[str]:
    """Names of the body nodes whose outputs only the body reads: every one but the node writing y.
    Their tensors need no INT8 range (nothing around them is quantised)."""
    prefixes = tuple(c.prefix for c in calls)
    return {n.name for n in network.graph.node
            if prefixes and n.name.startswith(prefixes) and all(o.startswith(prefixes) for o in n.output)}


def offset_inputs(calls: tuple[InlinedCall, ...]) -> list[str]:
    """Names of the tensors the calls read as offsets and masks (inputs 1 and 2), in the FP32 network."""
    return [name for c in calls for name in c.node.input[1:3]]


def collapse_deform_convs(network: onnx.ModelProto, calls: tuple[InlinedCall, ...]) -> onnx.ModelProto:
    """A copy of the converted `network` with each call's body nodes replaced by the call node.

    The call reads, for each formal input, the tensor that now crosses into the body in its place:
    the original tensor, or one derived from it by Casts and Q/DQ nodes the conversion put in
    between (autocast also drops the body's own leading Casts where it put one of its own). The
    plugin takes one float type for all five inputs, so an input that is not FP32 gets a Cast to
    FP32 in front; where the body's output had become FP16 (its CastLike followed such an input),
    a Cast back follows, so the network downstream reads the type it was converted for.
    """
    model = copy_proto(network)
    if not calls:
        return model
    graph = model.graph
    types = _elem_types(model)
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[str]] = {o.name: [''] for o in graph.output}  # tensor -> names of the nodes reading it
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n.name)
    prefixes = tuple(c.prefix for c in calls)
    replacement: dict[str, list[onnx.NodeProto]] = {}  # the last body node's name -> nodes in its place
    for call in calls:
        body = [n for n in graph.node if n.name.startswith(call.prefix)]
        produced = {o for n in body for o in n.output}
        crossing = dict.fromkeys(i for n in body for i in n.input if i and i not in produced)
        # What anything but this body reads (another call's body too, or the graph's outputs).
        outputs = [o for n in body for o in n.output
                   if any(not reader.startswith(call.prefix) for reader in readers.get(o, ()))]
        origin = {name: position for position, name in enumerate(call.node.input)}
        inputs: dict[int, list[str]] = {}
        for tensor in crossing:
            source = _source(tensor, producer, origin)
            if source is not None:
                inputs.setdefault(origin[source], []).append(tensor)
        if sorted(inputs) != list(range(len(call.node.input))) or len(outputs) != 1:
            raise CollapseError(f'the conversion changed the inlined {call.node.name} beyond recognition (inputs '
                                f'{inputs}, outputs {outputs})')
        node = copy_proto(call.node)
        new_nodes = []
        for formal, candidates in sorted(inputs.items()):
            # The FP32 one where autocast gave the body a cast and also left it the original.
            tensor = min(candidates, key=lambda t: types.get(t) != TensorProto.FLOAT)
            if types.get(tensor) != TensorProto.FLOAT:
                cast = f'{call.node.name}/input{formal}_fp32'
                new_nodes.append(helper.make_node('Cast', [tensor], [cast], name=cast, to=TensorProto.FLOAT))
                tensor = cast
            node.input[formal] = tensor
        output, output_type = outputs[0], types.get(outputs[0])
        if output_type != TensorProto.FLOAT:
            node.output[0] = f'{call.node.name}/output_fp32'
            new_nodes += [node, helper.make_node('Cast', [node.output[0]], [output], name=f'{call.node.name}/output',
                                                 to=output_type)]
        else:
            node.output[0] = output
            new_nodes.append(node)
        replacement[body[-1].name] = new_nodes
    nodes = []
    for n in graph.node:
        if n.name in replacement:
            nodes += replacement[n.name]
        elif not n.name.startswith(prefixes):
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    # Shape inference's records of the body's internal tensors, and initializers only the body read.
    kept_info = [v for v in graph.value_info if not v.name.startswith(prefixes)]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    return model


def _source(tensor: str, producer: dict[str, onnx.NodeProto], origin: dict[str, int]) -> str | None:
    """The call input `tensor` derives from through Cast / Q / DQ nodes, or None (a constant)."""
    while tensor not in origin:
        node = producer.get(tensor)
        if node is None or node.op_type not in ('Cast', 'QuantizeLinear', 'DequantizeLinear'):
            return None
        tensor = node.input[0]
    return tensor


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of each typed tensor of `model` (inputs, initializers, shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def copy_proto(proto):
    """A deep copy of an onnx message (model, node, function)."""
    out = type(proto)()
    out.CopyFrom(proto)
    return out
