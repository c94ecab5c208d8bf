"""The ONNX model an engine is built from: read once, checked against the model contract, and
described for the builder and the sidecar.

The model's metadata is the `yolact.metadata` metadata_props entry: ModelMetadata.to_json(),
written by the exporter (export/onnx_export.py) and carried over by calibration (calib/graph.py).
Its precision must agree with the graph, because TensorRT takes precision from the graph itself
(strongly typed networks): Q/DQ nodes mean int8, float16 weights or casts mean fp16.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from engines.errors import EngineBuildError
from runtime.contract import metadata_from_props
from runtime.metadata import MetadataError, ModelMetadata

_REEXPORT = 're-create it with `make export` (and `make calib` for fp16/int8)'
_QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')


@dataclass(frozen=True)
class OnnxSource:
    """path: the file; data: its bytes; sha256: their checksum; metadata: the yolact.metadata record.
    input_name / input_batch: the image input and its batch dimension (None: dynamic).
    function_ops: 'domain::op' of the model-local functions the graph calls (FastNMS, MaskAssembly);
    TensorRT builds their bodies as standard layers unless a plugin of that name is registered.
    graph_precision: 'fp32' | 'fp16' | 'int8' as the graph's own types say."""

    path: Path
    data: bytes
    sha256: str
    metadata: ModelMetadata
    input_name: str
    input_batch: int | None
    function_ops: tuple[str, ...]
    graph_precision: str


def _all_nodes(model: onnx.ModelProto):
    yield from model.graph.node
    for function in model.functions:
        yield from function.node


def graph_precision(model: onnx.ModelProto) -> str:
    """'int8' when the graph quantizes (Q/DQ nodes), else 'fp16' when it holds float16 weights or
    casts to float16, else 'fp32'."""
    nodes = list(_all_nodes(model))
    if any(n.op_type in _QDQ_OPS and n.domain in ('', 'ai.onnx') for n in nodes):
        return 'int8'
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in model.graph.initializer):
        return 'fp16'
    for n in nodes:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == 'Cast' and 'to' in attrs and attrs['to'].i == half:
            return 'fp16'
        if n.op_type == 'Constant' and 'value' in attrs and attrs['value'].t.data_type == half:
            return 'fp16'
    return 'fp32'


def _uint8_activations(model: onnx.ModelProto) -> bool:
    """Whether a QuantizeLinear quantises to uint8 (its zero point's type): calib's onnxruntime layout."""
    zero_points = {t.name: t.data_type for t in model.graph.initializer}
    return any(n.op_type == 'QuantizeLinear' and len(n.input) > 2 and zero_points.get(n.input[2]) == onnx.TensorProto.UINT8
               for n in model.graph.node)


def _read_metadata(model: onnx.ModelProto, source: str) -> ModelMetadata:
    try:
        return metadata_from_props({p.key: p.value for p in model.metadata_props}, source, fix=_REEXPORT)
    except MetadataError as e:  # the builder's callers catch EngineBuildError
        raise EngineBuildError(str(e)) from None


def _check_input(model: onnx.ModelProto, source: str) -> tuple[str, int | None]:
    """The single image input must be uint8 [B, H, W, 3] with symbolic H and W (images at their own
    size, resized inside the graph); returns its name and fixed batch size (None when the batch
    dimension is symbolic)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise EngineBuildError(f'{source} has {len(inputs)} inputs ({", ".join(v.name for v in inputs)}); a YOLACT '
                               f'model has one, uint8 images [B, H, W, 3]; {_REEXPORT}')
    value = inputs[0]
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField('dim_value') else None for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
    if tensor.elem_type != onnx.TensorProto.UINT8 or dims[1:] != [None, None, 3]:
        shown = ['?' if d is None else d for d in dims]
        raise EngineBuildError(f'{source}: input {value.name!r} is {dtype} {shown}, the model contract is '
                               f'uint8 [B, H, W, 3] with any H and W (BGR images at their own size, resized '
                               f'inside the graph); {_REEXPORT}')
    return value.name, dims[0]


def load_onnx(path: str | os.PathLike) -> OnnxSource:
    """Read and check the ONNX file at `path`. EngineBuildError names the problem and the fix when
    the file is missing, truncated or corrupted, fails the ONNX checker, has no or malformed
    metadata, breaks the input contract, or its metadata's precision disagrees with its graph."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EngineBuildError(f'ONNX model {source} does not exist; {_REEXPORT}') from None
    except IsADirectoryError:
        raise EngineBuildError(f'{source} is a folder: give the ONNX file, e.g. {path / "model.onnx"}') from None
    try:
        model = onnx.load_model_from_string(data)
    except DecodeError as e:
        raise EngineBuildError(f'{source} is not a readable ONNX model ({len(data)} bytes; truncated or corrupted: '
                               f'{e}); {_REEXPORT}') from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first_line = str(e).strip().splitlines()[0]
        raise EngineBuildError(f'{source} fails the ONNX checker (truncated or corrupted?): {first_line}; '
                               f'{_REEXPORT}') from None
    metadata = _read_metadata(model, source)
    input_name, input_batch = _check_input(model, source)
    precision = graph_precision(model)
    if precision != metadata.precision:
        raise EngineBuildError(f'{source}: its metadata says {metadata.precision} but its graph is {precision} '
                               f'(TensorRT builds what the graph says); re-create it with `make calib` / `make export`')
    if precision == 'int8' and _uint8_activations(model):
        raise EngineBuildError(f'{source} is an INT8 model laid out for onnxruntime (uint8 activations), which '
                               f'TensorRT does not take: build from the TensorRT layout, `python -m calib --precision '
                               f'int8` without --layout onnxruntime (`make calib`)')
    local = {(f.domain, f.name) for f in model.functions}
    function_ops = tuple(dict.fromkeys(f'{n.domain}::{n.op_type}' for n in model.graph.node
                                       if (n.domain, n.op_type) in local))
    return OnnxSource(path=path, data=data, sha256=hashlib.sha256(data).hexdigest(), metadata=metadata,
                      input_name=input_name, input_batch=input_batch, function_ops=function_ops,
                      graph_precision=precision)
