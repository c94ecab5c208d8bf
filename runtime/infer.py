"""python -m runtime.infer: instance segmentation of image files and folders with any backend.

Writes one annotated image per input and, with --json, one COCO results file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from runtime.backends import BACKENDS, BackendError, open_backend
from runtime.draw import draw_detections
from runtime.errors import ToolkitError
from runtime.files import OutputError, write_atomic
from runtime.pipeline import IMAGE_SUFFIXES, ImageLoadError, batches, find_images, load_image, predict
from runtime.tensorrt.backend import prefer_engine
from runtime.video import is_video, run_videos

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / 'assets' / 'demo' / 'yolact_tiny_shapes.pth'
# The original's display code shows detections from 0.15-0.3 up; below that a trained model's
# output is mostly duplicates and background. COCO evaluation wants every detection: use 0.
DEFAULT_SCORE_THRESHOLD = 0.3
# Annotated images keep the input's format when OpenCV writes it, else become PNG.
_WRITABLE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'})


class InputImage(NamedTuple):
    path: Path  # the file to read
    output_name: Path  # where its annotated image goes, relative to --out
    image_id: int  # COCO image_id in --json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m runtime.infer',
        description='Detect and segment instances in images; write annotated images and COCO JSON.',
        epilog='Exit status: 0 when at least one image was processed (unreadable files, empty folders and '
               'missing paths are reported and skipped), 1 when nothing could be processed or the model '
               'cannot be loaded, 2 for bad arguments.')
    parser.add_argument('paths', nargs='+', type=Path, metavar='PATH',
                        help='image files, .mp4/.avi videos (written annotated to --out) and folders; folders '
                             'are searched recursively for images named '
                             f'{", ".join(sorted(IMAGE_SUFFIXES))} (any case)')
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL,
                        help='model file: .pth checkpoint (torch) or the formats of the other backends '
                             '(default: the demo model, assets/demo/yolact_tiny_shapes.pth)')
    parser.add_argument('--backend', default='auto', choices=['auto', *BACKENDS],
                        help='inference backend; auto picks it from the model file suffix (default: auto)')
    parser.add_argument('--config', default=None,
                        help='config name of a .pth checkpoint (default: from the checkpoint or its file name)')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THRESHOLD, metavar='T',
                        help='keep detections with score >= T, in the images and the JSON; 0 keeps every '
                             f'detection, as COCO evaluation needs (default: {DEFAULT_SCORE_THRESHOLD})')
    parser.add_argument('--cross-class', action='store_true',
                        help='Fast NMS across classes instead of per class (for models whose post-processing '
                             'is fixed at export, it must have been exported this way)')
    parser.add_argument('--out', type=Path, default=Path('out'), metavar='DIR',
                        help='folder for the annotated images, which keep the inputs\' names and sub-folders '
                             '(default: out/)')
    parser.add_argument('--json', type=Path, default=None, metavar='FILE',
                        help='also write every detection as one COCO results list (RLE masks); image_id is the '
                             'file name when all names are distinct numbers (as COCO\'s), else the 1-based '
                             'position in the sorted input list')
    parser.add_argument('--batch', type=int, default=1, metavar='N', help='images per inference call (default: 1)')
    parser.add_argument('--streams', type=int, default=1, metavar='N',
                        help='trt backend: execution contexts on their own CUDA streams, so consecutive batches '
                             'overlap upload, inference and download (video and benchmarks use them; default: 1)')
    parser.add_argument('--no-gpu-paste', dest='gpu_paste', action='store_false',
                        help='trt backend: paste masks into the images on the CPU instead of on the GPU before '
                             'download (the GPU is used by default when triton is installed)')
    return parser


def collect_inputs(paths: list[Path]) -> tuple[list[InputImage], list[str]]:
    """The image files under `paths` with their output names and image ids, and a problem message
    for each path that gives no file (missing path, folder without images)."""
    found: list[tuple[Path, Path]] = []
    problems = []
    for root in paths:
        try:
            files = find_images(root)
        except ImageLoadError as e:
            problems.append(str(e))
            continue
        if not files:
            problems.append(f'{root}: no image files in this folder')
        for file in files:
            # Files of a folder keep their place under the folder's name; a named file keeps its name.
            name = Path(root.name) / file.relative_to(root) if root.is_dir() else Path(file.name)
            if name.suffix.lower() not in _WRITABLE_SUFFIXES:
                name = name.with_name(name.name + '.png')
            found.append((file, name))
    stems = [file.stem for file, _ in found]
    numeric_ids = all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems) if stems else False
    taken: set[Path] = set()
    inputs = []
    for position, (file, name) in enumerate(found, start=1):
        unique, copy = name, 1
        while unique in taken:  # the same name from two arguments: number the later ones
            copy += 1
            unique = name.with_name(f'{name.stem}_{copy}{name.suffix}')
        taken.add(unique)
        inputs.append(InputImage(file, unique, int(file.stem) if numeric_ids else position))
    return inputs, problems


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode by the file suffix and write atomically."""
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f'OpenCV could not encode {path.suffix} for {path}')
    write_atomic(path, encoded.tobytes())


