"""python -m runtime.infer: instance segmentation of image files and folders with any backend.

Writes one annotated image per input and, with --json, one COCO results file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from runtime.api import DEFAULT_SCORE_THRESHOLD
from runtime.assets import DEMO_MODEL
from runtime.backends import BACKENDS, open_backend
from runtime.checkpoint_flags import add_checkpoint_flags, checkpoint_flags
from runtime.detections import Detections
from runtime.draw import draw_detections
from runtime.errors import ToolkitError
from runtime.files import OutputError, check_writable, write_atomic
from runtime.images import DEFAULT_MAX_PIXELS, write_image
from runtime.metadata import ModelMetadata
from runtime.pipeline import IMAGE_SUFFIXES, ImageLoadError, batches, find_images, load_image, predict
from runtime.tensorrt.backend import prefer_engine
from runtime.video import is_video, run_videos, video_target

DEFAULT_MODEL = DEMO_MODEL
# Annotated images keep the input's format when OpenCV writes it, else become PNG.
_WRITABLE_SUFFIXES = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'})


class InputImage(NamedTuple):
    path: Path  # the file to read
    output_name: Path  # where its annotated image goes, relative to --out
    image_id: int  # COCO image_id in --json


class InputError(ToolkitError, ValueError):
    """Inputs and outputs that do not fit together (an output that would overwrite an input, a COCO
    JSON that is not one); the message names the paths and the fix."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m runtime.infer',
        description='Detect and segment instances in images; write annotated images and COCO JSON.',
        epilog='Exit status: 0 when at least one image was processed (unreadable files, empty folders and '
               'missing paths are reported and skipped), 1 when nothing could be processed or the model '
               'cannot be loaded, 2 for bad arguments.')
    parser.add_argument('paths', nargs='+', type=Path, metavar='PATH',
                        help='image files, .mp4/.avi videos (written annotated to --out), folders, or one COCO '
                             'instances .json (its images, found relative to its folder, with its image ids); '
                             'folders are searched recursively for images named '
                             f'{", ".join(sorted(IMAGE_SUFFIXES))} (any case)')
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL,
                        help='model file: .pth checkpoint (torch) or the formats of the other backends '
                             '(default: the demo model shipped with the package, '
                             'runtime/assets/yolact_tiny_shapes.pth)')
    parser.add_argument('--backend', default='auto', choices=['auto', *BACKENDS],
                        help='inference backend; auto picks it from the model file suffix (default: auto)')
    parser.add_argument('--config', default=None,
                        help='config name of a .pth checkpoint (default: from the checkpoint or its file name)')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THRESHOLD, metavar='T',
                        help='keep detections with score >= T (0..1), in the images and the JSON; 0 keeps every '
                             f'detection, as COCO evaluation needs (default: {DEFAULT_SCORE_THRESHOLD})')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS, metavar='N',
                        help='refuse images of more than N pixels, from their header where it says (PNG, JPEG), '
                             f'so a small crafted file cannot take the memory (default: {DEFAULT_MAX_PIXELS})')
    parser.add_argument('--cross-class', action='store_true',
                        help='Fast NMS across classes instead of per class (for models whose post-processing '
                             'is fixed at export, it must have been exported this way)')
    parser.add_argument('--out', type=Path, default=Path('out'), metavar='DIR',
                        help='folder for the annotated images, which keep the inputs\' names and sub-folders (a '
                             'folder\'s images go under its own name); never over an input (default: out/)')
    parser.add_argument('--json', type=Path, default=None, metavar='FILE',
                        help='also write every image\'s detections as one COCO results list (RLE masks); image_id '
                             'is the COCO JSON\'s id for its images, else the file name when all names are '
                             'distinct numbers (as COCO\'s), else the 1-based position in the sorted input list. '
                             'Videos are not in it. An earlier FILE is removed when the run starts')
    parser.add_argument('--batch', type=int, default=1, metavar='N', help='images per inference call (default: 1)')
    parser.add_argument('--streams', type=int, default=1, metavar='N',
                        help='trt backend: execution contexts on their own CUDA streams, so consecutive batches '
                             'overlap upload, inference and download (video and benchmarks use them; default: 1)')
    parser.add_argument('--no-gpu-paste', dest='gpu_paste', action='store_false',
                        help='trt backend: paste masks into the images on the CPU instead of on the GPU before '
                             'download (the GPU is used by default when triton is installed)')
    add_checkpoint_flags(parser)
    return parser


