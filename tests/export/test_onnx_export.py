"""The exported ONNX model against the torch reference, and the file's hygiene (checker, shape
inference, metadata, no leftovers). yolact_tiny with random weights, exported once per variant."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main as export_main
from export.bench_artifacts import main as bench_artifacts_main
from export.onnx_export import OPSET, ExportError, build_onnx, check_max_dets, export_onnx, read_metadata
from yolact_torch.box_coding import decode
from yolact_torch.checkpoint import load_model, save_checkpoint
from yolact_torch.config import get_config, metadata_from_config
from yolact_torch.postprocess import detect
from yolact_torch.preprocess import Preprocess
from yolact_torch.yolact import Yolact
from plugins.onnx_model import DECODED_HEAD_NAMES
from runtime.assets import DEMO_MODEL
from runtime.contract import BATCH_DIM, HEIGHT_DIM, INPUT_NAME, METADATA_KEY, POSTPROCESS_OUTPUTS, RAW_OUTPUTS, WIDTH_DIM
from runtime.files import OutputError
from runtime.host_memory import MemoryLimitError
from runtime.metadata import ModelMetadata

CONFIG = 'yolact_tiny'
CROSS_CLASS_MAX_DETS = 300


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = get_config(CONFIG)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny_random.pth'
    save_checkpoint(path, Yolact(cfg), cfg)
    return path


@pytest.fixture(scope='module')
def model_and_cfg(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope='module')
def images(model_and_cfg):
    _, cfg = model_and_cfg
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (4, *cfg.input_size, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def per_class_path(model_and_cfg, tmp_path_factory):
    model, cfg = model_and_cfg
    return export_onnx(model, cfg, tmp_path_factory.mktemp('onnx') / 'tiny.onnx')


@pytest.fixture(scope='module')
def cross_class_path(checkpoint, tmp_path_factory):
    """Exported through the CLI, so the command line is covered too; more detections than top_k."""
    output = tmp_path_factory.mktemp('onnx') / 'tiny_cross.onnx'
    assert export_main(['--checkpoint', str(checkpoint), '--output', str(output), '--cross-class',
                        '--max-dets', str(CROSS_CLASS_MAX_DETS)]) == 0
    return output


@pytest.fixture(scope='module')
def raw_path(model_and_cfg, tmp_path_factory):
    model, cfg = model_and_cfg
    return export_onnx(model, cfg, tmp_path_factory.mktemp('onnx') / 'tiny.raw.onnx', postprocess=False)


def run(path, images):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: images})))


def torch_outputs(model, cfg, images):
    with torch.no_grad():
        return model(Preprocess(cfg)(torch.from_numpy(images)))


def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


# --- numerical parity -------------------------------------------------------------------------

def test_raw_outputs_equal_torch(raw_path, model_and_cfg, images):
    model, cfg = model_and_cfg
    got = run(raw_path, images)
    ref = torch_outputs(model, cfg, images)
    assert list(got) == list(RAW_OUTPUTS)
    np.testing.assert_allclose(got['loc'], ref.loc.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got['conf'], torch.softmax(ref.conf, -1).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['coef'], ref.coef.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got['proto'], ref.proto.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got['priors'], model.priors.numpy())
    assert got['proto'].shape[1:] == ref.proto.shape[1:]  # NHWC


# Smaller than, wider than, around and far above the model size (yolact_tiny: 320 x 320).
IMAGE_SIZES = [(1, 1), (5, 7), (97, 1203), (480, 640), (2160, 3840)]


@pytest.mark.parametrize('size', IMAGE_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_any_image_size_equals_torch(size, raw_path, model_and_cfg):
    """The graph resizes inside: every size runs, and the network sees what torch's Preprocess gives."""
    model, cfg = model_and_cfg
    image = np.random.default_rng(size[0]).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    got = run(raw_path, image)
    ref = torch_outputs(model, cfg, image)
    np.testing.assert_allclose(got['loc'], ref.loc.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got['conf'], torch.softmax(ref.conf, -1).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['coef'], ref.coef.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got['proto'], ref.proto.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize('cross_class', [False, True], ids=['per_class', 'cross_class'])
def test_detections_equal_torch(cross_class, per_class_path, cross_class_path, model_and_cfg, images):
    model, cfg = model_and_cfg
    got = run(cross_class_path if cross_class else per_class_path, images)
    max_dets = CROSS_CLASS_MAX_DETS if cross_class else cfg.max_num_detections
    ref = detect(torch_outputs(model, cfg, images), model.priors, cfg, cross_class=cross_class, max_dets=max_dets)
    assert list(got) == list(POSTPROCESS_OUTPUTS)
    np.testing.assert_array_equal(got['num_dets'], ref.num_dets.numpy())
    assert got['num_dets'].min() > 0, 'the random model should detect something, or this test proves little'
    for b, n in enumerate(got['num_dets']):
        np.testing.assert_array_equal(got['classes'][b, :n], ref.classes[b, :n].numpy())
        np.testing.assert_allclose(got['boxes'][b, :n], ref.boxes[b, :n].numpy(), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got['scores'][b, :n], ref.scores[b, :n].numpy(), rtol=1e-4, atol=1e-6)
        for d in range(n):
            iou = mask_iou(got['masks'][b, d] > cfg.mask_threshold, ref.masks[b, d].numpy() > cfg.mask_threshold)
            assert iou >= 0.99, f'image {b} detection {d}: mask IoU {iou:.4f}'
        # Padding rows are zero.
        for name in ('boxes', 'scores', 'classes', 'masks'):
            assert not got[name][b, n:].any()
    assert got['classes'].dtype == np.int32 and got['num_dets'].dtype == np.int32
    assert got['masks'].dtype == np.float32 and got['masks'].shape[2:] == ref.masks.shape[2:]


def test_cross_class_attribute_is_honoured(cross_class_path, model_and_cfg, images):
    """The cross-class export keeps at most top_k detections, each prior once; per class the same
    inputs give CROSS_CLASS_MAX_DETS (several classes' top_k lists fill it): the attribute is not
    ignored, and the parity test above shows it computes the reference's cross-class result."""
    model, cfg = model_and_cfg
    cross = run(cross_class_path, images)
    per_class = detect(torch_outputs(model, cfg, images), model.priors, cfg, max_dets=CROSS_CLASS_MAX_DETS)
    assert (per_class.num_dets.numpy() == CROSS_CLASS_MAX_DETS).all()
    assert (cross['num_dets'] <= cfg.nms_top_k).all()
    for b, n in enumerate(cross['num_dets']):
        assert len(np.unique(cross['boxes'][b, :n], axis=0)) == n


@pytest.mark.parametrize('variant', ['per_class', 'raw'])
def test_batch_of_four_equals_four_batches_of_one(variant, per_class_path, raw_path, images):
    path = per_class_path if variant == 'per_class' else raw_path
    batched = run(path, images)
    for b in range(len(images)):
        single = run(path, images[b:b + 1])
        for name, value in single.items():
            if name == 'priors':
                continue
            if value.dtype.kind in 'iu':
                np.testing.assert_array_equal(batched[name][b], value[0], err_msg=name)
            else:
                np.testing.assert_allclose(batched[name][b], value[0], rtol=0, atol=1e-5, err_msg=name)


# --- the file ---------------------------------------------------------------------------------

def test_checker_shape_inference_and_interface(per_class_path, model_and_cfg):
    _, cfg = model_and_cfg
    model = onnx.load(per_class_path)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert {o.domain: o.version for o in model.opset_import} == {'': OPSET, 'yolact': 1}
    assert model.ir_version <= 10  # onnxruntime 1.24 and TensorRT 10 parse IR <= 10
    (image_input,) = model.graph.input
    assert image_input.name == INPUT_NAME
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image_input.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:3]] == [BATCH_DIM, HEIGHT_DIM, WIDTH_DIM] and dims[3].dim_value == 3
    inferred_outputs = {o.name: o.type.tensor_type for o in inferred.graph.output}
    assert inferred_outputs['num_dets'].elem_type == onnx.TensorProto.INT32
    assert inferred_outputs['classes'].elem_type == onnx.TensorProto.INT32
    assert [d.dim_value for d in inferred_outputs['masks'].shape.dim[1:]] == [cfg.max_num_detections, 80, 80]


