"""One image's detections: the one result type every backend's output becomes (numpy, no torch),
and what the Python API returns (README "Python API"): names, plot(), save(), to_coco_json()."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from runtime.errors import ToolkitError


# The key of a to_coco_json entry's box score where it differs from 'score' (YOLACT++); COCO
# evaluation scores the entry's bbox with it (yolact_torch.eval.coco_metrics).
BBOX_SCORE_KEY = 'bbox_score'


class DetectionsError(ToolkitError, ValueError):
    """A Detections method that needs something these Detections do not carry; the message says what."""


@dataclass(frozen=True)
class Detections:
    """Instances found in one image, all fields the same length N, sorted by score descending.

    boxes: float32 [N, 4] x1, y1, x2, y2 in image pixels (ordered, clipped to the image);
    scores: float32 [N]; classes: int64 [N] 0-based class indices (background excluded);
    masks: bool [N, H, W] on the image grid; image_size: (H, W) of the image in pixels.
    What the Python API attaches (runtime.api.Model; empty or None where a pipeline made them):
    class_names / category_ids: the model's class names and dataset category ids, indexed by
    `classes`; image: the uint8 [H, W, 3] BGR image they were found in (for plot and save);
    file_name: the file it was read from ('' for an array).
    box_scores: float32 [N], YOLACT++ only (None otherwise): each detection's class score before the
    mask re-scoring that `scores` holds (runtime.contract.BOX_SCORES), the score of its box.
    Select with an index array, a boolean array or a slice: `dets[dets.scores > 0.5]`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    image_size: tuple[int, int]
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()
    image: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    file_name: str = ''
    box_scores: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.scores)
        height, width = self.image_size
        if self.boxes.shape != (n, 4) or self.classes.shape != (n,) or self.masks.shape != (n, height, width):
            raise ValueError(
                f'Detections fields disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, classes '
                f'{self.classes.shape}, masks {self.masks.shape} for image size {self.image_size}; expected '
                f'[N, 4], [N], [N], [N, {height}, {width}]')
        if self.image is not None and self.image.shape != (height, width, 3):
            raise ValueError(f'Detections image is {self.image.shape}, not [{height}, {width}, 3]')
        if self.box_scores is not None and self.box_scores.shape != (n,):
            raise ValueError(f'Detections box_scores is {self.box_scores.shape}, not [{n}] as scores')

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, selection) -> 'Detections':
        if isinstance(selection, (int, np.integer)):
            selection = [selection]  # keep the leading N axis: one detection is Detections of length 1
        return dataclasses.replace(self, boxes=self.boxes[selection], scores=self.scores[selection],
                                   classes=self.classes[selection], masks=self.masks[selection],
                                   box_scores=None if self.box_scores is None else self.box_scores[selection])

    @property
    def names(self) -> list[str]:
        """The class name of each detection ([N] str)."""
        if len(self) and not self.class_names:
            raise DetectionsError('these Detections carry no class names: get them from runtime.load(...), or '
                                  'look classes up in the model\'s metadata.class_names')
        return [self.class_names[c] for c in self.classes.tolist()]

    def plot(self) -> np.ndarray:
        """A copy of the image (uint8 [H, W, 3] BGR) with each mask tinted, its box outlined and
        labelled '<class name> <score>' (runtime.draw.draw_detections)."""
        from runtime.draw import draw_detections  # runtime.draw imports this module

        if self.image is None:
            raise DetectionsError('these Detections carry no image to draw on: get them from runtime.load(...), '
                                  'or call runtime.draw.draw_detections(image, detections, class_names)')
        return draw_detections(self.image, self, self.class_names)

    def save(self, path: str | Path) -> Path:
        """Write plot() to `path`, encoded by its suffix (.jpg, .png, ...), atomically; returns the path."""
        from runtime.images import write_image

        path = Path(path)
        write_image(path, self.plot())
        return path

    def mask_rles(self) -> list[dict]:
        """The masks as COCO compressed RLE, one dict per detection: 'size' [H, W] and 'counts'
        (bytes), pycocotools' format (column-major runs over the image grid)."""
        if len(self) == 0:
            return []
        # pycocotools encodes column-major [H, W, N] uint8 stacks in one call.
        return mask_utils.encode(np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8)))

    def to_coco_json(self, image_id: int, file_name: str | None = None, class_names: Sequence[str] | None = None,
                     category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO results entries, one per detection; file_name, class_names and category_ids default
        to the ones these Detections carry.

        Each: image_id, file_name, class_index (0-based, as predicted), category_id (the
        dataset's id of that class, category_ids[class_index]), category_name, bbox [x, y, w, h]
        in pixels, score, segmentation (compressed RLE, 'counts' as str); with box_scores
        (YOLACT++) also BBOX_SCORE_KEY, the box's score, as the original scores boxes and masks
        apart. Loads with pycocotools' COCO.loadRes, which scores both geometries with 'score': a box
        evaluation of YOLACT++ entries takes BBOX_SCORE_KEY as their score instead
        (yolact_torch.eval.coco_metrics).
        """
        if len(self) == 0:
            return []
        file_name = self.file_name if file_name is None else file_name
        class_names = self.class_names if class_names is None else class_names
        category_ids = self.category_ids if category_ids is None else category_ids
        if not class_names or not category_ids:
            raise DetectionsError('to_coco_json needs the class names and category ids: get the detections from '
                                  'runtime.load(...), or pass the model\'s metadata.class_names and category_ids')
        results = []
        rles = self.mask_rles()
        for i, (box, score, class_index, rle) in enumerate(zip(self.boxes.tolist(), self.scores.tolist(),
                                                                self.classes.tolist(), rles)):
            # Two decimals: a hundredth of a pixel is below any metric's resolution and keeps the file small.
            x1, y1, x2, y2 = box
            results.append({
                'image_id': int(image_id),
                'file_name': str(file_name),
                'class_index': int(class_index),
                'category_id': int(category_ids[class_index]),
                'category_name': str(class_names[class_index]),
                'bbox': [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                'score': score,
                'segmentation': {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')},
            })
            if self.box_scores is not None:
                results[-1][BBOX_SCORE_KEY] = float(self.box_scores[i])
        return results
