"""python -m export: write a YOLACT checkpoint as an ONNX model (see export/onnx_export.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime.artifacts import export_path
from runtime.assets import DEMO_MODEL
from runtime.checkpoint_flags import add_checkpoint_flags, checkpoint_flags
from runtime.errors import ToolkitError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m export',
        description='Export a YOLACT checkpoint to ONNX: uint8 BGR NHWC images in (dynamic batch), '
                    'Fast NMS and mask assembly inside the graph as the yolact::FastNMS and '
                    'yolact::MaskAssembly functions; outputs num_dets, boxes, scores, classes, masks.')
    parser.add_argument('--checkpoint', type=Path, default=DEMO_MODEL,
                        help='official YOLACT .pth or a checkpoint trained with this toolkit '
                             '(default: %(default)s, the demo model)')
    parser.add_argument('--config', default=None,
                        help='config name (default: the one stored in the checkpoint, or for official '
                             'files the one its name implies, e.g. yolact_base_54_800000.pth -> yolact_base)')
    parser.add_argument('--output', type=Path, default=None,
                        help='ONNX file to write (default: build/<checkpoint name>.onnx; '
                             '.raw.onnx with --no-postprocess)')
    parser.add_argument('--no-postprocess', action='store_true',
                        help='export the raw head instead (outputs loc, conf (softmax), coef, proto, '
                             'priors), for parity checks and debugging')
    parser.add_argument('--cross-class', action='store_true',
                        help='Fast NMS across classes instead of per class')
    parser.add_argument('--max-dets', type=int, default=None,
                        help='detections per image kept by Fast NMS (default: the config\'s, 100)')
    add_checkpoint_flags(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    postprocess = not args.no_postprocess
    output = args.output or export_path(args.checkpoint, postprocess=postprocess, cross_class=args.cross_class)
    # Imported here so --help answers without loading torch.
    from export.onnx_export import export_onnx
    from yolact_torch.checkpoint import load_model

    if not args.checkpoint.is_file():
        print(f'error: checkpoint {args.checkpoint} not found: give --checkpoint FILE', file=sys.stderr)
        return 2
    try:
        model, cfg = load_model(args.checkpoint, args.config, **checkpoint_flags(args))
        start = time.perf_counter()
        print(f'exporting {args.checkpoint} ({cfg.name}, {cfg.input_size[0]}x{cfg.input_size[1]}, '
              f'{len(cfg.class_names)} classes: {", ".join(cfg.class_names)}'
              f'{", no post-processing" if not postprocess else ""}) ...', file=sys.stderr)
        path = export_onnx(model, cfg, output, postprocess=postprocess, cross_class=args.cross_class,
                           max_dets=args.max_dets)
    except ToolkitError as e:  # ExportError, CheckpointError, MetadataError: messages name the fix
        print(f'error: {e}', file=sys.stderr)
        return 2
    size_mb = path.stat().st_size / 1e6
    print(f'wrote {path} ({size_mb:.1f} MB) in {time.perf_counter() - start:.0f} s', file=sys.stderr)
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
