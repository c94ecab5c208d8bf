"""python -m calib: convert an exported FP32 YOLACT ONNX model to FP16 or INT8.

TensorRT 10+ reads precision from the ONNX (strongly typed), so the deployable FP16/INT8 models
are made here and `make engine` builds whatever it is given.
"""

from __future__ import annotations

import argparse
import logging
import sys

from calib.convert import CACHE_FOLDER, DEFAULT_COUNT, TARGET_PRECISIONS, convert_model, quiet_modelopt
from calib.graph import KEEP_OFFSETS
from calib.quantize import CALIBRATION_METHODS, LAYOUTS
from runtime.errors import ToolkitError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m calib', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='the FP32 ONNX model from `python -m export`')
    parser.add_argument('--precision', required=True, choices=TARGET_PRECISIONS,
                        help='fp16: half-precision network; int8: Q/DQ from calibration')
    parser.add_argument('--images', required=True,
                        help='calibration images: a folder of images or a COCO instances JSON; '
                             'use images like the ones the model will see (e.g. the training set)')
    parser.add_argument('--count', type=int, default=None,
                        help=f'number of calibration images, spread over the set (default: '
                             f'{DEFAULT_COUNT["int8"]} for int8, {DEFAULT_COUNT["fp16"]} for fp16, or all if fewer)')
    parser.add_argument('--method', choices=tuple(CALIBRATION_METHODS), default='entropy',
                        help='int8 activation range: entropy (KL divergence, as TensorRT), max, or the '
                             '99.999th percentile (default: %(default)s)')
    parser.add_argument('--keep-sensitive', action='store_true',
                        help='keep the prototype and mask-coefficient convolutions in FP32 '
                             '(`python -m calib.report` shows what that buys in mask AP)')
    parser.add_argument('--keep-offsets', action=argparse.BooleanOptionalAction, default=KEEP_OFFSETS,
                        help='YOLACT++: keep the offset/mask convolutions in front of each deformable convolution '
                             '(...conv2.conv_offset_mask) in FP32 (default: %(default)s; README, "Precision and '
                             'engines", has the errors either way); no effect on YOLACT')
    parser.add_argument('--layout', choices=LAYOUTS, default=None,
                        help='int8 only: where the Q/DQ go. tensorrt (default): for `make engine`, placed by '
                             'modelopt for TensorRT; onnxruntime: for onnxruntime on a CPU (uint8 activations; its '
                             'convolutions run as integer QLinearConv, the ones producing the outputs in FP32), '
                             'written as <name>.int8-ort.onnx; TensorRT cannot build it')
    parser.add_argument('--output', default=None, help='output file (default: <name>.<precision>.onnx beside the model)')
    parser.add_argument('--cache-dir', default=None,
                        help=f'int8 calibration cache folder (default: {CACHE_FOLDER} beside the output); '
                             'the same model, images, count and method reuse the cached ranges')
    parser.add_argument('--verbose', action='store_true', help="show modelopt's log")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    quiet_modelopt(not args.verbose)
    try:
        result = convert_model(
            args.model, args.precision, args.images, count=args.count, method=args.method,
            keep_sensitive=args.keep_sensitive, keep_offsets=args.keep_offsets, output=args.output,
            cache_dir=args.cache_dir, layout=args.layout)
    except ToolkitError as e:  # CalibrationError, DatasetError, MetadataError
        print(f'error: {e}', file=sys.stderr)
        return 1
    if result.cache is not None:
        print(f'calibration cache: {result.cache} ({"reused" if result.cache_hit else "written"})')
    if result.kept_fp32:
        print(f'kept in FP32 ({result.convolutions_kept} convolutions): {", ".join(result.kept_fp32)}')
    print(f'wrote {result.output} ({args.precision}, {result.images} calibration images)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