def read_coco_images(path: Path) -> list[tuple[Path, int]]:
    """(image file, image id) of each entry of a COCO instances JSON's 'images' list; file_name is
    relative to the JSON's folder, as yolact_torch.data.coco reads it. InputError when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f'{path}: cannot read it as a COCO instances JSON ({e})') from None
    entries = data.get('images') if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get('file_name'), str) and isinstance(e.get('id'), int)
            for e in entries):
        raise InputError(f'{path}: not a COCO instances JSON (it needs an "images" list of entries with an '
                         'integer "id" and a "file_name"): give image files, folders or such a JSON')
    return [(path.parent / entry['file_name'], entry['id']) for entry in entries]


def collect_inputs(paths: list[Path]) -> tuple[list[InputImage], list[str]]:
    """The image files under `paths` with their output names and image ids, and a problem message
    for each path that gives no file (missing path, folder without images, unlistable sub-folder).

    A COCO instances JSON (.json) must be the only path: its images keep its ids, and go under the
    JSON's name. InputError otherwise."""
    found: list[tuple[Path, Path]] = []
    coco_ids: list[int] = []
    problems = []
    coco = any(p.suffix.lower() == '.json' for p in paths)
    if coco:
        if len(paths) != 1:
            raise InputError('a COCO JSON must be the only PATH (its image ids would mix with the others\'): '
                             'run it on its own')
        for file, image_id in read_coco_images(paths[0]):
            relative = file.relative_to(paths[0].parent) if file.is_relative_to(paths[0].parent) else Path(file.name)
            if '..' in relative.parts:  # a file_name out of the JSON's folder: keep only its name
                relative = Path(relative.name)
            found.append((file, Path(paths[0].stem) / relative))
            coco_ids.append(image_id)
        if not found:
            problems.append(f'{paths[0]}: its "images" list is empty')
    for root in [] if coco else paths:
        try:
            files = find_images(root, problems)
        except ImageLoadError as e:
            problems.append(str(e))
            continue
        if not files:
            problems.append(f'{root}: no image files in this folder')
        for file in files:
            # Files of a folder keep their place under the folder's own name (resolved: '..' names none);
            # a named file keeps its name.
            name = Path(root.resolve().name) / file.relative_to(root) if root.is_dir() else Path(file.name)
            found.append((file, name))
    for i, (file, name) in enumerate(found):
        if name.suffix.lower() not in _WRITABLE_SUFFIXES:
            found[i] = (file, name.with_name(name.name + '.png'))
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
        image_id = coco_ids[position - 1] if coco else int(file.stem) if numeric_ids else position
        inputs.append(InputImage(file, unique, image_id))
    return inputs, problems


def refuse_overwriting_inputs(inputs: list[Path], outputs: list[tuple[Path, str]]) -> None:
    """InputError when an output (path, the option that names it) resolves to an input file: links,
    '..' and the current folder are resolved first."""
    resolved = {path.resolve() for path in inputs}
    for path, option in outputs:
        if path.resolve() in resolved:
            raise InputError(f'{option} would write {path} over the input {path.resolve()}: choose another {option}')


def backend_options(args: argparse.Namespace) -> dict:
    """The open_backend options the command line sets (only those given, so every backend takes them)."""
    options = checkpoint_flags(args)
    if args.config is not None:
        options['config'] = args.config
    if args.cross_class:
        options['cross_class'] = True
    if args.streams != 1:
        options['streams'] = args.streams
    if not args.gpu_paste:
        options['gpu_paste'] = False
    return options


def report_inputs(inputs: list[InputImage], problems: list[str]) -> int:
    """Print each of collect_inputs' problems as skipped, and an error when no image is left; returns
    the number of skipped paths."""
    for problem in problems:
        print(f'skipped: {problem}', file=sys.stderr)
    if not inputs:
        print('error: no images to process', file=sys.stderr)
    return len(problems)


