"""The onnxruntime backend on an exported random-weight yolact_tiny: agreement with the torch
backend, batching, the CLI on images and video, and every bad model file it must refuse clearly."""

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.onnx_export import export_onnx
from yolact_torch.checkpoint import load_model
from yolact_torch.config import metadata_from_config, yolact_tiny
from runtime.backends import BackendError, open_backend
from runtime.backends.ort_backend import OrtBackend
from runtime.contract import INPUT_NAME, METADATA_KEY, RAW_OUTPUTS
from runtime.infer import main as infer_main
from runtime.pipeline import predict


@pytest.fixture(scope='module')
def onnx_path(tiny_checkpoint, tmp_path_factory):
    model, cfg = load_model(tiny_checkpoint)
    return export_onnx(model, cfg, tmp_path_factory.mktemp('onnx') / 'tiny.onnx')


@pytest.fixture(scope='module')
def images():
    return np.random.default_rng(3).integers(0, 256, (3, *yolact_tiny.input_size, 3), dtype=np.uint8)


def test_auto_picks_ort_on_cpu(onnx_path):
    with open_backend(onnx_path) as backend:
        assert isinstance(backend, OrtBackend)
        assert backend.providers == ['CPUExecutionProvider']  # no GPU on the test machines
        assert backend.metadata == metadata_from_config(yolact_tiny)
        assert backend.max_batch is None


def test_equals_the_torch_backend(onnx_path, tiny_checkpoint, images):
    with open_backend(onnx_path, 'ort') as ort_backend, open_backend(tiny_checkpoint, 'torch') as torch_backend:
        got, ref = ort_backend.infer(images), torch_backend.infer(images)
    np.testing.assert_array_equal(got['num_dets'], ref['num_dets'])
    np.testing.assert_array_equal(got['classes'], ref['classes'])
    np.testing.assert_allclose(got['boxes'], ref['boxes'], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(got['masks'], ref['masks'], rtol=0, atol=1e-4)
    for name, value in got.items():
        assert value.dtype == ref[name].dtype and value.shape == ref[name].shape


def test_pipeline_resizes_other_image_sizes(onnx_path):
    """Images need not be at the model size: the pipeline resizes them and the detections come
    back in each image's own pixels."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (240, 400, 3), dtype=np.uint8), rng.integers(0, 256, (500, 300, 3), dtype=np.uint8)]
    with open_backend(onnx_path) as backend:
        detections = predict(backend, frames, score_threshold=0)
    for frame, dets in zip(frames, detections):
        assert dets.image_size == frame.shape[:2] and dets.masks.shape[1:] == frame.shape[:2] and len(dets) > 0
        assert (dets.boxes[:, 2] <= frame.shape[1]).all() and (dets.boxes[:, 3] <= frame.shape[0]).all()


def test_fixed_batch_model_runs_any_batch(onnx_path, images, tmp_path):
    """A file whose batch dimension was fixed (2) takes larger batches in chunks and smaller ones padded."""
    model = onnx.load(onnx_path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / 'fixed.onnx'
    onnx.save(model, fixed)
    with open_backend(fixed) as backend, open_backend(onnx_path) as dynamic:
        assert backend.max_batch == 2
        got, ref = backend.infer(images), dynamic.infer(images)
        assert backend.infer(images[:1])['num_dets'].shape == (1,)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-5)


def test_cli_images_and_video(onnx_path, tmp_path, capsys):
    rng = np.random.default_rng(5)
    folder = tmp_path / 'in'
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f'{i}.png'), rng.integers(0, 256, (200, 260, 3), dtype=np.uint8))
    video = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 5.0, (260, 200))
    for _ in range(5):
        writer.write(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / 'out'
    assert infer_main([str(folder), str(video), '--model', str(onnx_path), '--backend', 'ort', '--batch', '2',
                       '--out', str(out), '--score-thr', '0.1']) == 0
    captured = capsys.readouterr().out
    assert f'5 annotated frame(s) in {out / "clip.avi"}' in captured and '3 annotated image(s)' in captured
    capture = cv2.VideoCapture(str(out / 'clip.avi'))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()
    assert sorted(p.name for p in (out / 'in').iterdir()) == ['0.png', '1.png', '2.png']


# --- bad model files ----------------------------------------------------------------------------

def tiny_onnx(path, outputs, metadata: str | None, image_dims=('batch', 'height', 'width', 3)):
    """A small valid ONNX file with the contract's input (or `image_dims`) and the given output names."""
    images = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, list(image_dims))
    nodes = [helper.make_node('Cast', [INPUT_NAME], [name], to=TensorProto.FLOAT) for name in outputs]
    graph = helper.make_graph(nodes, 'g', [images],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)], ir_version=9)
    if metadata is not None:
        helper.set_model_props(model, {METADATA_KEY: metadata})
    onnx.save(model, path)
    return path


