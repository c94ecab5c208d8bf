"""A YOLACT++ engine built by TensorRT-RTX on the CPU: the official ResNet-50 layout (random
weights) exported at a small input size, its 13 `yolact::DeformConv2d` nodes and the re-scoring
parsed (as function bodies and standard layers: TensorRT-RTX has no plugin API), with the contract's
outputs and box_scores. Running it needs a GPU (tests/gpu)."""

import pytest

from engines.build import build_engine
from export.onnx_export import export_onnx
from yolact_torch.config import get_config, metadata_from_config
from yolact_torch.yolact import Yolact
from runtime.contract import BOX_SCORES, POSTPROCESS_OUTPUTS
from runtime.tensorrt.sidecar import read_sidecar
from tests.yolact_torch.plus_checkpoints import random_plus_state, small

pytest.importorskip('tensorrt_rtx', reason='TensorRT-RTX is not installed (pip install -e .[tensorrt-rtx])')


def test_yolact_plus_engine_builds_on_the_cpu(tmp_path, caplog):
    cfg = small(get_config('yolact_plus_resnet50'))
    model = Yolact(cfg).eval()
    model.load_state_dict(random_plus_state(cfg.name))
    onnx_path = export_onnx(model, cfg, tmp_path / 'yolact_plus_resnet50.onnx')
    with caplog.at_level('INFO', logger='engines.build'):
        engine_path, sidecar = build_engine(onnx_path, max_batch=2, flavour='tensorrt-rtx')
    # The builder logs every network output (engines.build._describe_network) with its shape.
    outputs = {r.args[0]: r.args[2] for r in caplog.records if r.msg.startswith('output ')}
    assert list(outputs) == [*POSTPROCESS_OUTPUTS, BOX_SCORES]
    assert outputs[BOX_SCORES] == (-1, cfg.max_num_detections)
    assert engine_path.stat().st_size > 0
    assert read_sidecar(engine_path) == sidecar
    assert sidecar.metadata == metadata_from_config(cfg)
    assert sidecar.engine.plugins == ()  # the DCN and post-processing ran through their function bodies
    assert sidecar.engine.max_batch == 2
