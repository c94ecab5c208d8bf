"""Checkpoints trained elsewhere: what the weights say (yolact_torch.weights_layout), what the user adds
(yolact_torch.user_options: --class-names, --input-size, --config-file), and one clear line for every
bad case. yolact_tiny weights in the official key layout keep these fast; the official backbones
are in tests/export/test_custom_checkpoints.py."""

import dataclasses
import json

import pytest
import torch

from export.__main__ import main as export_main
from yolact_torch.checkpoint import CheckpointError, load_model
from yolact_torch.config import ConfigError, yolact_darknet53, yolact_resnet50, yolact_tiny
from yolact_torch.user_options import check_input_size, parse_class_names, read_config_file
from yolact_torch.weights_layout import configs_fitting, layout_of_config, read_layout
from yolact_torch.yolact import Yolact

THREE = ('apple', 'pear', 'plum')


def tiny_weights(classes: int, seed: int = 0) -> dict:
    """A yolact_tiny state dict (official key layout) for `classes` classes, random weights."""
    torch.manual_seed(seed)
    return Yolact(yolact_tiny.with_classes([f'c{i}' for i in range(classes)])).state_dict()


@pytest.fixture(scope='module')
def three_class(tmp_path_factory):
    """A 3-class yolact_tiny trained 'with dbolya/yolact': the original's file naming."""
    path = tmp_path_factory.mktemp('ckpt') / 'yolact_tiny_fruit_12_3000.pth'
    torch.save(tiny_weights(3), path)
    return path


def test_layout_read_from_the_weights_equals_the_configs():
    for cfg in (yolact_tiny, yolact_tiny.with_classes(THREE)):
        assert read_layout(Yolact(cfg).state_dict()) == layout_of_config(cfg)
    found = read_layout(tiny_weights(3))
    assert (found.backbone, found.layers, found.num_classes, found.mask_dim, found.priors_per_location,
            found.fpn_levels) == ('resnet', (1, 1, 2, 1), 4, 32, 3, 5)
    assert configs_fitting(found) == ['yolact_tiny']
    # ResNet-50 and DarkNet-53 by their implied layouts (the real weights: tests/export/test_custom_checkpoints.py)
    assert layout_of_config(yolact_resnet50).layers == (3, 4, 6, 3)
    assert configs_fitting(layout_of_config(yolact_darknet53)) == ['yolact_darknet53']


def test_class_count_from_the_weights_and_base_config_from_the_name(three_class, caplog):
    model, cfg = load_model(three_class)
    assert cfg.name == 'yolact_tiny_fruit'  # the config it was trained with, as the original names files
    assert cfg.num_classes == 4 and cfg.class_names == ('class_1', 'class_2', 'class_3')
    assert cfg.category_ids == (1, 2, 3) and cfg.max_size == yolact_tiny.max_size
    assert 'class_1..class_3' in caplog.text and '--class-names' in caplog.text
    assert model.prediction_layers[0].conf_layer.out_channels == 3 * 4


@pytest.mark.parametrize('form', ['commas', 'json', 'lines_file', 'json_file'])
def test_class_names_in_every_form(three_class, tmp_path, form):
    value = {'commas': 'apple, pear,plum', 'json': json.dumps(THREE)}.get(form)
    if form == 'lines_file':
        value = tmp_path / 'names.txt'
        value.write_text('apple\npear\n\nplum\n')
    elif form == 'json_file':
        value = tmp_path / 'names.json'
        value.write_text(json.dumps(THREE))
    assert parse_class_names(str(value)) == THREE
    _, cfg = load_model(three_class, class_names=str(value))
    assert cfg.class_names == THREE


def test_config_file_fields_apply_over_the_base_config(three_class, tmp_path):
    fields = {'name': 'fruit_stand', 'max_size': 256, 'class_names': list(THREE), 'num_classes': 4,
              'nms_top_k': 50, 'nms_conf_thresh': 0.1, 'nms_thresh': 0.4, 'max_num_detections': 20, 'mask_dim': None,
              'backbone': {'selected_layers': [1, 2, 3], 'pred_scales': [[20], [40], [80], [160], [320]],
                           'pred_aspect_ratios': [[[1, 0.5, 2]]] * 5}}
    yaml_file = tmp_path / 'fruit.yaml'
    yaml_file.write_text('\n'.join(f'{k}: {json.dumps(v)}' for k, v in fields.items()))  # JSON values are YAML
    json_file = tmp_path / 'fruit.json'
    json_file.write_text(json.dumps(fields))
    for path in (yaml_file, json_file):
        _, cfg = load_model(three_class, config_file=path)
        assert (cfg.name, cfg.max_size, cfg.class_names, cfg.nms_top_k, cfg.conf_thresh, cfg.nms_thresh,
                cfg.max_num_detections, cfg.mask_dim) == ('fruit_stand', 256, THREE, 50, 0.1, 0.4, 20, 32)
        assert cfg.backbone.pred_scales == ((20,), (40,), (80,), (160,), (320,))
    # The flags win over the file.
    _, cfg = load_model(three_class, config_file=json_file, input_size=192, class_names='a,b,c')
    assert cfg.max_size == 192 and cfg.class_names == ('a', 'b', 'c')