def test_bad_files_are_refused_with_the_fix(onnx_path, tmp_path):
    truncated = tmp_path / 'truncated.onnx'
    truncated.write_bytes(onnx_path.read_bytes()[:5000])
    text = tmp_path / 'text.onnx'
    text.write_text('this is not a model')
    meta = metadata_from_config(yolact_tiny).to_json()
    cases = {
        truncated: 'truncated or not ONNX',
        text: 'truncated or not ONNX',
        tmp_path / 'missing.onnx': 'not found',
        tiny_onnx(tmp_path / 'raw.onnx', RAW_OUTPUTS, meta): '--no-postprocess',
        tiny_onnx(tmp_path / 'foreign.onnx', ['num_dets', 'boxes', 'scores', 'classes', 'masks'], None): 'python -m export',
        tiny_onnx(tmp_path / 'badmeta.onnx', ['num_dets', 'boxes', 'scores', 'classes', 'masks'], '{"config": 1'): 'JSON',
        # An export from before the resize moved into the graph: images at the model size only.
        tiny_onnx(tmp_path / 'fixed_size.onnx', ['num_dets', 'boxes', 'scores', 'classes', 'masks'], meta,
                  ('batch', *yolact_tiny.input_size, 3)): 'any size, resized inside the graph',
    }
    for path, message in cases.items():
        with pytest.raises(BackendError, match=message):
            OrtBackend(path).load()


def test_options_must_match_the_export(onnx_path):
    with pytest.raises(BackendError, match='export again --cross-class'):
        open_backend(onnx_path, 'ort', cross_class=True)
    with pytest.raises(BackendError, match='not yolact_base'):
        open_backend(onnx_path, 'ort', config='yolact_base')
    with pytest.raises(BackendError, match='does not take'):
        open_backend(onnx_path, 'ort', streams=2)


def test_infer_refuses_wrong_inputs(onnx_path, images):
    with open_backend(onnx_path) as backend:
        with pytest.raises(BackendError, match=r'H, W >= 1'):
            backend.infer(images[:, :0])
        with pytest.raises(BackendError, match='uint8'):
            backend.infer(images.astype(np.float32))
    with pytest.raises(BackendError, match='not loaded'):
        backend.infer(images)


# --- execution providers ------------------------------------------------------------------------

def test_cuda_asked_for_and_not_granted_is_a_warning(onnx_path, monkeypatch, capsys, tmp_path):
    import runtime
    from runtime.backends import ort_backend

    with OrtBackend(onnx_path) as backend:  # no CUDA device here: CUDA is not asked for
        assert backend.warnings == []
    with OrtBackend(onnx_path, providers=['CUDAExecutionProvider', 'CPUExecutionProvider']) as backend:
        assert backend.providers == ['CPUExecutionProvider']
        (warning,) = backend.warnings
    assert warning.startswith('CUDA was asked for but onnxruntime') and 'runs on CPUExecutionProvider' in warning
    assert 'yolact-deploy[gpu]' in warning
    # A host with a CUDA device asks for CUDA by default; the CLI says when it was not granted.
    monkeypatch.setattr(ort_backend, 'device_count', lambda: 1)
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((40, 50, 3), np.uint8))
    assert infer_main([str(image), '--model', str(onnx_path), '--out', str(tmp_path / 'out')]) == 0
    err = capsys.readouterr().err
    assert 'onnxruntime on CPUExecutionProvider' in err
    assert f'warning: {warning}' in err.splitlines()
    with pytest.warns(RuntimeWarning, match='CUDA was asked for'):
        runtime.load(onnx_path).close()