def run(args: argparse.Namespace, inputs: list[InputImage], problems: list[str]) -> int:
    """Annotate `inputs` (collect_inputs) into args.out and, with args.json, write their detections."""
    skipped = report_inputs(inputs, problems)
    if not inputs:
        return 1
    if not args.model.is_file():
        print(f'error: model file not found: {args.model} (pass --model FILE)', file=sys.stderr)
        return 1
    backend = open_backend(args.model, args.backend, **backend_options(args))
    print(f'{args.model}: {backend.description}', file=sys.stderr)
    for warning in backend.warnings:
        print(f'warning: {warning}', file=sys.stderr)
    with backend:
        return annotate(args, inputs, skipped, backend.metadata,
                        lambda images: predict(backend, images, score_threshold=args.score_thr))


def annotate(args: argparse.Namespace, inputs: list[InputImage], skipped: int, meta: ModelMetadata,
             detect: Callable[[list[np.ndarray]], list[Detections]]) -> int:
    """Writes an annotated image of each input into args.out and, with args.json, one COCO results
    list; `detect` maps a batch of args.batch images (uint8 [H, W, 3] BGR, any size) to their
    Detections (runtime.client passes a served model's). Returns the exit status."""
    results, processed = [], 0
    with tqdm(total=len(inputs), unit='image', desc='infer') as progress:
        for group in batches(inputs, args.batch):
            loaded = []
            for item in group:
                try:
                    loaded.append((item, load_image(item.path, max_pixels=args.max_pixels)))
                except ImageLoadError as e:
                    skipped += 1
                    progress.write(f'skipped: {e}', file=sys.stderr)
            if loaded:
                detections = detect([image for _, image in loaded])
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
        try:
            write_atomic(args.json, json.dumps(results).encode())
        except OutputError as e:
            print(f'error: --json: {e}', file=sys.stderr)
            return 1
        print(f'{len(results)} detection(s) in {args.json}')
    return 0


def check_outputs(args: argparse.Namespace, inputs: list[Path], outputs: list[tuple[Path, str]]) -> None:
    """Before the work: refuse outputs (path, the option that names it) that land on an input, an
    --out or --json that cannot be written; remove an earlier --json, so that this run's results
    cannot be mistaken for it when this run fails."""
    refuse_overwriting_inputs(inputs, outputs)
    check_writable(args.out, '--out', folder=True)
    if args.json is not None:
        check_writable(args.json, '--json')
        args.json.unlink(missing_ok=True)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with usage (status 2) for values no run can use."""
    if args.batch < 1:
        parser.error('--batch must be at least 1')
    if not 0 <= args.score_thr <= 1:  # also refuses nan, which compares false
        parser.error(f'--score-thr must be in [0, 1] (scores are probabilities), got {args.score_thr}')
    if args.streams < 1:
        parser.error('--streams must be at least 1')
    if args.max_pixels < 1:
        parser.error('--max-pixels must be at least 1')
    if args.json is not None and all(is_video(p) for p in args.paths):
        parser.error('--json covers images only, and every PATH is a video: drop --json')


def infer(args: argparse.Namespace) -> int:
    """Check every output before the work, then annotate the videos and the images."""
    # Video files (.mp4, .avi) become annotated videos in --out (runtime/video.py); the rest are images.
    videos = [p for p in args.paths if is_video(p)]
    image_paths = [p for p in args.paths if not is_video(p)]
    inputs, problems = collect_inputs(image_paths) if image_paths else ([], [])
    video_targets = [video_target(video, args.out) for video in videos]
    outputs = [(args.out / item.output_name, '--out') for item in inputs] + [(t, '--out') for t in video_targets]
    if args.json is not None:
        outputs.append((args.json, '--json'))
        if videos:
            print('note: --json covers the images only, not the videos', file=sys.stderr)
    check_outputs(args, [item.path for item in inputs] + videos + image_paths, outputs)
    status = run_videos(args, list(zip(videos, video_targets)), backend_options(args)) if videos else 0
    return max(status, run(args, inputs, problems)) if image_paths else status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.backend == 'auto' and args.model == DEFAULT_MODEL:
        # A GPU host that ran `make engine` gets the engine of the default model.
        args.model = prefer_engine(args.model)
    try:
        return infer(args)
    except ToolkitError as e:  # InputError, OutputError, BackendError, MetadataError...: each names the fix
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
