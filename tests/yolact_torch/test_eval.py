"""COCO evaluation: ground truth fed back as predictions scores 1.0, through COCOeval alone and
through the whole runtime path (backend -> Detections -> COCO JSON); boxes scored with their
bbox_score where a YOLACT++ model gives one; the CLI on a real checkpoint, YOLACT and YOLACT++."""

import copy
import dataclasses
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from yolact_torch.checkpoint import save_checkpoint
from yolact_torch.config import get_config, metadata_from_config
from yolact_torch.data.coco import CocoDataset
from yolact_torch.data.shapes import ShapesSpec, write_split
import yolact_torch.eval
import yolact_torch.postprocess
from yolact_torch.eval import EvalError, coco_metrics, main, predict_dataset
from yolact_torch.postprocess import rescore
from yolact_torch.yolact import Yolact
from runtime.assets import DEMO_PLUS_MODEL
from runtime.backends import open_backend
from runtime.backends.base import Backend
from runtime.contract import BOX_SCORES
from runtime.detections import BBOX_SCORE_KEY
from tests.faults import disk_full_after

CFG = get_config('yolact_tiny')
SMALL = ShapesSpec(image_size=128, radius=(14, 40), min_visible_pixels=60)


@pytest.fixture(scope='module')
def val_json(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp('shapes'), 'val', 4, seed=2, spec=SMALL, progress=False)


def _ground_truth_as_results(data):
    return [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
             'segmentation': a['segmentation'], 'score': 1.0} for a in data['annotations']]


def test_ground_truth_as_predictions_scores_one(val_json):
    data = json.loads(val_json.read_text())
    metrics = coco_metrics(data, _ground_truth_as_results(data))
    assert metrics == {'box': {'AP': 1.0, 'AP50': 1.0, 'AP75': 1.0}, 'mask': {'AP': 1.0, 'AP50': 1.0, 'AP75': 1.0}}


def test_wrong_classes_and_no_results_score_zero(val_json):
    data = json.loads(val_json.read_text())
    results = _ground_truth_as_results(data)
    for r in results:
        r['category_id'] = r['category_id'] % len(data['categories']) + 1
    assert coco_metrics(data, results)['mask']['AP'] == 0.0
    assert coco_metrics(data, [])['box'] == {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}


def test_boxes_alone_do_not_make_good_masks(val_json):
    # A box-shaped mask is a poor mask for circles, stars and rings: the two metrics are separate.
    data = json.loads(val_json.read_text())
    results = _ground_truth_as_results(data)
    height = width = SMALL.image_size
    for r in results:
        x, y, w, h = r['bbox']
        box_mask = np.zeros((height, width), np.uint8)
        box_mask[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(box_mask))
        r['segmentation'] = {'size': rle['size'], 'counts': rle['counts'].decode('ascii')}
    metrics = coco_metrics(data, results)
    assert metrics['box']['AP'] == 1.0 and metrics['mask']['AP'] < 0.9


def test_boxes_are_scored_with_their_bbox_score(val_json):
    """YOLACT++ entries carry two scores, as the original's COCO evaluation: false positives in a
    corner whose mask score (score) outranks every true detection but whose box score (bbox_score)
    ranks below them cost mask AP and no box AP; swapped, the other way round."""
    data = json.loads(val_json.read_text())
    corner = np.zeros((SMALL.image_size, SMALL.image_size), np.uint8)
    corner[:3, :3] = 1
    rle = mask_utils.encode(np.asfortranarray(corner))
    corner_rle = {'size': rle['size'], 'counts': rle['counts'].decode('ascii')}

    def results(true_scores, false_scores):
        entries = []
        for truth in _ground_truth_as_results(data):
            entries.append(dict(truth, score=true_scores[0], **{BBOX_SCORE_KEY: true_scores[1]}))
            entries.append(dict(truth, bbox=[0, 0, 3, 3], segmentation=corner_rle, score=false_scores[0],
                                **{BBOX_SCORE_KEY: false_scores[1]}))
        return entries

    metrics = coco_metrics(data, results(true_scores=(0.5, 0.5), false_scores=(0.9, 0.1)))
    assert metrics['box']['AP'] == 1.0 and metrics['mask']['AP'] < 0.7, metrics
    metrics = coco_metrics(data, results(true_scores=(0.5, 0.5), false_scores=(0.1, 0.9)))
    assert metrics['mask']['AP'] == 1.0 and metrics['box']['AP'] < 0.7, metrics


