"""A synthetic instance-segmentation set that needs no download: shapes on textured backgrounds.

Each image holds a few instances of the classes in `yolact_torch.config.SHAPES_CLASSES` (circle,
triangle, rectangle, star, ring), drawn one after the other so later shapes occlude earlier ones.
Masks are exact: the image is painted through the very masks that are stored (no anti-aliasing),
and every stored mask is what remains visible after the later shapes were drawn. Placements that
would hide too much of an earlier instance are retried, so every instance stays recognisable.

    python -m yolact_torch.data.shapes --out DIR --train N --val M --seed S

writes `DIR/train.json` and `DIR/val.json` (COCO instances, masks as compressed RLE) with the
images under `DIR/train/` and `DIR/val/`; each `file_name` is relative to the JSON's folder.
Regenerating into an existing folder first removes both JSONs, and each is written last: a run
killed midway leaves partly new images and no JSON, which the loaders refuse (naming this
command), never an old JSON beside new images. val.json, written last of all, marks a whole set.
Image i of a split depends only on (seed, split, i), so the output is deterministic and a longer
split starts with the images of a shorter one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from yolact_torch.config import SHAPES_CLASSES, get_config
from runtime.files import OutputError, check_writable, write_atomic

SPLITS = ('train', 'val')
JPEG_QUALITY = 92


@dataclass(frozen=True)
class ShapesSpec:
    """How the images look. Sizes are in pixels of the square image.

    instances: (min, max) shapes per image, both inclusive.
    radius: (min, max) outer radius of a shape.
    min_visible_fraction: an instance must keep at least this share of its own area visible
        (inside the image and not hidden by later shapes).
    min_visible_pixels: ... and at least this many pixels.
    min_color_distance: RGB distance between a shape's fill and the background's base colour.
    """

    image_size: int = get_config('yolact_tiny').max_size
    instances: tuple[int, int] = (2, 6)
    radius: tuple[int, int] = (18, 72)
    min_visible_fraction: float = 0.45
    min_visible_pixels: int = 150
    min_color_distance: float = 90.0
    placement_attempts: int = 25


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency noise float32 [size, size, channels] in about -1..1 (a random grid, upsampled)."""
    grid = rng.uniform(-1, 1, size=(cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background float32 [size, size, 3] (BGR, 0..255) and its base colour [3]."""
    base = _random_color(rng)
    image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, math.pi)
        frequency = rng.uniform(2, 14)
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        image += wave[..., None] * rng.uniform(-35, 35, size=3).astype(np.float32)
    image += _smooth_noise(rng, size, int(rng.integers(3, 9)), 3) * rng.uniform(10, 50)
    image += rng.normal(0, rng.uniform(2, 10), size=image.shape).astype(np.float32)
    return image, base


def _polygon(center: np.ndarray, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    points = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return np.round(points).astype(np.int32)


def _draw_shape(rng: np.random.Generator, class_name: str, size: int, spec: ShapesSpec) -> tuple[np.ndarray, int]:
    """One randomly placed shape: its mask inside the image, bool [size, size], and its full area in
    pixels (shapes may reach past the image border)."""
    radius = rng.uniform(*spec.radius)
    pad = int(math.ceil(spec.radius[1])) + 1
    canvas = np.zeros((size + 2 * pad, size + 2 * pad), np.uint8)
    center = rng.uniform(-0.5 * radius, size + 0.5 * radius, size=2) + pad
    center_px = tuple(int(round(c)) for c in center)
    rotation = rng.uniform(0, 2 * math.pi)
    if class_name == 'circle':
        cv2.circle(canvas, center_px, int(round(radius)), 1, -1)
    elif class_name == 'ring':
        cv2.circle(canvas, center_px, int(round(radius)), 1, -1)
        cv2.circle(canvas, center_px, int(round(radius * rng.uniform(0.4, 0.65))), 0, -1)
    elif class_name == 'triangle':
        angles = rotation + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.25, 0.25, size=3)
        cv2.fillPoly(canvas, [_polygon(center, np.full(3, radius), angles)], 1)
    elif class_name == 'rectangle':
        aspect = rng.uniform(0.35, 1.0)
        half = np.array([radius, radius * aspect]) / math.sqrt(1 + aspect ** 2) * math.sqrt(2)
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
        cv2.fillPoly(canvas, [np.round(corners @ rot.T + center).astype(np.int32)], 1)
    elif class_name == 'star':
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.55))
        angles = rotation + np.arange(10) * math.pi / 5
        cv2.fillPoly(canvas, [_polygon(center, radii, angles)], 1)
    else:
        raise ValueError(f'unknown shape class {class_name!r}: use one of {", ".join(SHAPES_CLASSES)}')
    return canvas[pad:pad + size, pad:pad + size].astype(bool), int(canvas.sum())


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, background_color: np.ndarray,
           spec: ShapesSpec) -> None:
    """Fill `mask` of `image` (float32 BGR, in place) with a textured colour unlike the background."""
    size = image.shape[0]
    for _ in range(20):
        color = _random_color(rng)
        if np.linalg.norm(color - background_color) >= spec.min_color_distance:
            break
    fill = np.broadcast_to(color, image.shape).astype(np.float32)
    # Shading and texture so that a class is not a flat colour.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * math.pi)
    fill = fill + ((xx * math.cos(angle) + yy * math.sin(angle)) * rng.uniform(-60, 60))[..., None]
    fill = fill + _smooth_noise(rng, size, int(rng.integers(8, 24)), 1) * rng.uniform(0, 25)
    image[mask] = fill[mask]


def generate_image(rng: np.random.Generator, spec: ShapesSpec = ShapesSpec()) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its instances.

    Returns the image uint8 [S, S, 3] BGR and a list of (class index 0-based in SHAPES_CLASSES,
    visible mask bool [S, S]) in drawing order (later instances are on top).
    """
    size = spec.image_size
    image, background_color = _background(rng, size)
    full_areas: list[int] = []
    visible: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(rng.integers(spec.instances[0], spec.instances[1] + 1)):
        class_index = int(rng.integers(len(SHAPES_CLASSES)))
        for _ in range(spec.placement_attempts):
            mask, full_area = _draw_shape(rng, SHAPES_CLASSES[class_index], size, spec)
            if mask.sum() < max(spec.min_visible_fraction * full_area, spec.min_visible_pixels):
                continue  # mostly outside the image
            remaining = [v & ~mask for v in visible]
            if all(r.sum() >= max(spec.min_visible_fraction * f, spec.min_visible_pixels)
                   for r, f in zip(remaining, full_areas)):
                break
        else:
            continue  # no placement kept every earlier instance visible enough: leave it out
        visible = remaining + [mask]
        full_areas.append(full_area)
        classes.append(class_index)
        _paint(rng, image, mask, background_color, spec)
    return np.clip(image, 0, 255).astype(np.uint8), list(zip(classes, visible))


def mask_annotation(mask: np.ndarray) -> dict:
    """COCO fields of one bool [H, W] mask: compressed RLE (counts as str), bbox [x, y, w, h]
    in pixels (tight around the mask), area in pixels."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {'segmentation': rle, 'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': int(mask.sum())}


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def write_split(out_dir: Path, split: str, count: int, seed: int, spec: ShapesSpec = ShapesSpec(),
                progress: bool = True) -> Path:
    """Write `count` images to out_dir/split/ and their annotations to out_dir/split.json.

    An existing JSON of the split is removed first and the new one written last, atomically, so a
    JSON on disk always describes the images beside it.
    """
    json_path = out_dir / f'{split}.json'
    json_path.unlink(missing_ok=True)
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(count), desc=f'shapes {split}', unit='img', disable=not progress):
        image, instances = generate_image(_split_rng(seed, split, index), spec)
        file_name = f'{split}/{index:06d}.jpg'
        ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f'could not encode {file_name} as JPEG')
        write_atomic(out_dir / file_name, encoded.tobytes())
        image_id = index + 1
        images.append({'id': image_id, 'file_name': file_name, 'height': image.shape[0], 'width': image.shape[1]})
        for class_index, mask in instances:
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                                'category_id': class_index + 1, 'iscrowd': 0, **mask_annotation(mask)})
    coco = {
        'info': {'description': f'synthetic shapes, split {split}, seed {seed}'},
        'images': images,
        'annotations': annotations,
        'categories': [{'id': i + 1, 'name': name, 'supercategory': 'shape'}
                       for i, name in enumerate(SHAPES_CLASSES)],
    }
    write_atomic(json_path, json.dumps(coco).encode())
    return json_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m yolact_torch.data.shapes',
        description='Write the synthetic shapes instance-segmentation set in COCO format: '
                    'DIR/train.json, DIR/val.json, images under DIR/train/ and DIR/val/.')
    parser.add_argument('--out', required=True, type=Path, help='output folder (created if missing)')
    parser.add_argument('--train', type=int, default=2000, help='training images (default: %(default)s)')
    parser.add_argument('--val', type=int, default=200, help='validation images (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='random seed; same seed, same files (default: %(default)s)')
    parser.add_argument('--size', type=int, default=ShapesSpec.image_size,
                        help='image side in pixels (default: %(default)s, yolact_tiny\'s input size)')
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0:
        parser.error('--train and --val must be >= 0')
    if args.size < 2 * ShapesSpec.radius[1]:
        parser.error(f'--size must be at least {2 * ShapesSpec.radius[1]} pixels (shapes are up to that wide)')
    spec = ShapesSpec(image_size=args.size)
    try:
        for split in SPLITS:  # both, before any image changes: a half-made set has no JSON at all
            check_writable(args.out / f'{split}.json', '--out').unlink(missing_ok=True)
        for split, count in (('train', args.train), ('val', args.val)):
            path = write_split(args.out, split, count, args.seed, spec)
            print(f'wrote {path} ({count} images)')
    except OutputError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except OSError as e:  # the image folders
        print(f'error: cannot write to {args.out}: {e.strerror or e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
