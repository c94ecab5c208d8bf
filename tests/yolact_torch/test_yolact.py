import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yolact_torch.config import CONFIGS, yolact_base, yolact_tiny
from yolact_torch.fpn import FPN
from yolact_torch.head import PredictionHead
from yolact_torch.priors import feature_sizes
from yolact_torch.protonet import make_protonet
from yolact_torch.yolact import Yolact

# test_priors checks feature_sizes against conv arithmetic written out by hand.


def expected_shapes(cfg, batch=1):
    sides = [h for h, _ in feature_sizes(cfg)]
    per_location = 3 * len(cfg.backbone.pred_scales[0])  # three aspect ratios; one scale per level, three for YOLACT++
    num_priors = sum(s * s for s in sides) * per_location
    return {'loc': (batch, num_priors, 4), 'conf': (batch, num_priors, cfg.num_classes),
            'coef': (batch, num_priors, cfg.mask_dim), 'proto': (batch, 2 * sides[0], 2 * sides[0], cfg.mask_dim),
            'segm': (batch, cfg.num_classes - 1, sides[0], sides[0])}


@pytest.mark.parametrize('name', list(CONFIGS))
def test_output_shapes_of_every_config(name):
    """Shape propagation on the meta device (no arithmetic, so the big configs stay cheap)."""
    cfg = CONFIGS[name]
    with torch.device('meta'):
        model = Yolact(cfg)
        x = torch.empty(1, 3, cfg.max_size, cfg.max_size)
        out = model.eval()(x)
        train_out = model.train()(x)
    expected = expected_shapes(cfg)
    for field in ('loc', 'conf', 'coef', 'proto'):
        assert tuple(getattr(out, field).shape) == expected[field], field
    assert out.segm is None
    assert tuple(train_out.segm.shape) == expected['segm']
    assert tuple(model.priors.shape) == (expected['loc'][1], 4)


def test_yolact_base_at_550_numbers():
    """The numbers the YOLACT paper and repository give for ResNet-101 at 550 px."""
    with torch.device('meta'):
        out = Yolact(yolact_base).eval()(torch.empty(1, 3, 550, 550))
    assert out.loc.shape == (1, 19248, 4) and out.proto.shape == (1, 138, 138, 32)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    model = Yolact(yolact_tiny)
    model.init_weights()
    return model.eval()


def test_tiny_real_forward(tiny):
    x = torch.randn(2, 3, yolact_tiny.max_size, yolact_tiny.max_size)
    with torch.no_grad():
        both = tiny(x)
        first = tiny(x[:1])
    expected = expected_shapes(yolact_tiny, batch=2)
    for field in ('loc', 'conf', 'coef', 'proto'):
        assert tuple(getattr(both, field).shape) == expected[field], field
    assert both.coef.abs().max() <= 1 and both.proto.min() >= 0 and both.segm is None
    assert all(torch.isfinite(t).all() for t in both[:4])
    assert 'priors' not in tiny.state_dict()  # rebuilt from the config, not stored
    # batch rows are computed independently
    for field in ('loc', 'conf', 'coef', 'proto'):
        torch.testing.assert_close(getattr(both, field)[:1], getattr(first, field), atol=1e-5, rtol=1e-4)


def original_fpn(fpn, convouts):
    """The original FPN.forward written out: lateral convs stored coarsest first, bilinear
    top-down to the lateral's size, ReLU after the 3x3 prediction convs, stride-2 convs for P6/P7."""
    n = len(convouts)
    out = [None] * n
    x = None
    for i in range(n):
        j = n - 1 - i
        lateral = F.conv2d(convouts[j], fpn.lat_layers[i].weight, fpn.lat_layers[i].bias)
        if x is not None:
            x = F.interpolate(x, size=convouts[j].shape[-2:], mode='bilinear', align_corners=False)
            lateral = x + lateral
        x = lateral
        out[j] = x
    for i in range(n):
        j = n - 1 - i
        out[j] = F.relu(F.conv2d(out[j], fpn.pred_layers[i].weight, fpn.pred_layers[i].bias, padding=1))
    for layer in fpn.downsample_layers:
        out.append(F.conv2d(out[-1], layer.weight, layer.bias, stride=2, padding=1))
    return out


