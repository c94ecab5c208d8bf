"""Graph cleanup after tracing: constant folding and dead-code removal until nothing changes, and
removal of what the tracer leaves behind (per-node stack traces and source paths)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

# Folding can expose more folding (a folded shape feeds a Reshape whose target becomes constant,
# and so on); a YOLACT graph settles in two or three passes, this bounds a pathological one.
_MAX_PASSES = 10


def _graph_size(model: onnx.ModelProto) -> tuple[int, int]:
    return len(model.graph.node), len(model.graph.initializer)


def fold_and_clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (shape arithmetic included) and drop unused nodes, inputs'
    dead branches and initialisers, repeating until the node and initialiser counts stop changing.
    The graph must not contain custom-domain nodes (run this before the post-processing ops are
    appended: onnxruntime evaluates the folded subgraphs)."""
    opset = {o.domain: o.version for o in model.opset_import}
    for _ in range(_MAX_PASSES):
        before = _graph_size(model)
        graph = gs.import_onnx(model)
        graph.fold_constants(fold_shapes=True).cleanup(remove_unused_graph_inputs=False).toposort()
        folded = gs.export_onnx(graph, do_type_check=True)
        # graphsurgeon rewrites these; keep the exporter's.
        folded.ir_version = model.ir_version
        del folded.opset_import[:]
        folded.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opset.items())
        model = folded
        if _graph_size(model) == before:
            break
    return model


def strip_trace_metadata(model: onnx.ModelProto) -> None:
    """Remove the tracer's per-node and per-value metadata (stack traces, module paths, FX node
    text): it names files of the machine that exported and is of no use to a deployed model."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ''
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
        value.doc_string = ''
    for tensor in model.graph.initializer:
        del tensor.metadata_props[:]
    del model.graph.metadata_props[:]
    del model.metadata_props[:]
    model.graph.doc_string = ''
    # Intermediate shapes are re-inferred by whoever needs them; stale ones only confuse.
    del model.graph.value_info[:]
