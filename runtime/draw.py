"""Drawing detections on an image (cv2): masks tinted per instance, boxes, class name and score."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from runtime.detections import Detections

MASK_ALPHA = 0.45  # opacity of the mask tint
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # hue step that keeps consecutive colours far apart


def instance_color(index: int) -> tuple[int, int, int]:
    """A saturated BGR colour for the index-th instance; neighbours get distant hues."""
    hue = int(((index * _GOLDEN_RATIO_CONJUGATE) % 1.0) * 180)  # OpenCV's hue range is 0..179
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(image: np.ndarray, detections: Detections, class_names: Sequence[str],
                    *, mask_alpha: float = MASK_ALPHA) -> np.ndarray:
    """A copy of `image` (uint8 [H, W, 3] BGR, the image the detections are for) with every mask
    tinted in its instance's colour, its box outlined and labelled '<class name> <score>'.
    The highest-scoring instance is drawn last, so it stays on top."""
    if image.shape[:2] != tuple(detections.image_size):
        raise ValueError(f'image is {image.shape[:2]} but the detections are for {detections.image_size}')
    canvas = image.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    font_scale = max(0.4, min(height, width) / 900)
    order = range(len(detections) - 1, -1, -1)
    for i in order:
        color = np.array(instance_color(i), np.float32)
        x1, y1, x2, y2 = detections.boxes[i]
        # Masks lie inside their boxes: blend only that window.
        window = (slice(int(y1), int(np.ceil(y2))), slice(int(x1), int(np.ceil(x2))))
        mask = detections.masks[i][window]
        pixels = canvas[window]
        pixels[mask] = (pixels[mask] * (1 - mask_alpha) + color * mask_alpha).astype(np.uint8)
    for i in order:
        color = instance_color(i)
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections.boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f'{class_names[int(detections.classes[i])]} {float(detections.scores[i]):.2f}'
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        # Above the box when there is room, else just inside its top edge.
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), color, cv2.FILLED)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(canvas, label, (x1, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color,
                    thickness, cv2.LINE_AA)
    return canvas