def test_fpn_matches_the_original_forward():
    torch.manual_seed(1)
    in_channels = [8, 16, 32]
    cfg = dataclasses.replace(yolact_tiny, fpn_features=6)
    fpn = FPN(in_channels, cfg)
    assert [layer.in_channels for layer in fpn.lat_layers] == [32, 16, 8]  # stored coarsest first
    convouts = [torch.randn(1, c, s, s) for c, s in zip(in_channels, (21, 11, 6))]  # odd sizes: not exactly x2
    with torch.no_grad():
        ours = fpn(convouts)
        reference = original_fpn(fpn, convouts)
    assert [tuple(o.shape) for o in ours] == [(1, 6, 21, 21), (1, 6, 11, 11), (1, 6, 6, 6), (1, 6, 3, 3), (1, 6, 2, 2)]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)
    assert (ours[-1] < 0).any()  # P7: no ReLU after the downsample convs


def test_protonet_layout():
    net = make_protonet(yolact_tiny.fpn_features, yolact_tiny)
    convs = {name: m for name, m in net.named_children() if isinstance(m, nn.Conv2d)}
    assert sorted(convs, key=int) == ['0', '2', '4', '8', '10']  # the original's Sequential indices
    assert convs['10'].kernel_size == (1, 1) and convs['10'].out_channels == yolact_tiny.mask_dim
    assert isinstance(net[6], nn.Upsample) and net[6].mode == 'bilinear' and not net[6].align_corners
    assert isinstance(net[-1], nn.ReLU)
    with torch.no_grad():
        out = net(torch.randn(1, yolact_tiny.fpn_features, 7, 9))
    assert out.shape == (1, yolact_tiny.mask_dim, 14, 18) and out.min() >= 0


def test_head_rows_follow_prior_order():
    torch.manual_seed(2)
    per_location = 3
    head = PredictionHead(yolact_tiny.fpn_features, yolact_tiny, per_location).eval()
    x = torch.randn(1, yolact_tiny.fpn_features, 4, 5)
    with torch.no_grad():
        loc, conf, coef = head(x)
        features = head.upfeature(x)
        conf_map = head.conf_layer(features)
        coef_map = head.mask_layer(features)
    k, m = yolact_tiny.num_classes, yolact_tiny.mask_dim
    assert loc.shape == (1, 4 * 5 * per_location, 4) and conf.shape == (1, 60, k) and coef.shape == (1, 60, m)
    for row, col, a in [(0, 0, 0), (0, 1, 2), (3, 4, 1), (2, 0, 2)]:
        index = (row * 5 + col) * per_location + a
        torch.testing.assert_close(conf[0, index], conf_map[0, a * k:(a + 1) * k, row, col])
        torch.testing.assert_close(coef[0, index], torch.tanh(coef_map[0, a * m:(a + 1) * m, row, col]))


def test_init_weights_is_xavier_outside_the_backbone():
    torch.manual_seed(3)
    model = Yolact(yolact_tiny)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.init_weights()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    layer = model.prediction_layers[0].conf_layer
    fan_in = layer.in_channels * 9
    fan_out = layer.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith('backbone'):
            assert torch.count_nonzero(module.bias) == 0, name


def test_freeze_bn_keeps_statistics_across_train():
    torch.manual_seed(4)
    model = Yolact(yolact_tiny)
    model.freeze_bn(True)
    model.train()
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    small = 96  # any input size runs; only the batch norms matter here
    model(torch.randn(1, 3, small, small))
    assert not bn.training and not bn.weight.requires_grad
    assert torch.equal(bn.running_mean, before)
    assert model.training and model.fpn.training

    model.freeze_bn(False)
    assert bn.training and bn.weight.requires_grad
    model(torch.randn(2, 3, small, small))
    assert not torch.equal(bn.running_mean, before)


def test_unequal_prior_counts_are_refused():
    base = yolact_tiny.backbone
    odd = dataclasses.replace(yolact_tiny, backbone=dataclasses.replace(
        base, pred_aspect_ratios=(((1,),),) + base.pred_aspect_ratios[1:]))
    with pytest.raises(ValueError, match='same count at every level'):
        Yolact(odd)
