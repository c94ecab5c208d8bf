"""The INT8 engine's mask AP on the shapes evaluation split, against the FP32 ONNX model on
onnxruntime: the drop must stay within the calibration report's tolerance (calib.report), per-class
and cross-class. Runs on GPU runners (gpu.yml)."""

from __future__ import annotations

import pytest

from calib.report import TARGET_MASK_AP_DROP, KINDS, METRICS, Row, evaluate_models
from yolact_torch.eval import evaluate
from tests.gpu.artifacts import MAX_BATCH, SHAPES_VAL, engine_for, how_to_make, onnx_path, require_file

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize('cross_class', [False, True], ids=['per_class', 'cross_class'])
def test_int8_engine_mask_ap_within_the_calibration_tolerance(cross_class):
    data = require_file(SHAPES_VAL, 'python -m yolact_torch.data.shapes --out build/shapes --train 256 --val 128 --seed 0')
    fp32 = require_file(onnx_path('fp32', cross_class), how_to_make('fp32', cross_class))
    baseline, = evaluate_models([fp32], data, batch_size=MAX_BATCH, progress=False)
    engine = engine_for('int8', cross_class)
    metrics = evaluate(engine, data, backend='trt', batch_size=MAX_BATCH, progress=False)
    int8 = Row(engine, 'int8', {kind: {m: 100.0 * metrics[kind][m] for m in METRICS} for kind in KINDS})
    assert baseline.metrics['mask']['AP'] > 0, 'the FP32 model finds nothing: the comparison would prove nothing'
    assert int8.within_target(baseline), (
        f'INT8 engine mask AP {int8.metrics["mask"]["AP"]:.2f} vs FP32 {baseline.metrics["mask"]["AP"]:.2f}: '
        f'a drop of {-int8.delta(baseline, "mask"):.2f} points, the calibration report allows '
        f'{TARGET_MASK_AP_DROP["int8"]}; compare with `python -m calib.report` (the INT8 ONNX on onnxruntime) '
        f'to tell calibration from TensorRT')
