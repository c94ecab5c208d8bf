"""YOLACT++ in the torch reference: the official configs' architecture and key layout, the DCN
layer against plugins/deform_conv/reference.py, the priors, loading official-layout checkpoints,
and mask re-scoring in post-processing."""

import math

import numpy as np
import pytest
import torch

from yolact_torch.checkpoint import load_model
from yolact_torch.config import config_from_filename, yolact_plus_base, yolact_plus_resnet50
from yolact_torch.deform_conv import DCN
from yolact_torch.postprocess import detect
from yolact_torch.yolact import Yolact
from plugins.deform_conv.reference import deform_conv2d as reference_deform_conv2d
from tests.yolact_torch.plus_checkpoints import PLUS_FILES, random_plus_state, small


def shapes(cfg):
    return {k: tuple(v.shape) for k, v in Yolact(cfg).state_dict().items()}


def dcn_blocks(cfg):
    return sorted(k[len('backbone.'):-len('.conv2.conv_offset_mask.weight')] for k in shapes(cfg)
                  if k.endswith('conv2.conv_offset_mask.weight'))


def test_official_key_layout():
    keys = shapes(yolact_plus_resnet50)
    # DCNv2's DCN (dcn_v2.py): weight, bias, and conv_offset_mask with 3 * 9 channels.
    assert keys['backbone.layers.1.0.conv2.weight'] == (128, 128, 3, 3)
    assert keys['backbone.layers.1.0.conv2.bias'] == (128,)
    assert keys['backbone.layers.1.0.conv2.conv_offset_mask.weight'] == (27, 128, 3, 3)
    assert keys['backbone.layers.3.2.conv2.conv_offset_mask.bias'] == (27,)
    assert 'backbone.layers.0.0.conv2.bias' not in keys  # stage 0 keeps plain convs
    # FastMaskIoUNet: make_net's conv/ReLU pairs, then a 1x1 conv to the 80 classes.
    assert keys['maskiou_net.maskiou_net.0.weight'] == (8, 1, 3, 3)
    assert keys['maskiou_net.maskiou_net.8.weight'] == (128, 64, 3, 3)
    assert keys['maskiou_net.maskiou_net.10.weight'] == (80, 128, 1, 1)
    # 9 priors per location (3 scales x 3 aspect ratios).
    assert keys['prediction_layers.0.conf_layer.weight'] == (9 * 81, 256, 3, 3)
    assert keys['prediction_layers.0.mask_layer.weight'] == (9 * 32, 256, 3, 3)


def test_deformable_blocks_follow_dcn_layers_and_interval():
    # ResNet-50, dcn_layers [0, 4, 6, 3], interval 1: every block of stages 1-3 (13 layers).
    assert dcn_blocks(yolact_plus_resnet50) == sorted(
        [f'layers.1.{i}' for i in range(4)] + [f'layers.2.{i}' for i in range(6)] + [f'layers.3.{i}' for i in range(3)])
    # ResNet-101, dcn_layers [0, 4, 23, 3], interval 3: blocks 0, 3, 6, ... of stages 1-3 (11 layers).
    assert dcn_blocks(yolact_plus_base) == sorted(
        ['layers.1.0', 'layers.1.3'] + [f'layers.2.{i}' for i in range(0, 23, 3)] + ['layers.3.0'])


@pytest.mark.parametrize('stride', [1, 2])
def test_dcn_module_equals_the_reference(stride):
    torch.manual_seed(stride)
    dcn = DCN(6, 5, kernel_size=3, stride=stride, padding=1).double()
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0, 0.3)
        dcn.conv_offset_mask.bias.normal_(0, 2.0)  # offsets of a few pixels: samples leave the 9x11 image
        dcn.bias.normal_()
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        got = dcn(x)
        # DCN's forward as dcn_v2.py writes it: thirds o1, o2, m; offset = cat(o1, o2), mask = sigmoid(m).
        o1, o2, m = torch.chunk(dcn.conv_offset_mask(x), 3, dim=1)
    offset = torch.cat((o1, o2), 1)
    assert offset.abs().max() > 2 and not torch.equal(offset, offset.round())
    expected = reference_deform_conv2d(x.numpy(), offset.numpy(), torch.sigmoid(m).numpy(), dcn.weight.detach().numpy(),
                                       dcn.bias.detach().numpy(), stride=stride, padding=1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)


