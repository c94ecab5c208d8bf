"""python -m export.bench_artifacts: the two models `make bench` needs that no other command writes.

    checkpoint --config NAME --output FILE.pth [--seed N]
        a checkpoint of a config with seeded random weights, for timing a config no trained
        checkpoint exists for (yolact_resnet50): a network's speed does not depend on its weights.
    postprocess --raw build/NAME.raw.onnx [--checkpoint FILE.pth] [--output FILE]
        the post-processing alone (export.postprocess_nodes.postprocess_model: the nodes the export
        appends, Fast NMS and mask assembly, and for YOLACT++ the maskiou_net re-scoring and the sort
        by it, with the weights of the checkpoint the raw export came from) for the raw
        (--no-postprocess) export's shapes and config, written to build/NAME.postprocess.onnx
        (runtime.artifacts.postprocess_only_path); the benchmark's 'post' stage runs it in
        onnxruntime apart from the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import onnx

from runtime.artifacts import postprocess_only_path
from runtime.contract import RAW_OUTPUTS, metadata_from_props
from runtime.errors import ToolkitError


def random_checkpoint(config: str, path: str | Path, seed: int = 0) -> Path:
    """Write a checkpoint of `config` (a yolact_torch.config name) with weights seeded by `seed` to `path`,
    atomically, in the toolkit's own format (yolact_torch.checkpoint.save_checkpoint); returns the path."""
    import torch

    from yolact_torch.checkpoint import save_checkpoint
    from yolact_torch.config import get_config
    from yolact_torch.yolact import Yolact

    cfg = get_config(config)
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, Yolact(cfg).eval(), cfg)


def postprocess_only(raw_onnx: str | Path, checkpoint: str | Path | None = None) -> onnx.ModelProto:
    """The post-processing model for the raw export at `raw_onnx`: inputs decoded_boxes float32 [B, P, 4],
    class_scores float32 [B, P, K], coef float32 [B, P, M], proto float32 [B, Hp, Wp, M] with P, K, M,
    Hp, Wp the raw export's; thresholds, top-k, cross-class and max detections from its metadata (what
    it was exported with), the rest from its config. A YOLACT++ config re-scores with the maskiou_net
    of `checkpoint`, the checkpoint the raw export came from (needed then; for YOLACT only checked).
    ExportError for a file that is not a raw export of this toolkit, a YOLACT++ one without its
    checkpoint, or a checkpoint of another config."""
    from export.onnx_export import ExportError
    from export.postprocess_nodes import postprocess_model
    from yolact_torch.checkpoint import load_model
    from yolact_torch.config import get_config

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
    cfg = dataclasses.replace(get_config(meta.config), conf_thresh=meta.conf_thresh, nms_thresh=meta.nms_thresh,
                              nms_top_k=meta.top_k)
    maskiou_net = None
    if checkpoint is not None:
        model, checkpoint_cfg = load_model(checkpoint)
        if checkpoint_cfg.name != cfg.name:
            raise ExportError(f'{checkpoint} is a {checkpoint_cfg.name} checkpoint but {raw_onnx} was exported from '
                              f'{cfg.name}: give the checkpoint the raw export came from')
        maskiou_net = model.maskiou_net
    elif cfg.maskiou_net:
        raise ExportError(f'{meta.config} re-scores its detections with the maskiou_net of its checkpoint: give the '
                          f'checkpoint {raw_onnx} was exported from with --checkpoint')
    num_priors, mask_dim = outputs['coef'][1:3]
    proto_hw = tuple(outputs['proto'][1:3])
    return postprocess_model(cfg, num_priors=num_priors, mask_dim=mask_dim, proto_hw=proto_hw,
                             cross_class=meta.cross_class, max_dets=meta.max_dets, maskiou_net=maskiou_net)


def write_postprocess_only(raw_onnx: str | Path, output: str | Path | None = None,
                           checkpoint: str | Path | None = None) -> Path:
    """postprocess_only(raw_onnx, checkpoint) written atomically to `output` (default: beside the raw export)."""
    from export.onnx_export import save_model

    return save_model(postprocess_only(raw_onnx, checkpoint), output or postprocess_only_path(raw_onnx))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m export.bench_artifacts', description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    checkpoint = commands.add_parser('checkpoint', help='a random-weight checkpoint of a config')
    checkpoint.add_argument('--config', required=True, help='config name, e.g. yolact_resnet50')
    checkpoint.add_argument('--output', type=Path, required=True, help='checkpoint file to write (.pth)')
    checkpoint.add_argument('--seed', type=int, default=0, help='torch seed of the weights (default: %(default)s)')
    post = commands.add_parser('postprocess', help='the post-processing alone for a raw export')
    post.add_argument('--raw', type=Path, required=True, help='the raw export (python -m export --no-postprocess)')
    post.add_argument('--checkpoint', type=Path, default=None,
                      help='the checkpoint the raw export came from: YOLACT++ re-scores with its maskiou_net')
    post.add_argument('--output', type=Path, default=None,
                      help='ONNX file to write (default: NAME.postprocess.onnx beside NAME.raw.onnx)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == 'checkpoint':
            path = random_checkpoint(args.config, args.output, args.seed)
        else:
            path = write_postprocess_only(args.raw, args.output, args.checkpoint)
    except ToolkitError as e:  # ExportError, MetadataError, ConfigError, CheckpointError: the message names the fix
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
