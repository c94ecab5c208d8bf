"""Names of the exported ONNX model's interface (DESIGN.md, "ONNX model"). Plain constants, free of
torch and onnx, so the engine builder and the runtime read the same names on deployment hosts."""

INPUT_NAME = 'images'
BATCH_DIM = 'batch'
# With post-processing (the default): num_dets int32 [B], boxes float32 [B, D, 4] xyxy relative,
# scores float32 [B, D], classes int32 [B, D] 0-based, masks float32 [B, D, Hp, Wp].
POSTPROCESS_OUTPUTS = ('num_dets', 'boxes', 'scores', 'classes', 'masks')
# --no-postprocess: loc [B, P, 4], conf (softmax) [B, P, num_classes], coef [B, P, M],
# proto [B, Hp, Wp, M] (NHWC), priors [P, 4] (a constant).
RAW_OUTPUTS = ('loc', 'conf', 'coef', 'proto', 'priors')
# metadata_props key holding model.metadata.ModelMetadata.to_json().
METADATA_KEY = 'yolact.metadata'
