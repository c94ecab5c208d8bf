"""A small builder for ONNX FunctionProtos: keeps the function bodies readable as a sequence of ops.

Only the function bodies in plugins/*/onnx_function.py use it.
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from runtime.errors import ToolkitError

# Opsets whose signatures for every op the bodies use are the same (ReduceMax/ReduceSum take axes
# as an input from opset 18 on; nothing the bodies use changes through opset 22).
SUPPORTED_OPSETS = range(18, 23)


class FunctionOpsetError(ToolkitError, ValueError):
    """An opset the function bodies are not written for."""


def check_opset(opset: int) -> int:
    if int(opset) not in SUPPORTED_OPSETS:
        raise FunctionOpsetError(
            f'the yolact post-processing functions are written for ONNX opsets '
            f'{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}; got opset {opset}: export with one of those')
    return int(opset)


class FunctionBuilder:
    """Collects nodes with generated, unique value names; `build()` returns the FunctionProto.

    Internal value names start with the function's name (`FastNMS_min_68`): a parser that inlines
    several functions into one graph (TensorRT names each node after its first output) then sees no
    name twice.
    """

    def __init__(self, domain: str, name: str, inputs: list[str], outputs: list[str],
                 attributes: list[str], opset: int, doc: str):
        self.domain, self.name = domain, name
        self.inputs, self.outputs, self.attributes = inputs, outputs, attributes
        self.opset, self.doc = check_opset(opset), doc
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs):
        """Append one node; returns its output name (or a tuple of names when it has several)."""
        if isinstance(outputs, int):
            names = []
            for _ in range(outputs):
                self._count += 1
                names.append(f'{self.name}_{op_type.lower()}_{self._count}')
        else:
            names = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if len(names) == 1 else tuple(names)

    def const(self, value, dtype=TensorProto.INT64) -> str:
        """A constant tensor (a python scalar gives a 0-d tensor, a list a 1-d one)."""
        dims = [] if not isinstance(value, (list, tuple)) else [len(value)]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        return self.op('Constant', value=helper.make_tensor('value', dtype, dims, values))

    def attr_scalar(self, attribute: str, attr_type: int) -> str:
        """The function attribute `attribute` as a 0-d tensor (float32 for FLOAT, int64 for INT)."""
        key = {AttributeProto.FLOAT: 'value_float', AttributeProto.INT: 'value_int'}[attr_type]
        name = f'{self.name}_attr_{attribute}'
        node = helper.make_node('Constant', [], [name])
        ref = helper.make_attribute_ref(key, attr_type)
        ref.ref_attr_name = attribute
        node.attribute.append(ref)
        self.nodes.append(node)
        return name

    def build(self) -> onnx.FunctionProto:
        return helper.make_function(
            self.domain, self.name, self.inputs, self.outputs, self.nodes,
            opset_imports=[helper.make_opsetid('', self.opset)], attributes=self.attributes,
            doc_string=self.doc)