class GroundTruthBackend(Backend):
    """A stand-in backend that 'detects' exactly the ground truth of the image it is given (looked
    up by pixel content); masks at the input resolution so pasting reproduces them. box_score: a
    YOLACT++ model's box_scores output holding it for every detection (None: a YOLACT model's
    outputs)."""

    name = 'ground-truth'

    def __init__(self, dataset: CocoDataset, num_classes: int, box_score: float | None = None):
        super().__init__('ground-truth')
        self.dataset, self.num_classes, self.box_score = dataset, num_classes, box_score

    def _load_impl(self):
        size = SMALL.image_size
        cfg = dataclasses.replace(CFG.with_classes([f'c{i}' for i in range(self.num_classes)]), max_size=size)
        self.metadata = metadata_from_config(cfg)
        self.truth = {}
        for i in range(len(self.dataset)):
            sample = self.dataset[i]
            self.truth[sample.image.tobytes()] = sample

    def _infer_impl(self, images):
        batch, size, max_dets = len(images), SMALL.image_size, 20
        raw = {'num_dets': np.zeros(batch, np.int32), 'boxes': np.zeros((batch, max_dets, 4), np.float32),
               'scores': np.zeros((batch, max_dets), np.float32), 'classes': np.zeros((batch, max_dets), np.int32),
               'masks': np.zeros((batch, max_dets, size, size), np.float32)}
        for b, image in enumerate(images):
            sample = self.truth[image.tobytes()]
            n = len(sample.labels)
            raw['num_dets'][b] = n
            raw['boxes'][b, :n] = sample.boxes / size
            raw['scores'][b, :n] = 1.0
            raw['classes'][b, :n] = sample.labels
            raw['masks'][b, :n] = sample.masks
        if self.box_score is not None:
            raw[BOX_SCORES] = np.where(np.arange(max_dets) < raw['num_dets'][:, None], np.float32(self.box_score),
                                       np.float32(0))
        return raw

    def _close_impl(self):
        pass


def test_runtime_path_on_ground_truth_scores_one(val_json):
    dataset = CocoDataset(val_json)
    with GroundTruthBackend(dataset, len(dataset.class_names)) as backend:
        results = predict_dataset(backend, dataset, batch_size=3, progress=False)
    assert {r['image_id'] for r in results} == set(dataset.image_ids)
    metrics = coco_metrics(json.loads(val_json.read_text()), copy.deepcopy(results))
    assert metrics['mask'] == {'AP': 1.0, 'AP50': 1.0, 'AP75': 1.0}
    assert metrics['box']['AP'] == 1.0
    # A YOLACT model's entries: one score, as before box_scores existed.
    assert {frozenset(r) for r in results} == {frozenset(['image_id', 'file_name', 'class_index', 'category_id',
                                                          'category_name', 'bbox', 'score', 'segmentation'])}


def test_runtime_path_carries_a_yolact_plus_models_box_scores(val_json):
    """A model with box_scores: each COCO entry's bbox_score is its box score, its score the
    (re-scored) score; the entries are otherwise those of the model without them."""
    dataset = CocoDataset(val_json)
    with GroundTruthBackend(dataset, len(dataset.class_names)) as backend:
        plain = predict_dataset(backend, dataset, batch_size=3, progress=False)
    with GroundTruthBackend(dataset, len(dataset.class_names), box_score=0.25) as backend:
        results = predict_dataset(backend, dataset, batch_size=3, progress=False)
    assert len(results) == len(plain) > 0
    assert all(r[BBOX_SCORE_KEY] == 0.25 and r['score'] == 1.0 for r in results)
    assert [{k: v for k, v in r.items() if k != BBOX_SCORE_KEY} for r in results] == plain


def test_model_with_other_classes_is_refused(val_json):
    dataset = CocoDataset(val_json)
    with GroundTruthBackend(dataset, 3) as backend:
        with pytest.raises(EvalError, match='3 classes .* 5 categories'):
            predict_dataset(backend, dataset, progress=False)