def test_polygraphy_inspects_the_model(per_class_path):
    polygraphy = Path(sys.executable).parent / 'polygraphy'
    result = subprocess.run([str(polygraphy), 'inspect', 'model', str(per_class_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'masks [dtype=float32' in result.stdout and "Other Opsets: {'yolact': 1}" in result.stdout


def test_metadata(per_class_path, cross_class_path, model_and_cfg):
    _, cfg = model_and_cfg
    assert read_metadata(onnx.load(per_class_path)) == metadata_from_config(cfg)
    assert read_metadata(onnx.load(cross_class_path)) == metadata_from_config(
        cfg, cross_class=True, max_dets=CROSS_CLASS_MAX_DETS)
    # onnxruntime (what the runtime reads) sees the same entry.
    session = ort.InferenceSession(str(per_class_path), providers=['CPUExecutionProvider'])
    assert ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY]).config == CONFIG


def test_postprocess_nodes_carry_config_and_plugin_attributes(per_class_path, cross_class_path, model_and_cfg):
    _, cfg = model_and_cfg
    for path, cross_class in ((per_class_path, 0), (cross_class_path, 1)):
        model = onnx.load(path)
        nodes = {n.op_type: n for n in model.graph.node if n.domain == 'yolact'}
        assert set(nodes) == {'FastNMS', 'MaskAssembly'}
        assert {(f.domain, f.name) for f in model.functions} == {('yolact', 'FastNMS'), ('yolact', 'MaskAssembly')}
        nms = {a.name: onnx.helper.get_attribute_value(a) for a in nodes['FastNMS'].attribute}
        assert nms['conf_thresh'] == pytest.approx(cfg.conf_thresh)
        assert nms['iou_thresh'] == pytest.approx(cfg.nms_thresh)
        max_dets = CROSS_CLASS_MAX_DETS if cross_class else cfg.max_num_detections
        assert (nms['top_k'], nms['max_dets'], nms['cross_class']) == (cfg.nms_top_k, max_dets, cross_class)
        assembly = {a.name: onnx.helper.get_attribute_value(a) for a in nodes['MaskAssembly'].attribute}
        assert assembly['crop_padding'] == cfg.crop_padding
        for attrs in (nms, assembly):
            assert (attrs['plugin_namespace'], attrs['plugin_version']) == (b'yolact', b'1')


@pytest.mark.parametrize('variant', ['per_class', 'raw'])
def test_no_leftovers(variant, per_class_path, raw_path):
    model = onnx.load(per_class_path if variant == 'per_class' else raw_path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    assert initializers <= used, f'unused initialisers: {sorted(initializers - used)[:5]}'
    # Constant folding done: every node depends on the images (no node computes from constants only).
    constant_only = [n.name for n in graph.node if all(i in initializers or not i for i in n.input)]
    assert constant_only == []
    # No training-only branch (the semantic segmentation head) and no tracer metadata.
    semantic_seg = get_config(CONFIG).num_classes - 1
    conv_weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert all(t.dims[0] != semantic_seg or t.dims[2:] != [1, 1] for t in conv_weights)
    assert not any(n.metadata_props for n in graph.node)
    assert [p.key for p in model.metadata_props if 'pkg.torch' in p.key] == []


# --- bad input --------------------------------------------------------------------------------

def test_unwritable_output_fails_before_tracing(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(OutputError, match='a_file, which is a file'):
        export_onnx(model, cfg, blocker / 'model.onnx')
    with pytest.raises(OutputError, match='is a folder'):
        export_onnx(model, cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']


def test_bad_max_dets(model_and_cfg):
    model, cfg = model_and_cfg
    with pytest.raises(ExportError, match='max_dets'):
        build_onnx(model, cfg, max_dets=0)


@pytest.mark.battery
def test_a_max_dets_fast_nms_cannot_fill_is_refused_before_tracing(tmp_path, capsys):
    # The demo's 5 classes, 200 candidates each: 100000 rows of padding, 21.7 GB for 4 images.
    demo = DEMO_MODEL
    assert export_main(['--checkpoint', str(demo), '--max-dets', '100000', '--output', str(tmp_path / 'm.onnx')]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ('error: --max-dets 100000 is more than Fast NMS can return: it keeps at most 1000 candidates '
                       '(200 per class x 5 classes); pass --max-dets 1000 or less (default 100)')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.battery
def test_a_max_dets_whose_masks_cannot_fit_is_refused_with_one_that_fits():
    cfg = get_config('yolact_base')  # 80 classes: up to 16000 detections; masks of 138x138
    per_detection = 2 * 138 * 138 * 4
    check_max_dets(cfg, 16000, available=16000 * per_detection)
    with pytest.raises(MemoryLimitError, match=r'^--max-dets 16000 \(masks of 138x138 per detection, for one image\) '
                                               r'would need about 2.4 GB of memory and this machine has 1.2 GB '
                                               r'available: pass --max-dets 8000 or less \(default 100\)$'):
        check_max_dets(cfg, 16000, available=8000 * per_detection)


def test_cli_reports_checkpoint_config_mismatch(checkpoint, tmp_path, capsys):
    output = tmp_path / 'x.onnx'
    assert export_main(['--checkpoint', str(checkpoint), '--config', 'yolact_base', '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'yolact_base' in err and 'Traceback' not in err
    assert not output.exists()


def test_cli_reports_missing_checkpoint(tmp_path, capsys):
    assert export_main(['--checkpoint', str(tmp_path / 'none.pth')]) == 2
    assert 'not found' in capsys.readouterr().err


def test_postprocess_only_model_equals_the_full_graph(per_class_path, raw_path, model_and_cfg, images):
    """The benchmark times the post-processing ops apart from the network, with the model that
    python -m export.bench_artifacts postprocess writes beside the raw export: fed the raw export's decoded
    outputs, it gives what the full export gives."""
    model, cfg = model_and_cfg
    assert bench_artifacts_main(['postprocess', '--raw', str(raw_path)]) == 0
    post_path = raw_path.with_name('tiny.postprocess.onnx')
    onnx.checker.check_model(onnx.load(post_path), full_check=True)
    raw = run(raw_path, images)
    boxes = decode(torch.from_numpy(raw['loc']), torch.from_numpy(raw['priors']), cfg.variances).numpy()
    session = ort.InferenceSession(str(post_path), providers=['CPUExecutionProvider'])
    feed = dict(zip(DECODED_HEAD_NAMES, (boxes, raw['conf'][..., 1:], raw['coef'], raw['proto'])))
    got = dict(zip(POSTPROCESS_OUTPUTS, session.run(list(POSTPROCESS_OUTPUTS), feed)))
    full = run(per_class_path, images)
    np.testing.assert_array_equal(got['num_dets'], full['num_dets'])
    np.testing.assert_array_equal(got['classes'], full['classes'])
    for name in ('boxes', 'scores', 'masks'):
        np.testing.assert_allclose(got[name], full[name], rtol=0, atol=1e-5, err_msg=name)


def test_postprocess_only_refuses_a_full_export_in_one_line(per_class_path, tmp_path, capsys):
    output = tmp_path / 'post.onnx'
    assert bench_artifacts_main(['postprocess', '--raw', str(per_class_path), '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'not the raw head' in err and '--no-postprocess' in err
    assert not output.exists()
