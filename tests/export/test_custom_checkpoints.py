"""Checkpoints a user trained with dbolya/yolact on their own data: official key layout, the
official backbones (ResNet-50, ResNet-101, DarkNet-53), 2, 9 and 81 classes, the original's file
naming with custom config names. Each backbone loads with two class counts read from the weights
and is exported with the third at a small --input-size, and onnxruntime's COCO JSON equals
torch's, names included, with no flag needed downstream of the export. (A ResNet-101 export takes
about 50 s on 2 cores: one per backbone.)"""

import functools
import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from export.__main__ import main as export_main
from yolact_torch.checkpoint import load_model
from yolact_torch.config import get_config
from yolact_torch.user_options import generated_class_names
from yolact_torch.weights_layout import layout_of_config, read_layout
from yolact_torch.yolact import Yolact
from runtime.infer import main as infer_main

# Backbone -> (base config, the custom config name a user gives it, as the original names files).
BACKBONES = {'resnet50': ('yolact_resnet50', 'yolact_resnet50_pascal'),
             'resnet101': ('yolact_base', 'yolact_base_fruit'),
             'darknet53': ('yolact_darknet53', 'yolact_darknet53_shop')}
# Small enough to trace quickly, large enough that every FPN level sees the image.
INPUT_SIZE = 128


@functools.lru_cache(maxsize=None)
def official_state(base: str, classes: int) -> dict:
    """Random weights in the official key layout. The batch norms' statistics are those of one
    random batch, so 50 blocks deep the activations are still finite; class-confidence biases are
    spread widely, so some priors pass the 0.05 score threshold even with 81 classes and the
    parity below compares detections, not an empty list."""
    torch.manual_seed(classes)
    model = Yolact(get_config(base).with_classes(generated_class_names(classes)))
    model.init_weights()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # the running statistics become the batch's
    with torch.no_grad():
        model.train()(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))
    state = model.state_dict()
    bias = 'prediction_layers.0.conf_layer.bias'
    state[bias] = torch.randn(state[bias].shape, generator=torch.Generator().manual_seed(classes)) * 4
    return state


def save_official(folder, backbone: str, classes: int):
    base, trained_name = BACKBONES[backbone]
    path = folder / f'{trained_name}_12_3000.pth'
    torch.save(official_state(base, classes), path)
    return path


# (backbone, classes): every backbone and every count here and again in the export below, in
# other pairs, so each backbone is seen with two counts and each count with two backbones.
LOADED = [('resnet50', 81), ('resnet101', 2), ('darknet53', 9)]
EXPORTED = [('resnet50', 2), ('resnet101', 9), ('darknet53', 81)]


@pytest.mark.parametrize('backbone, classes', LOADED)
def test_loads_with_the_class_count_of_the_weights(tmp_path, backbone, classes):
    path = save_official(tmp_path, backbone, classes)
    base, trained_name = BACKBONES[backbone]
    names = [f'thing {i}' for i in range(classes)]
    model, cfg = load_model(path, class_names=json.dumps(names))
    assert cfg.num_classes == classes + 1 and cfg.class_names == tuple(names)
    assert cfg.name == trained_name and cfg.backbone == get_config(base).backbone
    assert cfg.max_size == get_config(base).max_size
    assert read_layout(model.state_dict()) == layout_of_config(cfg)


def rle_iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([a], [b], [0])[0, 0])


@pytest.mark.slow
@pytest.mark.parametrize('backbone, classes', EXPORTED)
def test_export_and_onnxruntime_equals_torch_with_names_in_coco_json(tmp_path, backbone, classes):
    path = save_official(tmp_path, backbone, classes)
    names = [f'kind-{i}' for i in range(classes)]
    names_file = tmp_path / 'names.txt'
    names_file.write_text('\n'.join(names) + '\n')
    flags = ['--class-names', str(names_file), '--input-size', str(INPUT_SIZE)]
    onnx_path = tmp_path / 'model.onnx'
    assert export_main(['--checkpoint', str(path), '--output', str(onnx_path), *flags]) == 0

    image = tmp_path / 'street.png'
    cv2.imwrite(str(image), np.random.default_rng(classes).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    results = {}
    for model, model_flags in (('onnx', []), ('pth', flags)):  # the ONNX carries names and size itself
        json_path = tmp_path / f'{model}.json'
        model_file = onnx_path if model == 'onnx' else path
        assert infer_main([str(image), '--model', str(model_file), '--score-thr', '0', '--json', str(json_path),
                           '--out', str(tmp_path / model), *model_flags]) == 0
        results[model] = json.loads(json_path.read_text())
    got, ref = results['onnx'], results['pth']
    assert len(ref) > 0, 'the random model should detect something, or this test proves little'
    assert len(got) == len(ref)
    assert all(r['category_name'] == names[r['class_index']] and r['category_id'] == r['class_index'] + 1
               for r in got + ref)
    # Random weights give near-equal scores, whose order float rounding may swap: match each
    # onnxruntime detection to a torch one of the same class, box and score.
    unmatched = list(ref)
    for g in got:
        match = next((r for r in unmatched if r['category_name'] == g['category_name']
                      and np.allclose(r['bbox'], g['bbox'], rtol=0, atol=0.05)
                      and np.isclose(r['score'], g['score'], rtol=1e-4, atol=1e-6)), None)
        assert match is not None, f'no torch detection equals {g}'
        unmatched.remove(match)
        same_mask = g['segmentation'] == match['segmentation'] or rle_iou(g['segmentation'], match['segmentation']) >= 0.99
        assert same_mask, g
