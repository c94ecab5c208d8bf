"""python -m runtime.client: instance segmentation of image files and folders by a model served with
python -m runtime.serve (Triton, over HTTP or gRPC). Writes the same annotated images and COCO JSON
as runtime.infer does with the model file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.errors import ToolkitError
from runtime.images import DEFAULT_MAX_PIXELS
from runtime.infer import (DEFAULT_SCORE_THRESHOLD, annotate, check_outputs, collect_inputs,
                           report_inputs)
from runtime.pipeline import IMAGE_SUFFIXES
from runtime.serve.client import ServedModel


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m runtime.client',
        description='Detect and segment instances in images with a served model; write annotated images and '
                    'COCO JSON, as python -m runtime.infer does.',
        epilog='Exit status: 0 when at least one image was processed, 1 when nothing could be processed or the '
               'server cannot be used (it refused a request, or stopped answering), 2 for bad arguments.')
    parser.add_argument('url', metavar='URL',
                        help='the served model: http://HOST:PORT/yolact or grpc://HOST:PORT/yolact')
    parser.add_argument('paths', nargs='+', type=Path, metavar='IMAGE',
                        help=f'image files and folders (searched recursively for {", ".join(sorted(IMAGE_SUFFIXES))})')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THRESHOLD, metavar='T',
                        help=f'keep detections with score >= T (0..1; default: {DEFAULT_SCORE_THRESHOLD})')
    parser.add_argument('--out', type=Path, default=Path('out'), metavar='DIR',
                        help='folder for the annotated images (default: out/)')
    parser.add_argument('--json', type=Path, default=None, metavar='FILE',
                        help='also write every detection as one COCO results list (RLE masks)')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS, metavar='N',
                        help=f'skip images of more pixels than N (default: {DEFAULT_MAX_PIXELS}; checked from the '
                             'PNG/JPEG header before decoding)')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        build_parser().error('--score-thr must be in 0..1')
    args.batch = 1  # one request per image: the server batches concurrent requests itself
    try:
        inputs, problems = collect_inputs(args.paths)
        skipped = report_inputs(inputs, problems)
        if not inputs:
            return 1
        check_outputs(args, [item.path for item in inputs] + args.paths,
                      [(args.out / item.output_name, '--out') for item in inputs]
                      + ([(args.json, '--json')] if args.json is not None else []))
        with ServedModel(args.url) as served:
            print(served.description, file=sys.stderr)
            return annotate(args, inputs, skipped, served.metadata,
                            lambda images: served.predict(images, score_threshold=args.score_thr))
    except ToolkitError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