def test_cli_on_a_checkpoint_writes_metrics(val_json, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / 'random_tiny.pth', Yolact(CFG), CFG)
    metrics_path = tmp_path / 'out' / 'metrics.json'
    assert main(['--model', str(checkpoint), '--data', str(val_json), '--metrics', str(metrics_path)]) == 0
    printed = capsys.readouterr().out
    assert 'AP50' in printed and 'mask' in printed
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {'box', 'mask'}
    for values in metrics.values():
        assert set(values) == {'AP', 'AP50', 'AP75'} and all(0 <= v <= 1 for v in values.values())


def test_cli_errors(val_json, tmp_path, capsys):
    assert main(['--model', str(tmp_path / 'none.pth'), '--data', str(val_json)]) == 1
    assert 'not found' in capsys.readouterr().err
    bad = tmp_path / 'bad.json'
    bad.write_text('{"images": []}')
    assert main(['--data', str(bad), '--model', str(tmp_path / 'none.pth')]) == 1
    assert 'not a COCO instances file' in capsys.readouterr().err


@pytest.mark.battery
@pytest.mark.parametrize('where', ('folder', 'under a file'))
def test_unwritable_metrics_are_refused_before_the_evaluation(val_json, tmp_path, capsys, monkeypatch, where):
    (tmp_path / 'a_file').write_bytes(b'')
    metrics = tmp_path if where == 'folder' else tmp_path / 'a_file' / 'metrics.json'

    def no_evaluation(*args, **kwargs):
        raise AssertionError('the evaluation ran')

    monkeypatch.setattr(yolact_torch.eval, 'evaluate', no_evaluation)
    assert main(['--data', str(val_json), '--metrics', str(metrics)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: --metrics {metrics} ') and err.count('\n') == 1
    assert ('is a folder' if where == 'folder' else 'a_file, which is a file') in err


@pytest.mark.battery
def test_metrics_on_a_full_disk_are_one_line(val_json, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / 'random_tiny.pth', Yolact(CFG), CFG)
    metrics = tmp_path / 'metrics.json'
    with disk_full_after(100):
        assert main(['--model', str(checkpoint), '--data', str(val_json), '--metrics', str(metrics)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f'error: cannot write {metrics}: File too large; free space there or choose another path\n')
    assert 'Traceback' not in err and not metrics.exists()


def test_cli_on_the_yolact_plus_demo_writes_metrics(val_json, tmp_path):
    """YOLACT++ (the shipped yolact_plus_tiny) through the same evaluation: trained, it finds the
    shapes of these smaller images too."""
    metrics_path = tmp_path / 'metrics.json'
    assert main(['--model', str(DEMO_PLUS_MODEL), '--data', str(val_json), '--metrics', str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {'box', 'mask'}
    for values in metrics.values():
        assert set(values) == {'AP', 'AP50', 'AP75'} and all(0 < v <= 1 for v in values.values())


def test_yolact_plus_results_carry_both_scores(val_json, monkeypatch):
    """Each COCO result of the YOLACT++ demo carries, as the original's evaluation scores them, the
    re-scored score (the class score times the IoU maskiou_net predicts) for its mask and the class
    score for its box (bbox_score)."""
    calls = []

    def recorded(scores, classes, masks, maskiou_net):
        calls.append((scores, rescore(scores, classes, masks, maskiou_net)))
        return calls[-1][1]

    monkeypatch.setattr(yolact_torch.postprocess, 'rescore', recorded)
    dataset = CocoDataset(val_json)
    with open_backend(DEMO_PLUS_MODEL, 'torch') as backend:
        results = predict_dataset(backend, dataset, progress=False)
    assert len(calls) == len(dataset) and all('bbox' in r and 'segmentation' in r for r in results)
    class_scores, rescored = (np.sort(np.concatenate([c[i].numpy() for c in calls])) for i in (0, 1))
    got = np.sort([r['score'] for r in results])
    np.testing.assert_allclose(got, rescored, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.sort([r[BBOX_SCORE_KEY] for r in results]), class_scores, rtol=1e-6, atol=1e-7)
    assert np.abs(got - class_scores).max() > 0.01
