"""The three checkpoint flags, declared once (runtime.checkpoint_flags) and taken by every CLI that
loads a .pth: here runtime.infer and yolact_torch.eval on a 3-class yolact_tiny in the official layout."""

import argparse
import json

import cv2
import numpy as np
import pytest
import torch

from yolact_torch.config import yolact_tiny
from yolact_torch.eval import main as eval_main
from yolact_torch.yolact import Yolact
from runtime.checkpoint_flags import add_checkpoint_flags, checkpoint_flags
from runtime.infer import main as infer_main


def test_only_the_flags_given_are_passed_on():
    parser = argparse.ArgumentParser()
    add_checkpoint_flags(parser)
    assert checkpoint_flags(parser.parse_args([])) == {}
    args = parser.parse_args(['--class-names', 'a,b', '--input-size', '96', '--config-file', 'c.yaml'])
    assert checkpoint_flags(args) == {'class_names': 'a,b', 'input_size': 96, 'config_file': args.config_file}


@pytest.fixture(scope='module')
def three_class(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'yolact_tiny_fruit_1_100.pth'
    torch.save(Yolact(yolact_tiny.with_classes(['a', 'b', 'c'])).state_dict(), path)
    return path


def test_infer_names_the_classes_of_a_checkpoint_trained_elsewhere(three_class, tmp_path):
    image = tmp_path / 'one.png'
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    out = tmp_path / 'dets.json'
    assert infer_main([str(image), '--model', str(three_class), '--class-names', 'apple,pear,plum', '--input-size', '96',
                       '--score-thr', '0', '--json', str(out), '--out', str(tmp_path / 'out')]) == 0
    detections = json.loads(out.read_text())
    assert detections and {d['category_name'] for d in detections} <= {'apple', 'pear', 'plum'}
    assert all(d['category_name'] == ('apple', 'pear', 'plum')[d['class_index']] for d in detections)


def test_eval_reports_a_count_mismatch_in_one_line(three_class, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'one.png'), np.zeros((40, 40, 3), np.uint8))
    data = tmp_path / 'val.json'
    data.write_text(json.dumps({
        'images': [{'id': 1, 'file_name': 'one.png', 'height': 40, 'width': 40}],
        'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [5, 5, 20, 20], 'area': 400, 'iscrowd': 0,
                         'segmentation': [[5, 5, 25, 5, 25, 25, 5, 25]]}],
        'categories': [{'id': 1, 'name': 'x'}]}))
    assert eval_main(['--model', str(three_class), '--data', str(data), '--class-names', 'a,b']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == 'error: --class-names gives 2 class names but the weights predict 3 classes: give 3 names'
