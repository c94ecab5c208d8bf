"""YOLACT++'s post-processing after MaskAssembly (export/postprocess_nodes.py): the maskiou_net
re-scoring, then the detections stable-sorted by the re-scored score (the original's display
order), in onnxruntime against the torch reference (yolact_torch.postprocess.detect): on a
yolact_plus_tiny export whose re-scoring reorders its detections, on a hand-made case with ties
and a zero re-scored score, and as the benchmark's post-processing-only model. The extra output
box_scores (runtime.contract.BOX_SCORES) carries the class scores before the re-scoring, sorted
with the rest."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.bench_artifacts import main as bench_artifacts_main
from export.onnx_export import export_onnx
from export.postprocess_nodes import postprocess_model
from yolact_torch.box_coding import decode
from yolact_torch.checkpoint import load_model, save_checkpoint
from yolact_torch.config import get_config
from yolact_torch.maskiou import MaskIoUNet
from yolact_torch.postprocess import detect, rescore
from yolact_torch.preprocess import Normalize
from yolact_torch.yolact import Yolact, YolactOutput
from plugins.onnx_model import DECODED_HEAD_NAMES
from runtime.assets import DEMO_MODEL
from runtime.backends import open_backend
from runtime.detections import BBOX_SCORE_KEY
from runtime.pipeline import predict
from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS
from tests.gpu.compare import assert_equal_detections
from tests.yolact_torch.plus_checkpoints import random_plus_state

# Above the default 0.05, so that these random weights leave fewer than D = 100 detections in some
# images and the padding rows show (at 0.35: 60 and 80 detections, and none in the white image).
CONF_THRESH = 0.35


@pytest.fixture(scope='module')
def plus_tiny(tmp_path_factory):
    """(model, cfg, checkpoint, full export, raw export) of yolact_plus_tiny with random weights,
    saved and loaded as the export CLI does."""
    folder = tmp_path_factory.mktemp('plus_tiny')
    cfg = get_config('yolact_plus_tiny')
    model = Yolact(cfg).eval()
    model.load_state_dict(random_plus_state(cfg.name))
    checkpoint = save_checkpoint(folder / 'plus_tiny.pth', model, cfg)
    model, cfg = load_model(checkpoint)
    cfg = dataclasses.replace(cfg, conf_thresh=CONF_THRESH)
    full = export_onnx(model, cfg, folder / 'plus_tiny.onnx')
    raw = export_onnx(model, cfg, folder / 'plus_tiny.raw.onnx', postprocess=False)
    return model, cfg, checkpoint, full, raw


@pytest.fixture(scope='module')
def images(plus_tiny):
    _, cfg, *_ = plus_tiny
    noise = np.random.default_rng(1).integers(0, 256, (*cfg.input_size, 3), dtype=np.uint8)
    return np.stack([noise, np.zeros_like(noise), np.full_like(noise, 255)])


def run(path, feeds: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_rescored_detections_are_sorted_and_equal_torch(plus_tiny, images):
    model, cfg, _, full, _ = plus_tiny
    got = run(full, {INPUT_NAME: images})
    with torch.no_grad():
        out = model(Normalize(cfg)(torch.from_numpy(images)))
        ref = detect(out, model.priors, cfg, maskiou_net=model.maskiou_net)
        nms = detect(out, model.priors, cfg)  # Fast NMS's order, not re-scored
    assert list(got) == [*POSTPROCESS_OUTPUTS, BOX_SCORES]
    assert_equal_detections(got, {k: v.numpy() for k, v in ref._asdict().items()}, cfg.mask_threshold,
                            'yolact_plus_tiny onnxruntime against torch')
    num_dets = got['num_dets'].tolist()
    assert 0 < min(num_dets[:2]) <= max(num_dets[:2]) < 100 and num_dets[2] == 0, num_dets
    moved = 0
    for b, n in enumerate(num_dets):
        scores = got['scores'][b, :n]
        assert (np.diff(scores) <= 0).all(), f'image {b}: scores not non-increasing'
        # The sorted rows are Fast NMS's rows, permuted by a stable descending sort of their
        # re-scored scores (numpy's here, the reference's torch.sort there).
        with torch.no_grad():
            rescored = rescore(nms.scores[b, :n], nms.classes[b, :n], nms.masks[b, :n], model.maskiou_net).numpy()
        order = np.argsort(-rescored, kind='stable')
        moved += int((order != np.arange(n)).sum())
        np.testing.assert_array_equal(got['classes'][b, :n], nms.classes[b, :n].numpy()[order])
        np.testing.assert_allclose(got['boxes'][b, :n], nms.boxes[b, :n].numpy()[order], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(scores, rescored[order], rtol=1e-4, atol=1e-6)
        # The box scores are Fast NMS's class scores, in the same permutation.
        np.testing.assert_allclose(got[BOX_SCORES][b, :n], nms.scores[b, :n].numpy()[order], rtol=1e-4, atol=1e-6)
        assert not got['scores'][b, n:].any() and not got['masks'][b, n:].any()  # padding at the end
    assert moved > 10, 'the re-scoring should reorder the detections, or this test proves little'


def test_box_scores_are_the_scores_before_rescoring_and_equal_torch(plus_tiny, images):
    """box_scores: onnxruntime's equal torch's row for row, and each is its row's re-scored score
    divided by the mask IoU maskiou_net predicts for the row's mask and class (the score before
    the re-scoring); zero in the padding rows."""
    model, cfg, _, full, _ = plus_tiny
    got = run(full, {INPUT_NAME: images})
    with torch.no_grad():
        ref = detect(model(Normalize(cfg)(torch.from_numpy(images))), model.priors, cfg,
                     maskiou_net=model.maskiou_net)
    for b, n in enumerate(got['num_dets'].tolist()):
        np.testing.assert_allclose(got[BOX_SCORES][b, :n], ref.box_scores[b, :n].numpy(), rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            predicted = model.maskiou_net(torch.from_numpy(got['masks'][b, :n, None]))
        iou = predicted.gather(1, torch.from_numpy(got['classes'][b, :n, None]).long())[:, 0].numpy()
        assert (iou > 0).all(), 'a zero predicted IoU leaves the score before it unknown: pick other weights'
        np.testing.assert_allclose(got[BOX_SCORES][b, :n], got['scores'][b, :n] / iou, rtol=1e-4)
        assert not got[BOX_SCORES][b, n:].any() and not ref.box_scores[b, n:].any()


def test_runtime_detections_and_coco_json_score_boxes_with_box_scores(plus_tiny, images):
    """Through the runtime (onnxruntime backend, runtime.pipeline.predict, Detections.to_coco_json):
    each entry's bbox_score is its row's box_scores, its score (the mask's) the re-scored one. The
    torch backend returns box_scores as detect does."""
    model, cfg, checkpoint, full, _ = plus_tiny
    got = run(full, {INPUT_NAME: images})
    with open_backend(full, 'ort') as backend:
        found = predict(backend, list(images), score_threshold=0.0)
        names, ids = backend.metadata.class_names, backend.metadata.category_ids
    for b, dets in enumerate(found):
        n = int(got['num_dets'][b])
        np.testing.assert_array_equal(dets.box_scores, got[BOX_SCORES][b, :n])
        entries = dets.to_coco_json(b, f'{b}.png', names, ids)
        assert [e[BBOX_SCORE_KEY] for e in entries] == got[BOX_SCORES][b, :n].tolist()
        assert [e['score'] for e in entries] == got['scores'][b, :n].tolist()
    assert sum(len(dets) for dets in found) > 0

    with open_backend(checkpoint, 'torch') as backend:
        raw = backend.infer(images)
    checkpoint_cfg = load_model(checkpoint)[1]  # the checkpoint's own thresholds, as the backend's
    with torch.no_grad():
        ref = detect(model(Normalize(checkpoint_cfg)(torch.from_numpy(images))), model.priors, checkpoint_cfg,
                     maskiou_net=model.maskiou_net)
    np.testing.assert_array_equal(raw['num_dets'], ref.num_dets.numpy())
    np.testing.assert_allclose(raw[BOX_SCORES], ref.box_scores.numpy(), rtol=1e-5, atol=1e-7)


def hand_made_maskiou_net(cfg, class_iou: list[float]) -> MaskIoUNet:
    """A maskiou_net that predicts class_iou[k] for class k whatever the mask: zero weights, and the
    last conv's bias (through its ReLU: a negative one predicts 0)."""
    net = MaskIoUNet(cfg).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.maskiou_net[-2].bias.copy_(torch.tensor(class_iou))
    return net


# Seven disjoint boxes (no suppression), one class each, hand-picked class scores; cross-class Fast
# NMS, so that each is one detection (per class, every candidate is also kept, with score 0, for the
# other classes). Fast NMS's order: prior 0 (0.9), 1 and 5 (0.8: prior order), 6 (0.7), 3 (0.6), 2
# (0.4), 4 (0.3).
#            prior: 0    1    2    3    4    5    6
CLASS_OF = [0, 1, 2, 0, 2, 1, 3]
CLASS_SCORE = [0.9, 0.8, 0.4, 0.6, 0.3, 0.8, 0.7]
# The predicted IoU per class (class 3's is 0) re-scores them to 0.225, 0.4, 0.4, 0.15, 0.3, 0.4, 0
# -- 0.8 * 0.5 == 0.4 * 1.0 exactly in float32 -- whose stable descending order is:
CLASS_IOU = [0.25, 0.5, 1.0, -1.0, 1.0]
RESCORED_ORDER = [1, 5, 2, 4, 0, 3, 6]
BOXES = np.array([[[0.1 * i, 0.2, 0.1 * i + 0.08, 0.5] for i in range(len(CLASS_OF))]], np.float32)


def test_ties_keep_fast_nms_order_and_padding_stays_last(tmp_path):
    """The re-scored order with exact ties of one class (priors 1 and 5) and of two (prior 2) keeps
    Fast NMS's order among them, and the two padding rows (D = 9) stay last, behind a detection
    re-scored to 0; boxes, classes and masks move with their scores."""
    cfg = get_config('yolact_plus_tiny')  # 5 classes
    class_of, boxes, expected = CLASS_OF, BOXES, RESCORED_ORDER
    num_priors, max_dets, proto_hw, mask_dim = len(class_of), 9, (64, 64), 4  # the maskiou_net needs >= 63 px
    scores = np.zeros((1, num_priors, cfg.num_classes - 1), np.float32)
    scores[0, np.arange(num_priors), class_of] = CLASS_SCORE
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(1, num_priors, mask_dim)).astype(np.float32)
    proto = rng.normal(size=(1, *proto_hw, mask_dim)).astype(np.float32)

    model = postprocess_model(cfg, num_priors=num_priors, mask_dim=mask_dim, proto_hw=proto_hw, max_dets=max_dets,
                              cross_class=True, maskiou_net=hand_made_maskiou_net(cfg, CLASS_IOU))
    onnx.save(model, tmp_path / 'post.onnx')
    got = run(tmp_path / 'post.onnx', dict(zip(DECODED_HEAD_NAMES, (boxes, scores, coef, proto))))
    n = len(expected)
    assert got['num_dets'].tolist() == [n]
    np.testing.assert_array_equal(got['classes'][0, :n], np.array(class_of)[expected])
    np.testing.assert_array_equal(got['boxes'][0, :n], boxes[0, expected])
    np.testing.assert_array_equal(got['scores'][0, :n], np.float32([0.4, 0.4, 0.4, 0.3, 0.225, 0.15, 0]))
    np.testing.assert_array_equal(got[BOX_SCORES][0, :n], np.float32(CLASS_SCORE)[expected])
    # Each mask went with its own box: zero outside it (the crop), not everywhere.
    columns = np.arange(proto_hw[1])
    for row, prior in enumerate(expected):
        inside = (columns >= np.floor(boxes[0, prior, 0] * proto_hw[1]) - cfg.crop_padding) & \
                 (columns < np.ceil(boxes[0, prior, 2] * proto_hw[1]) + cfg.crop_padding)
        assert got['masks'][0, row][:, inside].any() and not got['masks'][0, row][:, ~inside].any(), row
    for name in ('boxes', 'scores', 'classes', 'masks', BOX_SCORES):
        assert not got[name][0, n:].any(), name

    # The torch reference sorts alike. Its scores come through a softmax, so only the same logits
    # (priors 1 and 5) tie exactly; class 2's IoU 0.9 keeps prior 2 clear of them (0.36; prior 4:
    # 0.27), the order the same.
    conf = np.log(np.concatenate([1 - scores.sum(-1, keepdims=True), scores], -1) + 1e-12)
    centre, size = (boxes[0, :, :2] + boxes[0, :, 2:]) / 2, boxes[0, :, 2:] - boxes[0, :, :2]
    priors = torch.from_numpy(np.concatenate([centre, size], 1))  # cxcywh: zero offsets decode to the boxes
    out = YolactOutput(torch.zeros(1, num_priors, 4), torch.from_numpy(conf).float(), torch.from_numpy(coef),
                       torch.from_numpy(proto), None)
    net = hand_made_maskiou_net(cfg, [0.25, 0.5, 0.9, -1.0, 1.0])
    with torch.no_grad():
        ref = detect(out, priors, cfg, cross_class=True, max_dets=max_dets, maskiou_net=net)
    assert int(ref.num_dets[0]) == n
    np.testing.assert_array_equal(ref.classes[0, :n].numpy(), np.array(class_of)[expected])
    np.testing.assert_allclose(ref.boxes[0, :n].numpy(), boxes[0, expected], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ref.scores[0, :n].numpy(), [0.4, 0.4, 0.36, 0.27, 0.225, 0.15, 0], rtol=1e-6)
    assert not ref.scores[0, n:].any()