def one_line_error(error_type, call, *expected):
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert '\n' not in message, message
    for text in expected:
        assert text in message, message
    return message


def test_names_that_do_not_match_the_count(three_class):
    one_line_error(ConfigError, lambda: load_model(three_class, class_names='a,b'),
                   'gives 2 class names but the weights predict 3 classes')
    one_line_error(ConfigError, lambda: parse_class_names('["a", "b"'), '--class-names: not valid JSON')
    one_line_error(ConfigError, lambda: parse_class_names('a,,b'), 'class names must be non-empty strings')


def test_config_file_with_an_unknown_field_or_a_wrong_type(three_class, tmp_path):
    cases = {'typo.json': ({'nms_tresh': 0.5}, "unknown field 'nms_tresh'"),
             'type.json': ({'max_size': '550'}, "field max_size must be a positive integer, got '550'"),
             'backbone.yaml': ({'backbone': {'selected_layer': [1]}}, "unknown field 'backbone.selected_layer'"),
             'scales.json': ({'backbone': {'pred_scales': [24, 48]}}, 'field backbone.pred_scales must be a list'),
             'classes.json': ({'num_classes': 81}, 'num_classes 81 (80 classes + background) but the weights predict 3'),
             'levels.json': ({'backbone': {'pred_scales': [[24], [48]]}}, 'pred_scales has 2'),
             'list.yaml': ([1, 2], 'expected a mapping')}
    for name, (fields, expected) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(fields))
        one_line_error(ConfigError, lambda: read_config_file(path) and load_model(three_class, config_file=path),
                       str(path), expected)
    bad_yaml = tmp_path / 'bad.yaml'
    bad_yaml.write_text('name: [unclosed\n')
    one_line_error(ConfigError, lambda: read_config_file(bad_yaml), 'not valid YAML')


@pytest.mark.parametrize('size', [0, -5, 40])
def test_input_size_the_network_does_not_take(three_class, size):
    one_line_error(ConfigError, lambda: load_model(three_class, input_size=size),
                   f'--input-size {size}: the network needs an input size of at least')


def test_smallest_accepted_input_size_is_a_true_pyramid():
    message = one_line_error(ConfigError, lambda: check_input_size(dataclasses.replace(yolact_tiny, max_size=64)),
                             'at least')
    smallest = int(message.split('at least ')[1].split()[0])
    check_input_size(dataclasses.replace(yolact_tiny, max_size=smallest))  # accepted
    with pytest.raises(ConfigError):
        check_input_size(dataclasses.replace(yolact_tiny, max_size=smallest - 1))


def test_weights_that_fit_no_known_architecture(tmp_path):
    state = tiny_weights(3)
    state = {k: v for k, v in state.items() if not k.startswith('backbone.layers.2.1.')}  # a block fewer
    for name in ('yolact_tiny_fruit_1_1.pth', 'weights.pth'):
        path = tmp_path / name
        torch.save(state, path)
        one_line_error(CheckpointError, lambda: load_model(path), 'blocks (1, 1, 1, 1)', '3 classes',
                       'fits no known config' if name == 'weights.pth' else 'they fit no known config')
    not_yolact = tmp_path / 'yolact_tiny_1_1.pth'
    torch.save({'conv.weight': torch.zeros(1)}, not_yolact)
    one_line_error(CheckpointError, lambda: load_model(not_yolact), 'not a YOLACT state dict', 'backbone.conv1.weight')


def test_export_cli_reports_one_line_and_writes_nothing(three_class, tmp_path, capsys):
    output = tmp_path / 'out.onnx'
    for flags, expected in ((['--class-names', 'a,b'], 'gives 2 class names but the weights predict 3'),
                            (['--input-size', '40'], '--input-size 40')):
        assert export_main(['--checkpoint', str(three_class), '--output', str(output), *flags]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
        assert len(errors) == 1 and expected in errors[0], errors
        assert not output.exists()
