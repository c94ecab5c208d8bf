"""COCO-format instance-segmentation datasets: an images folder and an instances JSON.

Masks may be polygons, uncompressed RLE or compressed RLE (decoded by pycocotools). Class indices
are 0-based in the order of the JSON's category ids (background excluded), as in the config.
Annotations that cannot be trained on (crowd regions, zero-area boxes, boxes outside the image,
unknown categories) are skipped and counted, never a crash; `DatasetError` is raised for what
makes the whole dataset unusable (missing file, not COCO, missing images, wrong class count).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from runtime.errors import ToolkitError

REQUIRED_KEYS = ('images', 'annotations', 'categories')


class DatasetError(ToolkitError, ValueError):
    """A dataset that cannot be used; the message names the file and the fix."""


@dataclass
class Sample:
    """One image and its instances, in image pixels.

    image: uint8 [H, W, 3] BGR. masks: uint8 [N, H, W] (0/1). boxes: float32 [N, 4] x1, y1, x2, y2
    in pixels. labels: int64 [N] 0-based class indices. image_id: the JSON's image id.
    """

    image: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int


def resolve_json(path: str | Path) -> Path:
    """The instances JSON named by `path`, or, for a folder, its `train.json` (the shapes layout)."""
    path = Path(path)
    if not path.exists() and path.suffix == '.json' and path.with_suffix('').is_dir():
        # The shapes layout (yolact_torch/data/shapes.py): its JSON is written after its images.
        raise DatasetError(f'{path} is missing beside the images in {path.with_suffix("")}/: an unfinished data set '
                           f'(the shapes set writes its JSON last); make it again with `python -m yolact_torch.data.shapes '
                           f'--out {path.parent}`')
    if not path.exists():
        raise DatasetError(f'{path} does not exist: give a COCO instances JSON (or a folder holding train.json)')
    if path.is_dir():
        candidate = path / 'train.json'
        if (path / 'train').is_dir():
            return resolve_json(candidate)
        if not candidate.is_file():
            raise DatasetError(f'{path} is a folder without train.json: give the COCO instances JSON itself')
        return candidate
    return path


def read_coco_json(path: Path) -> dict:
    """The parsed JSON, checked to have the COCO instances layout."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f'{path} is not valid JSON ({e}): give a COCO instances JSON') from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in REQUIRED_KEYS):
        raise DatasetError(f'{path} is not a COCO instances file: it needs the lists '
                           f'{", ".join(repr(k) for k in REQUIRED_KEYS)}')
    for key, fields in (('images', ('id', 'file_name', 'height', 'width')),
                        ('categories', ('id', 'name')),
                        ('annotations', ('image_id', 'category_id', 'bbox'))):
        for entry in data[key]:
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DatasetError(f'{path}: an entry of {key!r} lacks {", ".join(missing)}: not a COCO instances file')
    if not data['categories']:
        raise DatasetError(f'{path} has no categories: a COCO instances file lists its classes under "categories"')
    return data


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Mask uint8 [height, width] of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(segmentation, list):  # polygons
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get('counts'), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


class CocoDataset:
    """A COCO instances JSON with its images.

    json_path: the JSON (or a folder holding train.json). images_dir: where `file_name`s are
    found; defaults to the JSON's folder. class_names: when given, the data's categories must
    be exactly this many (the config's classes), else DatasetError.
    require_annotations: keep only images with at least one usable annotation (training).
    """

    def __init__(self, json_path: str | Path, images_dir: str | Path | None = None, *,
                 class_names: tuple[str, ...] | None = None, require_annotations: bool = False):
        self.json_path = resolve_json(json_path)
        self.images_dir = Path(images_dir) if images_dir is not None else self.json_path.parent
        if not self.images_dir.is_dir():
            raise DatasetError(f'image folder {self.images_dir} does not exist: pass --images DIR')
        data = read_coco_json(self.json_path)

        categories = sorted(data['categories'], key=lambda c: c['id'])
        self.category_ids = tuple(int(c['id']) for c in categories)
        self.class_names = tuple(str(c['name']) for c in categories)
        if class_names is not None and len(class_names) != len(self.class_names):
            raise DatasetError(
                f'{self.json_path} has {len(self.class_names)} categories ({", ".join(self.class_names)}) '
                f'but the config has {len(class_names)} classes: use a config made for this data, '
                'e.g. config.with_classes(names)')
        label_of_category = {cid: i for i, cid in enumerate(self.category_ids)}

        self.images = {int(im['id']): im for im in data['images']}
        self.skipped: Counter[str] = Counter()
        self.annotations: dict[int, list[tuple[dict, int]]] = {i: [] for i in self.images}
        for ann in data['annotations']:
            reason = self._skip_reason(ann, label_of_category)
            if reason:
                self.skipped[reason] += 1
                continue
            self.annotations[int(ann['image_id'])].append((ann, label_of_category[ann['category_id']]))

        self.image_ids = sorted(self.images)
        if require_annotations:
            self.image_ids = [i for i in self.image_ids if self.annotations[i]]
        if not self.image_ids:
            raise DatasetError(f'{self.json_path} has no images with usable annotations: '
                               f'skipped {self.skipped_summary() or "nothing"}')
        missing = [self.images[i]['file_name'] for i in self.image_ids if not self.image_path(i).is_file()]
        if missing:
            raise DatasetError(
                f'{len(missing)} of {len(self.image_ids)} images of {self.json_path} are missing under '
                f'{self.images_dir} (e.g. {missing[0]}): pass --images DIR with the folder that holds them')

    def _skip_reason(self, ann: dict, label_of_category: dict[int, int]) -> str | None:
        image = self.images.get(int(ann['image_id']))
        if image is None:
            return 'annotation of an unknown image'
        if ann['category_id'] not in label_of_category:
            return 'unknown category'
        if ann.get('iscrowd', 0):
            return 'crowd region'
        if 'segmentation' not in ann:
            return 'no segmentation'
        x, y, w, h = (float(v) for v in ann['bbox'])
        if not (w > 0 and h > 0):
            return 'zero-area box'
        if x >= image['width'] or y >= image['height'] or x + w <= 0 or y + h <= 0:
            return 'box outside the image'
        return None

    def skipped_summary(self) -> str:
        """'3 zero-area box, 1 crowd region' or '' when nothing was skipped."""
        return ', '.join(f'{n} {reason}' for reason, n in sorted(self.skipped.items()))

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.images[image_id]['file_name']

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] BGR (grey, alpha and 16-bit images converted by cv2)."""
        path = self.image_path(image_id)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f'cannot read image {path}: not an image file cv2 can decode')
        return image

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        image = self.load_image(image_id)
        height, width = image.shape[:2]
        masks, boxes, labels = [], [], []
        for ann, label in self.annotations[image_id]:
            mask = decode_segmentation(ann['segmentation'], height, width)
            if mask.shape != (height, width):
                raise DatasetError(f'{self.json_path}: annotation {ann.get("id")} is {mask.shape} but image '
                                   f'{image_id} is {(height, width)}: the JSON does not match the images')
            x, y, w, h = (float(v) for v in ann['bbox'])
            masks.append(mask)
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
            labels.append(label)
        return Sample(
            image=image,
            masks=np.stack(masks) if masks else np.zeros((0, height, width), np.uint8),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int64),
            image_id=image_id)