def test_fresh_dcn_is_half_the_plain_conv_plus_bias():
    """Zero offsets sample the plain conv's taps; the mask is sigmoid(0) = 0.5 (as in DCNv2)."""
    torch.manual_seed(0)
    dcn = DCN(4, 3, kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        dcn.bias.normal_()
        x = torch.randn(1, 4, 6, 7)
        plain = torch.nn.functional.conv2d(x, dcn.weight, stride=2, padding=1)
        np.testing.assert_allclose(dcn(x).numpy(), (0.5 * plain + dcn.bias[:, None, None]).numpy(), rtol=0, atol=1e-6)



@pytest.mark.parametrize('stride', [1, 2])
def test_deform_conv2d_gradients_match_finite_differences(stride):
    """The op's registered backward against numerical derivatives, in float64, for every input.
    Offsets are integers plus 0.3..0.7, away from the integer positions where bilinear sampling
    has a kink; some sampling positions fall outside the 5x6 image (zeros there). fast_mode compares
    random projections of the Jacobian, which a wrong gradient of any input fails too."""
    from yolact_torch.deform_conv import deform_conv2d

    g = torch.Generator().manual_seed(stride)
    groups, out_h, out_w = 2, (5 - 1) // stride + 1, (6 - 1) // stride + 1
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, generator=g)
    offset = (torch.randint(-2, 3, (1, 2 * groups * 9, out_h, out_w), generator=g).double()
              + 0.3 + 0.4 * torch.rand(1, 2 * groups * 9, out_h, out_w, generator=g, dtype=torch.float64))
    mask = torch.rand(1, groups * 9, out_h, out_w, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=g)
    bias = torch.randn(3, dtype=torch.float64, generator=g)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *t: deform_conv2d(*t, [stride] * 2, [1, 1], [1, 1], groups), inputs, fast_mode=True)


def test_dcn_trains():
    """A DCN inside a network gets gradients in its weight, bias and offset/mask conv (the op has
    a backward), and one SGD step lowers a loss."""
    torch.manual_seed(0)
    dcn = DCN(3, 2, kernel_size=3, padding=1)
    x, target = torch.randn(2, 3, 6, 6), torch.randn(2, 2, 6, 6)
    loss = torch.nn.functional.mse_loss(dcn(x), target)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dcn.parameters())
    with torch.no_grad():
        for p in dcn.parameters():
            p -= 0.1 * p.grad
        assert torch.nn.functional.mse_loss(dcn(x), target) < loss

def test_priors_three_scales_and_non_square():
    cfg = small(yolact_plus_resnet50)
    priors = Yolact(cfg).priors
    # The first cell of P3 (32 x 32 at 256 px): for each aspect ratio 1, 1/2, 2 the three scales
    # 24 * 2**(j/3) (the original's loop order: aspect-ratio list, scale, ratio).
    first = priors[:9].double()
    centre = 0.5 / 32
    expected = [(centre, centre, 24 * 2 ** (j / 3) * math.sqrt(ar) / 256, 24 * 2 ** (j / 3) / math.sqrt(ar) / 256)
                for j in range(3) for ar in (1, 1 / 2, 2)]
    np.testing.assert_allclose(first.numpy(), expected, rtol=1e-6)
    assert len(priors) == 9 * sum(s * s for s in (32, 16, 8, 4, 2))


@pytest.mark.parametrize('name', sorted(PLUS_FILES))
def test_official_checkpoint_loads_by_file_name(name, tmp_path):
    state = random_plus_state(name)
    path = tmp_path / PLUS_FILES[name]
    torch.save(state, path)
    assert config_from_filename(path).name == name
    model, cfg = load_model(path)
    assert cfg.name == name and model.maskiou_net is not None
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_detect_rescores_with_the_predicted_iou_of_the_class_and_sorts_by_it():
    cfg = small(yolact_plus_resnet50)
    model = Yolact(cfg).eval()
    model.load_state_dict(random_plus_state(cfg.name))
    with torch.no_grad():
        out = model(torch.randn(1, 3, cfg.max_size, cfg.max_size))
        plain = detect(out, model.priors, cfg)
        rescored = detect(out, model.priors, cfg, maskiou_net=model.maskiou_net)
        n = int(plain.num_dets[0])
        assert n > 0 and torch.equal(plain.num_dets, rescored.num_dets)
        # The maskiou net on each cropped mask at prototype resolution, its entry for the detection's class.
        iou = model.maskiou_net(plain.masks[0, :n, None])
        expected = plain.scores[0, :n] * iou[torch.arange(n), plain.classes[0, :n].long()]
    assert (iou > 0).all() and not torch.allclose(expected, plain.scores[0, :n])
    # Fast NMS's rows in the order of their re-scored scores (the original's display order; numpy's
    # stable sort here: ties keep Fast NMS's order).
    order = torch.from_numpy(np.argsort(-expected.numpy(), kind='stable'))
    assert not torch.equal(order, torch.arange(n)), 'the re-scoring should reorder, or this test proves little'
    torch.testing.assert_close(rescored.scores[0, :n], expected[order], rtol=0, atol=0)
    for name in ('boxes', 'classes', 'masks'):
        assert torch.equal(getattr(rescored, name)[0, :n], getattr(plain, name)[0, :n][order]), name
        assert not getattr(rescored, name)[0, n:].any(), name
    assert not rescored.scores[0, n:].any()
