"""Names of the exported ONNX model's interface (README, "The model contract") and the reader of its
metadata: the one home of these names, which the exporter, calib, the engine builder and the
runtime all import. The runtime owns them because it consumes the interface."""

from __future__ import annotations

from collections.abc import Mapping

from runtime.metadata import MetadataError, ModelMetadata

INPUT_NAME = 'images'
# The input's dynamic dimensions: uint8 [batch, height, width, 3], each image at its own size.
BATCH_DIM = 'batch'
HEIGHT_DIM = 'height'
WIDTH_DIM = 'width'
# With post-processing (the default): num_dets int32 [B], boxes float32 [B, D, 4] xyxy relative,
# scores float32 [B, D], classes int32 [B, D] 0-based, masks float32 [B, D, Hp, Wp].
POSTPROCESS_OUTPUTS = ('num_dets', 'boxes', 'scores', 'classes', 'masks')
# YOLACT++ models only (those with a maskiou_net), after POSTPROCESS_OUTPUTS: box_scores float32
# [B, D], each detection's class score before the mask re-scoring, rows in the order of `scores`
# (which holds the re-scored one). The original's COCO evaluation scores boxes with it and masks with
# `scores` (dbolya/yolact eval.py prep_metrics, rescore_bbox False).
BOX_SCORES = 'box_scores'
# --no-postprocess: loc [B, P, 4], conf (softmax) [B, P, num_classes], coef [B, P, M],
# proto [B, Hp, Wp, M] (NHWC), priors [P, 4] (a constant).
RAW_OUTPUTS = ('loc', 'conf', 'coef', 'proto', 'priors')
# metadata_props key holding runtime.metadata.ModelMetadata.to_json().
METADATA_KEY = 'yolact.metadata'


def metadata_from_props(props: Mapping[str, str], source: str, *,
                        fix: str = 'export it with python -m export') -> ModelMetadata:
    """The ModelMetadata an exported model stores under METADATA_KEY, from its metadata_props as a
    mapping (onnx: {p.key: p.value for p in model.metadata_props}; onnxruntime: the session's
    custom_metadata_map). MetadataError naming `source` and `fix` when the entry is missing,
    naming the bad field when it is malformed."""
    if METADATA_KEY not in props:
        raise MetadataError(f'{source} has no {METADATA_KEY!r} metadata_props entry (the model description every '
                            f'ONNX model exported by this toolkit carries): {fix}')
    return ModelMetadata.from_json(props[METADATA_KEY], source)
