"""The whole chain on a real YOLACT graph: export (yolact_tiny, seeded random weights) -> calib
(fp16, int8) -> TensorRT-RTX engines, each with its sidecar. Proves the builder takes what
export/ and calib/ write, FastNMS and MaskAssembly included (as standard layers), at every
precision. About a minute on 2 cores, most of it export and calibration."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from engines.onnx_source import load_onnx
from runtime.tensorrt.sidecar import plugin_key, read_sidecar
from tests.engines.build_log import build_logged

pytest.importorskip('tensorrt_rtx', reason='TensorRT-RTX is not installed (pip install -e .[tensorrt-rtx])')
torch = pytest.importorskip('torch')
cv2 = pytest.importorskip('cv2')

PRECISIONS = ('fp32', 'fp16', 'int8')
CALIBRATION_IMAGES = 4


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    """precision -> (onnx path, engine path, sidecar, log messages)."""
    from calib.convert import convert_model
    from export.onnx_export import export_onnx
    from yolact_torch.config import get_config
    from yolact_torch.yolact import Yolact

    folder = tmp_path_factory.mktemp('pipeline')
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = get_config('yolact_tiny')
    fp32_path = export_onnx(Yolact(cfg).eval(), cfg, folder / 'tiny.onnx')
    images = folder / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    # At their own sizes, as the runtime sends them: the graph resizes (two share a size, one batch).
    for index, size in enumerate([(240, 320), (97, 403), (240, 320), (480, 640)][:CALIBRATION_IMAGES]):
        cv2.imwrite(str(images / f'{index}.png'), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    paths = {'fp32': fp32_path}
    for precision in ('fp16', 'int8'):
        paths[precision] = convert_model(fp32_path, precision, images, count=CALIBRATION_IMAGES).output
    results = {}
    for precision in PRECISIONS:
        (engine_path, sidecar), messages = build_logged(paths[precision], precision=precision, max_batch=2)
        results[precision] = paths[precision], engine_path, sidecar, messages
    return results


@pytest.mark.slow
@pytest.mark.parametrize('precision', PRECISIONS)
def test_exported_and_calibrated_models_build(pipeline, precision):
    onnx_path, engine_path, sidecar, messages = pipeline[precision]
    assert read_sidecar(engine_path) == sidecar
    assert sidecar.metadata == load_onnx(onnx_path).metadata
    assert sidecar.metadata.precision == precision
    assert sidecar.engine.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar.engine.engine_sha256 == hashlib.sha256(engine_path.read_bytes()).hexdigest()
    assert sidecar.engine.max_batch == 2 and sidecar.engine.plugins == ()
    assert any('yolact::FastNMS, yolact::MaskAssembly built from their ONNX function bodies as standard layers' in m
               for m in messages)
    # The engine's outputs are the model contract's, with the batch dimension dynamic.
    max_dets = sidecar.metadata.max_dets
    outputs = {m.split()[1]: (m.split()[2], m.split(None, 3)[3]) for m in messages if m.startswith('output ')}
    assert outputs['num_dets'] == ('INT32', '(-1,)')
    assert outputs['boxes'] == ('FLOAT', f'(-1, {max_dets}, 4)')
    assert outputs['classes'] == ('INT32', f'(-1, {max_dets})')
    assert outputs['scores'][0] == outputs['masks'][0] == 'FLOAT'


@pytest.mark.gpu
@pytest.mark.slow
def test_tensorrt_engine_uses_the_registered_plugins(pipeline, tmp_path):
    """On a GPU host the yolact plugins register, replace the function bodies, and the sidecar
    lists them (the runtime then refuses the engine where they are not registered)."""
    from engines.build import register_plugins
    from runtime.tensorrt.loader import load_tensorrt
    from plugins import DOMAIN, FAST_NMS_OP, MASK_ASSEMBLY_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION

    registered, reason = register_plugins(load_tensorrt('tensorrt'))
    assert registered, reason
    onnx_path = pipeline['fp32'][0]
    (_, sidecar), messages = build_logged(onnx_path, tmp_path / 'plugins.engine', flavour='tensorrt', max_batch=2)
    assert sidecar.engine.plugins == tuple(sorted(plugin_key(op, PLUGIN_NAMESPACE, PLUGIN_VERSION)
                                                  for op in (FAST_NMS_OP, MASK_ASSEMBLY_OP)))
    assert not any(f'{DOMAIN}::{FAST_NMS_OP}' in m and 'function bodies' in m for m in messages)
