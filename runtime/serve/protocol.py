"""The served model's wire format: the one home of the tensor names, the request checks and the
compact response encoding that the Triton Python-backend step (runtime/serve/triton_model.py), the
repository writer and the client share.

Request (one image per request; Triton's dynamic batcher groups requests):
  image            uint8 [1, H, W, 3] BGR at the image's own size (as runtime.images.load_image reads it)
  score_threshold  float32 [1, 1], optional: keep detections with score >= it (default: runtime.infer's)
Response (N detections, sorted by score descending):
  boxes         float32 [1, N, 4] x1, y1, x2, y2 in image pixels
  scores        float32 [1, N]
  classes       int32 [1, N] 0-based class indices (names and COCO ids in the model's metadata)
  mask_lengths  int32 [1, N] byte length of each mask's RLE in `masks`
  masks         uint8 [1, L] each mask at image size as COCO compressed RLE 'counts' (pycocotools),
                concatenated. Not a BYTES tensor of N strings: the bundled Python-backend stub reads
                numpy 2's dtype itemsize as 0 and fails such responses (see triton_model.py).
  box_scores    float32 [1, N], YOLACT++ models only (BOX_SCORES_OUTPUT): each detection's class
                score before the mask re-scoring that `scores` holds (Detections.box_scores).
The model's metadata (runtime.metadata.ModelMetadata JSON: class names, category ids, ...) is the
config parameter METADATA_PARAMETER, so a client reads it once from the model config.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from runtime.detections import Detections
from runtime.errors import ToolkitError
from runtime.infer import DEFAULT_SCORE_THRESHOLD

MODEL_NAME = 'yolact'
IMAGE_INPUT = 'image'
THRESHOLD_INPUT = 'score_threshold'
OUTPUTS = ('boxes', 'scores', 'classes', 'mask_lengths', 'masks')
# In a response only where the Detections have box_scores (YOLACT++).
BOX_SCORES_OUTPUT = 'box_scores'
METADATA_PARAMETER = 'metadata'
MAX_PIXELS_PARAMETER = 'max_pixels'
# A served engine's optimisation profile, JSON {"min": [H, W], "max": [H, W]} (the sidecar's
# min_image and max_image): the image sides the network takes.
IMAGE_RANGE_PARAMETER = 'image_range'
# The largest image the server takes by default: 4096 x 4096 pixels (48 MiB of BGR, within Triton's
# 64 MiB request limit); larger is a bad request.
MAX_IMAGE_PIXELS = 4096 * 4096


class ServeError(ToolkitError, ValueError):
    """A request the server refuses, or a server the client cannot use; the message says what to fix."""


def check_request(image: np.ndarray, threshold: np.ndarray | None, max_pixels: int,
                  max_image: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """The image (uint8 [H, W, 3]) and score threshold of one request, or ServeError naming the
    problem. Triton has already checked the dtypes, the rank and the channel count against the
    config; what it cannot check is here. max_image: the largest (H, W) a served engine's profile
    takes (None: any)."""
    if image.shape[0] != 1:
        raise ServeError(f'{IMAGE_INPUT} holds {image.shape[0]} images: send one image per request, '
                         f'shape [1, H, W, 3] (the server batches requests itself)')
    height, width = image.shape[1:3]
    if height == 0 or width == 0:
        raise ServeError(f'{IMAGE_INPUT} is empty ({height} x {width} pixels): send a decoded image, '
                         f'uint8 [1, H, W, 3] BGR')
    if height * width > max_pixels:
        raise ServeError(f'{IMAGE_INPUT} is too large ({height} x {width} pixels; this server takes at most '
                         f'{max_pixels}): downscale it before sending')
    if max_image is not None and (height > max_image[0] or width > max_image[1]):
        raise ServeError(f'{IMAGE_INPUT} is {height} x {width} pixels, larger than the served engine takes '
                         f'({max_image[0]} x {max_image[1]}): downscale it to fit before sending')
    score_threshold = DEFAULT_SCORE_THRESHOLD
    if threshold is not None:
        if threshold.size != 1 or not 0 <= float(threshold.flat[0]) <= 1:
            raise ServeError(f'{THRESHOLD_INPUT} must be one number in 0..1, got {threshold.ravel()[:4].tolist()}')
        score_threshold = float(threshold.flat[0])
    return image[0], score_threshold


def encode_detections(dets: Detections) -> dict[str, np.ndarray]:
    """One image's Detections -> the response arrays named in OUTPUTS, and BOX_SCORES_OUTPUT where
    the Detections have box_scores (leading batch axis of 1)."""
    counts = [rle['counts'] for rle in dets.mask_rles()]
    encoded = {
        'boxes': np.array(dets.boxes[None], np.float32),
        'scores': np.array(dets.scores[None], np.float32),
        'classes': np.array(dets.classes[None], np.int32),
        'mask_lengths': np.array([[len(c) for c in counts]], np.int32).reshape(1, len(dets)),
        'masks': np.frombuffer(b''.join(counts), np.uint8)[None].copy(),
    }
    if dets.box_scores is not None:
        encoded[BOX_SCORES_OUTPUT] = np.array(dets.box_scores[None], np.float32)
    return encoded


def decode_detections(outputs: dict[str, np.ndarray], image_size: tuple[int, int]) -> Detections:
    """The response arrays of one request (encode_detections' output) and the (H, W) of the image
    sent -> Detections with masks bool [N, H, W] on the image grid, and box_scores where the
    response has BOX_SCORES_OUTPUT."""
    height, width = image_size
    stream = outputs['masks'].reshape(-1).tobytes()
    ends = np.cumsum(outputs['mask_lengths'].reshape(-1))
    if len(ends):
        rles = [{'size': [height, width], 'counts': stream[start:end]} for start, end in zip([0, *ends[:-1]], ends)]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    else:
        masks = np.zeros((0, height, width), bool)
    box_scores = outputs.get(BOX_SCORES_OUTPUT)
    return Detections(outputs['boxes'].reshape(-1, 4).astype(np.float32), outputs['scores'].reshape(-1),
                      outputs['classes'].reshape(-1).astype(np.int64), masks, (int(height), int(width)),
                      box_scores=None if box_scores is None else box_scores.reshape(-1))
