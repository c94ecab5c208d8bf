import json
import os
import random

import pytest
import torch

from yolact_torch.checkpoint import FORMAT, CheckpointError, load_model, read_checkpoint, save_checkpoint
from yolact_torch.config import yolact_base, yolact_darknet53, yolact_tiny
from yolact_torch.yolact import Yolact


def random_state_dict(cfg, seed=0):
    """The model's state dict with every tensor replaced by random values (official key layout)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in Yolact(cfg).state_dict().items():
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=g)
        else:
            state[key] = torch.randint(0, 1000, value.shape, generator=g, dtype=value.dtype)
    return state


def assert_loaded(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# Official names and shapes, written out from the original's architecture for COCO (81 scores with
# background, 3 priors per location, 256 FPN features, 32 prototypes).
OFFICIAL_BASE_KEYS = {
    'backbone.conv1.weight': (64, 3, 7, 7),
    'backbone.bn1.running_mean': (64,),
    'backbone.layers.0.0.downsample.0.weight': (256, 64, 1, 1),
    'backbone.layers.0.0.downsample.1.running_var': (256,),
    'backbone.layers.1.0.conv2.weight': (128, 128, 3, 3),
    'backbone.layers.2.22.bn3.weight': (1024,),
    'backbone.layers.3.2.conv3.weight': (2048, 512, 1, 1),
    'fpn.lat_layers.0.weight': (256, 2048, 1, 1),  # reversed: C5 first
    'fpn.lat_layers.2.weight': (256, 512, 1, 1),
    'fpn.pred_layers.1.weight': (256, 256, 3, 3),
    'fpn.downsample_layers.1.weight': (256, 256, 3, 3),
    'proto_net.0.weight': (256, 256, 3, 3),
    'proto_net.8.weight': (256, 256, 3, 3),
    'proto_net.10.weight': (32, 256, 1, 1),
    'prediction_layers.0.upfeature.0.weight': (256, 256, 3, 3),
    'prediction_layers.0.bbox_layer.weight': (3 * 4, 256, 3, 3),
    'prediction_layers.0.conf_layer.weight': (3 * 81, 256, 3, 3),
    'prediction_layers.0.mask_layer.weight': (3 * 32, 256, 3, 3),
    'semantic_seg_conv.weight': (80, 256, 1, 1),
}
OFFICIAL_DARKNET_KEYS = {
    'backbone._preconv.0.weight': (32, 3, 3, 3),
    'backbone.layers.2.0.0.weight': (256, 128, 3, 3),
    'backbone.layers.4.4.conv2.1.running_mean': (1024,),
    'fpn.lat_layers.0.weight': (256, 1024, 1, 1),
    'fpn.lat_layers.2.weight': (256, 256, 1, 1),
}


@pytest.mark.parametrize('cfg, file_name, official_keys, legacy', [
    (yolact_base, 'yolact_base_54_800000.pth', OFFICIAL_BASE_KEYS, True),
    (yolact_darknet53, 'yolact_darknet53_54_800000.pth', OFFICIAL_DARKNET_KEYS, False),
], ids=['base', 'darknet53'])
def test_official_raw_state_dict_round_trip(tmp_path, cfg, file_name, official_keys, legacy):
    state = random_state_dict(cfg)
    for key, shape in official_keys.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith('prediction_layers.1') for k in state)  # the head is shared
    path = tmp_path / file_name
    # The official files predate PyTorch 1.6's zip format; the darknet one is written in the new one.
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    model, loaded_cfg = load_model(path)
    assert loaded_cfg is cfg and not model.training
    assert_loaded(model, state)


@pytest.fixture(scope='module')
def tiny_state():
    return random_state_dict(yolact_tiny, seed=1)


def test_ddp_prefix_and_legacy_keys_are_handled(tmp_path, tiny_state):
    state = {f'module.{k}': v for k, v in tiny_state.items()}
    state['module.backbone.layer1.0.conv1.weight'] = torch.zeros(1)  # pre-"layers" naming: dropped
    state['fpn.downsample_layers.2.weight'] = torch.zeros(1)  # beyond num_downsample: dropped
    del state['module.backbone.bn1.num_batches_tracked']  # pre-0.4.1 checkpoints have no counters
    path = tmp_path / 'yolact_tiny_1_100.pth'
    torch.save(state, path)
    model, cfg = load_model(path)
    assert cfg.name == 'yolact_tiny'
    expected = dict(tiny_state)
    expected['backbone.bn1.num_batches_tracked'] = torch.tensor(0)
    assert_loaded(model, expected)


def test_own_format_round_trip_with_other_classes(tmp_path):
    cfg = yolact_tiny.with_classes(['cat', 'dog'], [17, 18])
    torch.manual_seed(5)
    model = Yolact(cfg)
    path = save_checkpoint(tmp_path / 'run.pth', model, cfg, iteration=7, optimizer={'lr': 0.1})
    assert os.listdir(tmp_path) == ['run.pth']  # no temporary file left behind
    raw = read_checkpoint(path)
    assert raw['format'] == FORMAT and raw['config'] == 'yolact_tiny' and raw['iteration'] == 7
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg.class_names == ('cat', 'dog') and loaded_cfg.category_ids == (17, 18)
    assert loaded_cfg.num_classes == 3 and loaded_cfg.max_size == yolact_tiny.max_size
    assert_loaded(loaded, model.state_dict())
    # explicit config of the same name: classes still come from the checkpoint
    _, named_cfg = load_model(path, 'yolact_tiny')
    assert named_cfg.class_names == ('cat', 'dog')


def test_save_refuses_reserved_extras_and_mismatched_config(tmp_path):
    model = Yolact(yolact_tiny)
    with pytest.raises(ValueError, match='class_names'):
        save_checkpoint(tmp_path / 'x.pth', model, yolact_tiny, class_names=['a'])
    with pytest.raises(ValueError, match='predicts 5 classes'):
        save_checkpoint(tmp_path / 'x.pth', model, yolact_tiny.with_classes(['a']))
    assert not os.listdir(tmp_path)


def raises_checkpoint_error(path, *patterns, config=None):
    with pytest.raises(CheckpointError) as info:
        load_model(path, config)
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, message
    assert isinstance(info.value, ValueError)
    return message


def test_files_that_are_not_checkpoints(tmp_path):
    random_bytes = tmp_path / 'yolact_tiny_1_1.pth'
    random_bytes.write_bytes(random.Random(0).randbytes(4096))
    raises_checkpoint_error(random_bytes, 'not a readable PyTorch checkpoint')

    json_file = tmp_path / 'yolact_tiny_1_2.pth'
    json_file.write_text(json.dumps({'backbone.conv1.weight': [1, 2]}))
    raises_checkpoint_error(json_file, 'not a readable PyTorch checkpoint')

    tensor_file = tmp_path / 'yolact_tiny_1_3.pth'
    torch.save(torch.zeros(3), tensor_file)
    raises_checkpoint_error(tensor_file, 'holds a Tensor')

    not_state = tmp_path / 'yolact_tiny_1_4.pth'
    torch.save({'weights': [1, 2, 3]}, not_state)
    raises_checkpoint_error(not_state, 'is not a state dict')

    raises_checkpoint_error(tmp_path / 'missing.pth', 'does not exist', config='yolact_tiny')


class _Payload:
    """What a malicious checkpoint holds: unpickling it calls os.system."""

    def __reduce__(self):
        return os.system, ('echo this ran',)


@pytest.mark.battery
def test_a_malicious_checkpoint_is_blocked_and_called_unsafe(tmp_path, capfd):
    path = tmp_path / 'yolact_tiny_1_6.pth'
    torch.save({'model': _Payload()}, path)
    message = raises_checkpoint_error(path, 'was blocked: loading it would call or build', 'system',
                                      'The file may be unsafe', 'do not load it by other means')
    assert 'weights_only' not in message and '\n' not in message
    assert 'this ran' not in capfd.readouterr().out


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_truncated_file(tmp_path, tiny_state, legacy):
    whole = tmp_path / 'whole.pth'
    torch.save(tiny_state, whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    truncated = tmp_path / 'yolact_tiny_1_5.pth'
    truncated.write_bytes(data[:len(data) // 2])
    raises_checkpoint_error(truncated, 'not a readable PyTorch checkpoint')


def test_mismatched_keys_name_the_config_and_keys(tmp_path, tiny_state):
    path = tmp_path / 'yolact_tiny_2_1.pth'

    state = dict(tiny_state)
    del state['proto_net.10.weight']
    torch.save(state, path)
    raises_checkpoint_error(path, 'yolact_tiny', 'missing keys: proto_net.10.weight')

    state = dict(tiny_state, **{'maskiou_head.weight': torch.zeros(1)})
    torch.save(state, path)
    raises_checkpoint_error(path, 'yolact_tiny', 'unexpected keys: maskiou_head.weight')

    state = dict(tiny_state, **{'fpn.lat_layers.0.weight': torch.zeros(3, 3, 1, 1)})
    torch.save(state, path)
    # An architecture the weights contradict is named by what differs (yolact_torch.weights_layout) ...
    raises_checkpoint_error(path, 'does not fit config yolact_tiny', 'fpn_features 3 (config 64)',
                            'they fit no known config')

    # ... other shape differences by the keys
    state = dict(tiny_state, **{'fpn.pred_layers.0.weight': torch.zeros(3, 3, 1, 1)})
    torch.save(state, path)
    raises_checkpoint_error(path, 'yolact_tiny', 'shape mismatches: fpn.pred_layers.0.weight [3, 3, 1, 1]')


def test_checkpoint_of_another_config(tmp_path, tiny_state):
    path = tmp_path / 'yolact_tiny_3_1.pth'
    torch.save(tiny_state, path)
    # What differs, what the weights are, and the config they do fit.
    raises_checkpoint_error(path, 'does not fit config yolact_base', 'layers (1, 1, 2, 1) (config (3, 4, 23, 3))',
                            'width 16 (config 64)', 'they fit yolact_tiny: pass --config yolact_tiny',
                            config='yolact_base')

    own = tmp_path / 'own.pth'
    save_checkpoint(own, Yolact(yolact_tiny), yolact_tiny)
    raises_checkpoint_error(own, "saved for config 'yolact_tiny', not 'yolact_base'", config='yolact_base')


def test_yolact_plus_keys_do_not_fit_a_yolact_config(tmp_path, tiny_state):
    path = tmp_path / 'yolact_tiny_4_1.pth'
    extra = 'backbone.layers.1.0.conv2.conv_offset_mask.weight'
    torch.save(dict(tiny_state, **{extra: torch.zeros(1)}), path)
    raises_checkpoint_error(path, 'does not fit config yolact_tiny', 'deformable ((1, 0),) (config ())',
                            'deformable convs in blocks [(1, 0)]; they fit no known config')


def test_yolact_weights_do_not_fit_a_yolact_plus_config(tmp_path, tiny_state):
    # yolact_plus_tiny is yolact_tiny plus DCNs and a maskiou_net: the layout tells them apart.
    path = tmp_path / 'yolact_plus_tiny_4_1.pth'
    torch.save(tiny_state, path)
    raises_checkpoint_error(path, 'does not fit config yolact_plus_tiny', 'maskiou False (config True)',
                            'they fit yolact_tiny: pass --config yolact_tiny')


def test_config_from_the_weights_when_the_name_says_nothing(tmp_path, tiny_state, caplog):
    path = tmp_path / 'weights.pth'
    torch.save(tiny_state, path)
    model, cfg = load_model(path)  # the only known config with this architecture
    assert cfg.name == 'yolact_tiny' and cfg.class_names == ('class_1', 'class_2', 'class_3', 'class_4', 'class_5')
    assert '--class-names' in caplog.text  # one line says how to name them
    assert_loaded(model, tiny_state)
    model, cfg = load_model(path, yolact_tiny)  # an explicit config vouches for its class names
    assert cfg is yolact_tiny
    assert_loaded(model, tiny_state)


def test_own_format_problems(tmp_path, tiny_state):
    path = tmp_path / 'own.pth'
    torch.save({'format': 'yolact-deploy/0', 'model': tiny_state}, path)
    raises_checkpoint_error(path, "format 'yolact-deploy/0'")

    torch.save({'format': FORMAT, 'config': 'yolact_tiny', 'model': tiny_state}, path)
    raises_checkpoint_error(path, 'without class_names, category_ids')

    torch.save({'format': FORMAT, 'config': 'my_config', 'class_names': ['a'], 'category_ids': [1],
                'model': tiny_state}, path)
    raises_checkpoint_error(path, "'my_config', which is not a named config")
