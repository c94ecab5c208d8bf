"""python -m export.postprocess_only --raw build/NAME.raw.onnx: Fast NMS and mask assembly alone, as
an ONNX model for the raw (--no-postprocess) export's shapes and config, written to
build/NAME.postprocess.onnx (runtime.artifacts.postprocess_only_path). The benchmark's 'post' stage
runs it in onnxruntime apart from the network (export.postprocess_nodes.postprocess_model)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from export.onnx_export import ExportError, save_model
from export.postprocess_nodes import postprocess_model
from model.config import get_config
from runtime.artifacts import postprocess_only_path
from runtime.contract import RAW_OUTPUTS, metadata_from_props
from runtime.errors import ToolkitError


def postprocess_only(raw_onnx: str | Path) -> onnx.ModelProto:
    """The post-processing model for the raw export at `raw_onnx`: inputs decoded_boxes float32 [B, P, 4],
    class_scores float32 [B, P, K], coef float32 [B, P, M], proto float32 [B, Hp, Wp, M] with P, K, M,
    Hp, Wp the raw export's; thresholds from its config, cross-class and max detections from its
    metadata. ExportError for a file that is not a raw export of this toolkit."""
    raw_onnx = Path(raw_onnx)
    if not raw_onnx.is_file():
        raise ExportError(f'{raw_onnx} does not exist: export the checkpoint with python -m export --no-postprocess')
    raw = onnx.load(raw_onnx, load_external_data=False)
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in raw.graph.output}
    if list(outputs) != list(RAW_OUTPUTS):
        raise ExportError(f'{raw_onnx} has outputs {list(outputs)}, not the raw head {list(RAW_OUTPUTS)}: give the '
                          'export of python -m export --no-postprocess')
    meta = metadata_from_props({p.key: p.value for p in raw.metadata_props}, str(raw_onnx),
                               fix='export the checkpoint with python -m export --no-postprocess')
    num_priors, mask_dim = outputs['coef'][1:3]
    proto_hw = tuple(outputs['proto'][1:3])
    return postprocess_model(get_config(meta.config), num_priors=num_priors, mask_dim=mask_dim, proto_hw=proto_hw,
                             cross_class=meta.cross_class, max_dets=meta.max_dets)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m export.postprocess_only', description=__doc__.split('\n\n')[0])
    parser.add_argument('--raw', type=Path, required=True, help='the raw export (python -m export --no-postprocess)')
    parser.add_argument('--output', type=Path, default=None,
                        help='ONNX file to write (default: NAME.postprocess.onnx beside NAME.raw.onnx)')
    args = parser.parse_args(argv)
    try:
        path = save_model(postprocess_only(args.raw), args.output or postprocess_only_path(args.raw))
    except ToolkitError as e:  # ExportError, MetadataError, ConfigError: the message names the fix
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
