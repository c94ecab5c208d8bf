"""YOLACT++ engines built by TensorRT-RTX on the CPU: the official ResNet-50 layout (random
weights) exported at a small input size, its 13 `yolact::DeformConv2d` nodes and the re-scoring
parsed (as function bodies and standard layers: TensorRT-RTX has no plugin API), with the contract's
outputs and box_scores; and the FP16 and INT8 versions of yolact_plus_tiny (calib), whose deformable
convolutions reach the builder as FP32 calls. Running them needs a GPU (tests/gpu)."""

import onnx
import pytest

from calib.fp16 import convert_fp16
from calib.quantize import quantize_int8
from engines.build import build_engine
from export.onnx_export import export_onnx, save_model
from plugins import DEFORM_CONV_OP, DOMAIN
from yolact_torch.config import get_config, metadata_from_config
from yolact_torch.yolact import Yolact
from runtime.contract import BOX_SCORES, POSTPROCESS_OUTPUTS
from runtime.tensorrt.sidecar import read_sidecar
from tests.calib.standin import smooth_images
from tests.engines.build_log import build_logged
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
    # What a model repository for it declares (runtime.serve.repository), read without TensorRT.
    assert sidecar.engine.outputs == (*POSTPROCESS_OUTPUTS, BOX_SCORES)
    assert sidecar.engine.plugins == ()  # the DCN and post-processing ran through their function bodies
    assert sidecar.engine.max_batch == 2


@pytest.fixture(scope='module')
def plus_tiny(tmp_path_factory):
    """The FP32 export of a random-weight yolact_plus_tiny at its smallest input, its FP16 and INT8 versions."""
    folder = tmp_path_factory.mktemp('plus')
    cfg = small(get_config('yolact_plus_tiny'))
    model = Yolact(cfg).eval()
    model.load_state_dict(random_plus_state(cfg.name))
    fp32 = export_onnx(model, cfg, folder / 'yolact_plus_tiny.onnx')
    images = smooth_images(2, size=cfg.max_size)
    fp16 = convert_fp16(onnx.load(fp32), images)
    int8 = quantize_int8(onnx.load(fp32), images, cache_dir=folder, model_name='yolact_plus_tiny').model
    return {'fp32': fp32, 'fp16': save_model(fp16, folder / 'yolact_plus_tiny.fp16.onnx'),
            'int8': save_model(int8, folder / 'yolact_plus_tiny.int8.onnx')}


@pytest.mark.slow
@pytest.mark.parametrize('precision', ['fp16', 'int8'])
def test_fp16_and_int8_yolact_plus_engines_build_with_fp32_deformable_convs(plus_tiny, precision):
    onnx_path = plus_tiny[precision]
    calls = [[n for n in onnx.load(path).graph.node if (n.domain, n.op_type) == (DOMAIN, DEFORM_CONV_OP)]
             for path in (plus_tiny['fp32'], onnx_path)]
    assert [len(c) for c in calls] == [4, 4]  # stages 2-4: 1 + 2 + 1 blocks
    (engine_path, sidecar), messages = build_logged(onnx_path, max_batch=1, flavour='tensorrt-rtx',
                                                    precision=precision, verbose=True)
    assert engine_path.stat().st_size > 0 and sidecar.metadata.precision == precision
    # Each call reached the parser, which built its body (no plugin API in TensorRT-RTX): one
    # GridSample per deformable convolution, sampling in FP32.
    assert any(f'{DOMAIN}::{DEFORM_CONV_OP}' in m and 'function bodies' in m for m in messages)
    grid_samples = [m for m in messages if m.startswith('layer ') and ' GRID_SAMPLE ' in m]
    assert len(grid_samples) == 4 and all('-> FLOAT(' in m for m in grid_samples)
    layers = [m for m in messages if m.startswith('layer ')]
    if precision == 'fp16':
        assert any(' CONVOLUTION ' in m and 'HALF' in m for m in layers)
    else:
        assert any(' QUANTIZE ' in m and 'INT8' in m for m in layers)
    assert sidecar.engine.plugins == ()