def test_the_bench_post_model_is_the_export_after_the_network(plus_tiny, images, tmp_path, capsys):
    """python -m export.bench_artifacts postprocess, given the checkpoint, writes the nodes the full
    export appends, re-scoring and sort included: fed the raw export's decoded head it equals the
    full export. Without the checkpoint, or with one of another config, it refuses in one line."""
    model, cfg, checkpoint, full, raw = plus_tiny
    output = tmp_path / 'post.onnx'
    assert bench_artifacts_main(['postprocess', '--raw', str(raw), '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'maskiou_net' in err and '--checkpoint' in err and not output.exists()
    assert bench_artifacts_main(['postprocess', '--raw', str(raw), '--checkpoint', str(DEMO_MODEL),
                                 '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is a yolact_tiny checkpoint but' in err and not output.exists()

    assert bench_artifacts_main(['postprocess', '--raw', str(raw), '--checkpoint', str(checkpoint),
                                 '--output', str(output)]) == 0
    head = run(raw, {INPUT_NAME: images})
    boxes = decode(torch.from_numpy(head['loc']), torch.from_numpy(head['priors']), cfg.variances).numpy()
    got = run(output, dict(zip(DECODED_HEAD_NAMES, (boxes, head['conf'][..., 1:], head['coef'], head['proto']))))
    want = run(full, {INPUT_NAME: images})
    np.testing.assert_array_equal(got['num_dets'], want['num_dets'])
    np.testing.assert_array_equal(got['classes'], want['classes'])
    for name in ('boxes', 'scores', 'masks'):
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5, err_msg=name)
