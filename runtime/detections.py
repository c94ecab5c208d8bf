"""One image's detections: the one result type every backend's output becomes (numpy, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class Detections:
    """Instances found in one image, all fields the same length N, sorted by score descending.

    boxes: float32 [N, 4] x1, y1, x2, y2 in image pixels (ordered, clipped to the image);
    scores: float32 [N]; classes: int64 [N] 0-based class indices (background excluded);
    masks: bool [N, H, W] on the image grid; image_size: (H, W) of the image in pixels.
    Select with an index array, a boolean array or a slice: `dets[dets.scores > 0.5]`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self):
        n = len(self.scores)
        height, width = self.image_size
        if self.boxes.shape != (n, 4) or self.classes.shape != (n,) or self.masks.shape != (n, height, width):
            raise ValueError(
                f'Detections fields disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, classes '
                f'{self.classes.shape}, masks {self.masks.shape} for image size {self.image_size}; expected '
                f'[N, 4], [N], [N], [N, {height}, {width}]')

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, selection) -> 'Detections':
        if isinstance(selection, (int, np.integer)):
            selection = [selection]  # keep the leading N axis: one detection is Detections of length 1
        return Detections(self.boxes[selection], self.scores[selection], self.classes[selection],
                          self.masks[selection], self.image_size)

    def mask_rles(self) -> list[dict]:
        """The masks as COCO compressed RLE, one dict per detection: 'size' [H, W] and 'counts'
        (bytes), pycocotools' format (column-major runs over the image grid)."""
        if len(self) == 0:
            return []
        # pycocotools encodes column-major [H, W, N] uint8 stacks in one call.
        return mask_utils.encode(np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8)))

    def to_coco_json(self, image_id: int, file_name: str, class_names: Sequence[str],
                     category_ids: Sequence[int]) -> list[dict]:
        """COCO results entries, one per detection.

        Each: image_id, file_name, class_index (0-based, as predicted), category_id (the
        dataset's id of that class, category_ids[class_index]), category_name, bbox [x, y, w, h]
        in pixels, score, segmentation (compressed RLE, 'counts' as str). Loads with
        pycocotools' COCO.loadRes.
        """
        results = []
        rles = self.mask_rles()
        for box, score, class_index, rle in zip(self.boxes.tolist(), self.scores.tolist(),
                                                self.classes.tolist(), rles):
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
        return results
