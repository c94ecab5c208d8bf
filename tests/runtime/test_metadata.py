"""runtime.metadata: a model's description is checked field by field when the model loads, and every
wrong field is named with what it should be."""

import json

import pytest

from yolact_torch.config import metadata_from_config, yolact_tiny
from runtime.metadata import MetadataError, ModelMetadata


def good():
    return metadata_from_config(yolact_tiny).to_dict()


def test_round_trip():
    meta = metadata_from_config(yolact_tiny)
    assert ModelMetadata.from_json(meta.to_json(), 'm.onnx') == meta


@pytest.mark.battery
@pytest.mark.parametrize('field, value, message', [
    ('class_names', [], "class_names is [], expected a non-empty list of non-empty names"),
    ('class_names', 'abc', "class_names is 'abc', expected a non-empty list"),  # a string is no list of names
    ('class_names', ['circle', ''], "class_names is ['circle', ''], expected a non-empty list of non-empty names"),
    ('class_names', ['circle'], 'class_names has 1 names but category_ids 5 ids'),
    ('conf_thresh', 'high', "conf_thresh is 'high', expected a number in [0, 1]"),
    ('nms_thresh', float('nan'), 'nms_thresh is nan, expected a number in [0, 1]'),
    ('mask_threshold', 2, 'mask_threshold is 2, expected a number in [0, 1]'),
    ('input_size', [550], 'input_size is [550], expected [height, width] in pixels'),
    ('std_bgr', [1, 0, 1], 'std_bgr is [1, 0, 1], expected three positive numbers'),
    ('top_k', 0, 'top_k is 0, expected a positive integer'),
    ('max_dets', '100', "max_dets is '100', expected a positive integer"),
    ('cross_class', 'no', "cross_class is 'no', expected true or false"),
    ('category_ids', [1, 1, 2], 'category_ids is [1, 1, 2], expected a list of distinct integers'),
    ('config', '', "config is '', expected a config name"),
])
def test_a_wrong_field_is_named_when_the_model_loads(field, value, message):
    data = good()
    assert len(data['class_names']) == 5  # yolact_tiny's shapes: the cases above count on it
    data[field] = value
    with pytest.raises(MetadataError) as info:
        ModelMetadata.from_json(json.dumps(data), 'm.onnx')
    text = str(info.value)
    assert text.startswith('m.onnx: ') and message in text and text.endswith('re-export the model')
    assert '\n' not in text


def test_every_wrong_field_is_named_at_once():
    data = good()
    data.update(top_k=-1, conf_thresh=None)
    with pytest.raises(MetadataError, match='conf_thresh is None.*; top_k is -1'):
        ModelMetadata.from_dict(data, 'm.onnx')
