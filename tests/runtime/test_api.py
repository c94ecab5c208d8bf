"""The Python API (runtime.load -> Model -> Detections): inputs as paths, BGR or RGB arrays, one or a
list; one clear error per bad input; names, plot(), save(), to_coco_json(); torch, onnxruntime and
(simulated) TensorRT results through the one result type; `import runtime` stays light."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

import runtime
from runtime.api import DEFAULT_SCORE_THRESHOLD, InputError, Model
from runtime.assets import DEMO_MODEL, SAMPLE_IMAGE
from runtime.backends import BackendError
from runtime.detections import Detections, DetectionsError
from runtime.draw import draw_detections
from runtime.errors import ToolkitError
from runtime.images import ImageLoadError, ImageWriteError, load_image
from runtime.pipeline import predict
from tests.runtime.tensorrt.test_lanes import META, SIZE, make_backend, sim  # noqa: F401 (sim: fixture)

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ('boxes', 'scores', 'classes', 'masks')


@pytest.fixture(scope='module')
def demo():
    """The shipped demo model on the torch backend (trained: the sample gives five detections)."""
    with runtime.load(DEMO_MODEL) as model:
        yield model


@pytest.fixture(scope='module')
def sample():
    return load_image(SAMPLE_IMAGE)


def assert_same(got: Detections, expected: Detections):
    assert got.image_size == expected.image_size
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)


def test_a_path_gives_one_result_with_names_and_the_default_threshold(demo, sample):
    results = demo(SAMPLE_IMAGE)
    assert isinstance(results, list) and len(results) == 1
    result = results[0]
    assert isinstance(result, Detections) and len(result) > 0
    assert result.image_size == sample.shape[:2] and result.masks.dtype == bool
    assert result.masks.shape == (len(result), *sample.shape[:2])
    assert (result.scores >= DEFAULT_SCORE_THRESHOLD).all()
    assert result.names == [demo.class_names[c] for c in result.classes]
    assert result.file_name == str(SAMPLE_IMAGE)
    # The same as the pipeline the CLI runs, with the class names attached.
    assert_same(result, predict(demo.backend, [sample], score_threshold=DEFAULT_SCORE_THRESHOLD)[0])
    everything = demo(SAMPLE_IMAGE, score_threshold=0)[0]
    assert len(everything) > len(result)


def test_paths_arrays_and_lists_give_the_same_detections(demo, sample):
    (from_path,) = demo(str(SAMPLE_IMAGE))
    small = cv2.resize(sample, (200, 150))
    listed = demo([SAMPLE_IMAGE, small, sample])
    assert len(listed) == 3
    assert_same(listed[0], from_path)
    assert_same(listed[2], from_path)
    assert (listed[0].file_name, listed[2].file_name) == (str(SAMPLE_IMAGE), '')
    assert listed[1].image_size == (150, 200)
    stacked = demo(np.stack([small, small]))  # a uint8 [B, H, W, 3] array is B images
    assert len(stacked) == 2
    assert_same(stacked[1], listed[1])


def test_rgb_arrays_are_flipped_to_bgr_when_asked(demo, sample):
    rgb = np.ascontiguousarray(sample[..., ::-1])
    (result,) = demo(rgb, rgb=True)
    assert_same(result, demo(sample)[0])
    np.testing.assert_array_equal(result.image, sample)  # plot() draws on the BGR image


def test_batch_size_groups_calls_with_the_same_results(sample):
    with runtime.load(DEMO_MODEL, batch_size=2) as model:
        calls = []
        detect = model.backend.detect
        model.backend.detect = lambda images, *a, **k: calls.append(len(images)) or detect(images, *a, **k)
        results = model([sample] * 3)
    assert calls == [2, 1]
    assert_same(results[1], results[0])
    # torch's kernels for a batch of 1 and of 2 may round differently in the last place.
    np.testing.assert_allclose(results[2].boxes, results[0].boxes, rtol=1e-5)
    np.testing.assert_array_equal(results[2].classes, results[0].classes)


@pytest.mark.parametrize('images, words', [
    (np.zeros((40, 50, 3), np.float32), ['image 0', 'dtype float32', 'uint8', '* 255']),
    (np.zeros((40, 50), np.uint8), ['image 0', 'shape [40, 50]', '[H, W, 3]', 'GRAY2BGR']),
    ([np.zeros((40, 50, 3), np.uint8), np.zeros((40, 50, 4), np.uint8)], ['image 1', 'shape [40, 50, 4]', 'alpha']),
    (np.zeros((0, 50, 3), np.uint8), ['shape [0, 50, 3]']),
    ([], ['no images']),
    (42, ['int', 'file path']),
    ([SAMPLE_IMAGE, [1, 2]], ['image 1 is a list']),
])
def test_bad_input_gets_one_clear_error(demo, images, words):
    with pytest.raises(InputError) as err:
        demo(images)
    assert isinstance(err.value, ToolkitError)
    for word in words:
        assert word in str(err.value)
    assert '\n' not in str(err.value)


def test_missing_file_and_bad_options_are_toolkit_errors(demo, tmp_path):
    with pytest.raises(ImageLoadError, match='no-such.jpg'):
        demo(tmp_path / 'no-such.jpg')
    with pytest.raises(InputError, match='score_threshold'):
        demo(SAMPLE_IMAGE, score_threshold=-0.1)
    with pytest.raises(BackendError, match='model file not found'):
        runtime.load(tmp_path / 'missing.onnx')
    with pytest.raises(BackendError, match="suffix '.bin'"):
        (tmp_path / 'weights.bin').write_bytes(b'0')
        runtime.load(tmp_path / 'weights.bin')
    with pytest.raises(InputError, match='batch_size'):
        runtime.load(DEMO_MODEL, batch_size=0)
    with pytest.raises(InputError, match='a served model takes no options'):
        runtime.load('http://localhost:8000/yolact', num_threads=2)


def test_plot_draws_a_copy_and_save_writes_it(demo, sample, tmp_path):
    image = sample.copy()
    (result,) = demo(image)
    plotted = result.plot()
    np.testing.assert_array_equal(image, sample)  # the input is not drawn on
    np.testing.assert_array_equal(plotted, draw_detections(sample, result, demo.class_names))
    assert (plotted != sample).any(axis=2)[result.masks.any(0)].mean() > 0.9  # every mask is tinted
    saved = result.save(tmp_path / 'annotated.png')
    np.testing.assert_array_equal(cv2.imread(str(saved)), plotted)  # PNG: lossless
    with pytest.raises(ImageWriteError, match='.xyz'):
        result.save(tmp_path / 'annotated.xyz')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['annotated.png']


def test_to_coco_json_uses_the_model_names_and_loads_in_pycocotools(demo, tmp_path):
    (result,) = demo(SAMPLE_IMAGE)
    entries = result.to_coco_json(image_id=7)
    meta = demo.metadata
    assert entries == result.to_coco_json(7, str(SAMPLE_IMAGE), meta.class_names, meta.category_ids)
    assert [e['category_name'] for e in entries] == result.names
    assert [e['category_id'] for e in entries] == [meta.category_ids[c] for c in result.classes]
    assert {e['image_id'] for e in entries} == {7}
    height, width = result.image_size
    ground_truth = COCO()
    ground_truth.dataset = {'images': [{'id': 7, 'height': height, 'width': width}],
                            'categories': [{'id': i, 'name': n} for i, n in zip(meta.category_ids, meta.class_names)],
                            'annotations': []}
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(json.loads(json.dumps(entries)))
    assert len(loaded.anns) == len(result)


def test_selection_keeps_the_names_and_the_image(demo):
    (result,) = demo(SAMPLE_IMAGE)
    top = result[result.scores > np.median(result.scores)]
    assert top.names == result.names[:len(top)]
    assert top.plot().shape == result.image.shape


def test_bare_detections_say_what_they_lack():
    empty_masks = np.zeros((1, 4, 4), bool)
    bare = Detections(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64), empty_masks, (4, 4))
    for call in (lambda: bare.names, bare.plot, lambda: bare.to_coco_json(1)):
        with pytest.raises(DetectionsError, match='runtime.load'):
            call()


def test_the_model_is_a_context_manager_usable_for_many_calls(sample):
    with runtime.load(DEMO_MODEL) as model:
        first, second = model(sample)[0], model(sample)[0]
        assert_same(second, first)
    assert 'closed' in repr(model)
    with pytest.raises(BackendError, match='not loaded'):
        model(sample)


@pytest.mark.slow  # it exports the demo model to ONNX first
def test_onnxruntime_results_come_through_the_same_type(demo, sample, tmp_path):
    from export.onnx_export import export_onnx
    from yolact_torch.checkpoint import load_model

    reference, cfg = load_model(DEMO_MODEL)
    onnx_path = export_onnx(reference, cfg, tmp_path / 'demo.onnx')
    with runtime.load(onnx_path) as model:
        assert 'onnxruntime on CPUExecutionProvider' in model.description
        (result,) = model([SAMPLE_IMAGE])
    (expected,) = demo(sample)
    assert isinstance(result, Detections) and result.names == expected.names
    np.testing.assert_allclose(result.boxes, expected.boxes, atol=0.05)
    assert (result.masks != expected.masks).mean() < 1e-3


def test_tensorrt_results_come_through_the_same_code_path(sim):  # noqa: F811 (fixture)
    backend = make_backend(sim)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]
    images[0][0, 0, 0], images[1][0, 0, 0] = 3, 5  # the simulated engine gives v % (D + 1) detections
    results = Model(backend, batch_size=2)(images, score_threshold=0)
    expected = predict(backend, images, score_threshold=0)
    for result, reference, image in zip(results, expected, images):
        assert_same(result, reference)
        assert len(result) > 0 and result.names == [META.class_names[c] for c in result.classes]
        assert result.plot().shape == image.shape


def test_import_runtime_is_light_and_loads_the_api_on_first_use():
    code = ('import sys, runtime\n'
            'heavy = [m for m in ("numpy", "cv2", "torch", "onnxruntime", "runtime.api") if m in sys.modules]\n'
            'assert not heavy, heavy\n'
            'assert callable(runtime.load) and "torch" not in sys.modules\n'
            'assert "load" in dir(runtime)\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