def backend_options(args: argparse.Namespace) -> dict:
    """The open_backend options the command line sets (only those given, so every backend takes them)."""
    options = {}
    if args.config is not None:
        options['config'] = args.config
    if args.cross_class:
        options['cross_class'] = True
    if args.streams != 1:
        options['streams'] = args.streams
    if not args.gpu_paste:
        options['gpu_paste'] = False
    return options


def run(args: argparse.Namespace) -> int:
    inputs, problems = collect_inputs(args.paths)
    for problem in problems:
        print(f'skipped: {problem}', file=sys.stderr)
    if not inputs:
        print('error: no images to process', file=sys.stderr)
        return 1
    if not args.model.is_file():
        print(f'error: model file not found: {args.model} (pass --model FILE)', file=sys.stderr)
        return 1
    try:
        backend = open_backend(args.model, args.backend, **backend_options(args))
    except ToolkitError as e:  # BackendError, CheckpointError, MetadataError: each names the fix
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'{args.model}: {backend.description}', file=sys.stderr)
    results, processed, skipped = [], 0, len(problems)
    with backend, tqdm(total=len(inputs), unit='image', desc='infer') as progress:
        meta = backend.metadata
        for group in batches(inputs, args.batch):
            loaded = []
            for item in group:
                try:
                    loaded.append((item, load_image(item.path)))
                except ImageLoadError as e:
                    skipped += 1
                    progress.write(f'skipped: {e}', file=sys.stderr)
            if loaded:
                detections = predict(backend, [image for _, image in loaded], score_threshold=args.score_thr)
                for (item, image), dets in zip(loaded, detections):
                    target = args.out / item.output_name
                    try:
                        write_image(target, draw_detections(image, dets, meta.class_names))
                    except OutputError as e:  # the output folder, not this input: stop
                        progress.close()
                        print(f'error: {e}', file=sys.stderr)
                        return 1
                    if args.json is not None:
                        results += dets.to_coco_json(item.image_id, str(item.path), meta.class_names,
                                                     meta.category_ids)
                    processed += 1
            progress.update(len(group))
    if processed == 0:
        print('error: none of the inputs could be processed', file=sys.stderr)
        return 1
    print(f'{processed} annotated image(s) in {args.out}/' + (f', {skipped} input(s) skipped' if skipped else ''))
    if args.json is not None:
        write_atomic(args.json, json.dumps(results).encode())
        print(f'{len(results)} detection(s) in {args.json}')
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        build_parser().error('--batch must be at least 1')
    if args.score_thr < 0:
        build_parser().error('--score-thr must be 0 or more')
    if args.streams < 1:
        build_parser().error('--streams must be at least 1')
    if args.backend == 'auto' and args.model == DEFAULT_MODEL:
        # A GPU host that ran `make engine` gets the engine of the default model.
        args.model = prefer_engine(args.model)
    # Video files (.mp4, .avi) become annotated videos in --out (runtime/video.py); the rest are images.
    videos = [p for p in args.paths if is_video(p)]
    if not videos:
        return run(args)
    status = run_videos(args, videos, backend_options(args))
    args.paths = [p for p in args.paths if not is_video(p)]
    return max(status, run(args)) if args.paths else status


if __name__ == '__main__':
    sys.exit(main())
