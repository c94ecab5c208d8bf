"""The DeformConv2d reference on cases whose answer is known: DCNv2's layout and sampling rule as
written in plugins/deform_conv/reference.py and plugins/README.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugins.deform_conv.reference import bilinear, deform_conv2d


def conv2d(x, weight, bias, **attributes):
    """torch's plain convolution in float64."""
    return F.conv2d(torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(weight, np.float64)),
                    None if bias is None else torch.from_numpy(np.asarray(bias, np.float64)), **attributes).numpy()


def random_inputs(rng, *, batch=1, channels=3, out_channels=4, size=(6, 7), kernel=(3, 3), groups=1, **attributes):
    """x, weight, bias and zero offsets / unit mask at the output size of a plain conv."""
    x = rng.normal(size=(batch, channels, *size))
    weight = rng.normal(size=(out_channels, channels, *kernel))
    bias = rng.normal(size=out_channels)
    ho, wo = conv2d(x, weight, None, **attributes).shape[2:]
    k = kernel[0] * kernel[1]
    return x, np.zeros((batch, 2 * groups * k, ho, wo)), np.ones((batch, groups * k, ho, wo)), weight, bias


def moved_window(x, dy: int, dx: int, padding: int):
    """x zero-padded by `padding` on every side, then read (dy, dx) further on: conv2d of this with
    padding 0 (stride 1, dilation 1) is the deformable convolution with every offset (dy, dx). The
    zero padding moves too: a moved sample reads the image wherever it lands inside it."""
    margin = padding + max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (0, 0), (margin, margin), (margin, margin)))
    height, width = x.shape[-2:]
    top, left = margin - padding + dy, margin - padding + dx
    return padded[..., top:top + height + 2 * padding, left:left + width + 2 * padding]


CONV_ATTRIBUTES = [dict(stride=1, padding=1, dilation=1), dict(stride=2, padding=1, dilation=1),
                   dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)), dict(stride=1, padding=2, dilation=2),
                   dict(stride=3, padding=0, dilation=1)]


@pytest.mark.parametrize('attributes', CONV_ATTRIBUTES, ids=str)
def test_zero_offsets_and_unit_mask_are_a_plain_convolution(attributes):
    rng = np.random.default_rng(0)
    x, offset, mask, weight, bias = random_inputs(rng, batch=2, **attributes)
    got = deform_conv2d(x, offset, mask, weight, bias, **attributes)
    assert got.dtype == np.float64 and got.shape == offset.shape[:1] + (4,) + offset.shape[2:]
    np.testing.assert_allclose(got, conv2d(x, weight, bias, **attributes), rtol=0, atol=1e-12)
    # a non-square kernel too, and no bias
    x, offset, mask, weight, _ = random_inputs(rng, kernel=(2, 3), **attributes)
    np.testing.assert_allclose(deform_conv2d(x, offset, mask, weight, None, **attributes),
                               conv2d(x, weight, None, **attributes), rtol=0, atol=1e-12)


@pytest.mark.parametrize('dy, dx', [(1, -2), (-3, 0), (0, 1), (2, 2)])
def test_integer_offsets_are_a_shifted_convolution(dy, dx):
    """Offset channel 2k is dy (rows), 2k + 1 is dx (columns); samples moved off the image read 0."""
    rng = np.random.default_rng(1)
    attributes = dict(stride=1, padding=1, dilation=1)
    x, offset, mask, weight, bias = random_inputs(rng, **attributes)
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    np.testing.assert_allclose(deform_conv2d(x, offset, mask, weight, bias, **attributes),
                               conv2d(moved_window(x, dy, dx, 1), weight, bias), rtol=0, atol=1e-12)


def test_each_kernel_position_reads_its_own_offset_pair():
    """Offsets only at kernel position k = i * kw + j = 5 (i = 1, j = 2) move only that tap."""
    rng = np.random.default_rng(2)
    attributes = dict(stride=1, padding=1, dilation=1)
    x, offset, mask, weight, bias = random_inputs(rng, **attributes)
    offset[:, 2 * 5], offset[:, 2 * 5 + 1] = -1, 2
    tap = np.zeros_like(weight)
    tap[:, :, 1, 2] = weight[:, :, 1, 2]
    expected = conv2d(x, weight - tap, bias, **attributes) + conv2d(moved_window(x, -1, 2, 1), tap, None)
    np.testing.assert_allclose(deform_conv2d(x, offset, mask, weight, bias, **attributes), expected, atol=1e-12)


def test_fractional_offset_is_bilinear():
    x = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4) ** 1.5
    weight = np.full((1, 1, 1, 1), 2.0)
    offset = np.zeros((1, 2, 3, 4))
    offset[0, :, 1, 1] = 0.25, 0.5  # output (1, 1) samples at h = 1.25, w = 1.5
    out = deform_conv2d(x, offset, np.ones((1, 1, 3, 4)), weight, np.float64([0.5]))
    v = x[0, 0]
    expected = 0.75 * 0.5 * v[1, 1] + 0.75 * 0.5 * v[1, 2] + 0.25 * 0.5 * v[2, 1] + 0.25 * 0.5 * v[2, 2]
    assert out[0, 0, 1, 1] == pytest.approx(2 * expected + 0.5, abs=1e-12)
    np.testing.assert_allclose(np.delete(out.ravel(), 5), np.delete(2 * v.ravel() + 0.5, 5), atol=1e-12)


# (h, w) -> the expected sample of v = [[1, 2, 3], [4, 5, 6]] (H = 2, W = 3), by DCNv2's rule.
OUTSIDE = [((-0.5, 0.0), 0.5 * 1), ((-1.0, 1.0), 0.0), ((-1.5, 1.0), 0.0), ((1.5, 2.0), 0.5 * 6),
           ((2.0, 0.0), 0.0), ((0.0, 2.25), 0.75 * 3), ((0.0, 3.0), 0.0), ((-0.5, -0.5), 0.25 * 1),
           ((1.25, -0.75), 0.75 * 0.25 * 4), ((0.5, 5.0), 0.0), ((-0.999, 0.0), 0.001 * 1),
           ((np.inf, 0.0), 0.0), ((-1e9, 1e9), 0.0)]


@pytest.mark.parametrize('hw, expected', OUTSIDE, ids=str)
def test_samples_outside_the_image(hw, expected):
    """0 unless -1 < h < H and -1 < w < W; corners outside count 0, those inside keep their weight."""
    image = np.float64([[[1, 2, 3], [4, 5, 6]]])
    value = bilinear(image, np.float64([hw[0]]), np.float64([hw[1]]))
    assert value.shape == (1, 1) and value[0, 0] == pytest.approx(expected, abs=1e-12)


def test_outside_samples_through_the_op():
    """The same rule through deform_conv2d: a 1x1 kernel whose offsets move every sample to (h, w)."""
    image = np.float64([[[[1, 2, 3], [4, 5, 6]]]])
    for (h, w), expected in OUTSIDE[:-2]:
        offset = np.zeros((1, 2, 2, 3))
        offset[0, 0] = h - np.arange(2)[:, None]
        offset[0, 1] = w - np.arange(3)[None, :]
        out = deform_conv2d(image, offset, np.ones((1, 1, 2, 3)), np.ones((1, 1, 1, 1)), None)
        np.testing.assert_allclose(out, expected, atol=1e-12)


def test_mask_scales_each_sample():
    rng = np.random.default_rng(3)
    attributes = dict(stride=1, padding=1, dilation=1)
    x, offset, _, weight, bias = random_inputs(rng, **attributes)
    # a mask constant over pixels scales its kernel position's weights
    per_tap = rng.random(9)
    mask = np.broadcast_to(per_tap[None, :, None, None], (1, 9, *offset.shape[2:]))
    np.testing.assert_allclose(deform_conv2d(x, offset, mask, weight, bias, **attributes),
                               conv2d(x, weight * per_tap.reshape(3, 3), bias, **attributes), atol=1e-12)
    # a mask varying over output pixels scales each output pixel's samples (1x1 kernel: out = w m x + b)
    mask = rng.random((1, 1, 6, 7))
    out = deform_conv2d(x, np.zeros((1, 2, 6, 7)), mask, weight[:, :, :1, :1], bias)
    np.testing.assert_allclose(out, np.einsum('oc,bcyx->boyx', weight[:, :, 0, 0], x * mask) + bias[:, None, None],
                               atol=1e-12)
    assert not deform_conv2d(x, offset, np.zeros_like(mask).repeat(9, 1), weight, None, **attributes).any()


def test_deformable_groups_split_the_input_channels():
    """G = 2: channels 0..C/2-1 read offset/mask channels [0, 2K) / [0, K), the rest [2K, 4K) / [K, 2K)."""
    rng = np.random.default_rng(4)
    attributes = dict(stride=1, padding=1, dilation=1)
    x, offset, mask, weight, bias = random_inputs(rng, channels=4, groups=2, **attributes)
    offset[:, 18::2], offset[:, 19::2] = 1, -1  # group 1 shifted
    mask[:, 9:] = 0.5  # and halved
    moved = np.concatenate([moved_window(x[:, :2], 0, 0, 1), 0.5 * moved_window(x[:, 2:], 1, -1, 1)], axis=1)
    np.testing.assert_allclose(deform_conv2d(x, offset, mask, weight, bias, deformable_groups=2, **attributes),
                               conv2d(moved, weight, bias), atol=1e-12)


def test_result_has_the_input_float_type():
    rng = np.random.default_rng(5)
    x, offset, mask, weight, bias = random_inputs(rng, stride=1, padding=1)
    for dtype in (np.float32, np.float16):
        args = [a.astype(dtype) for a in (x, offset, mask, weight, bias)]
        assert deform_conv2d(*args, padding=1).dtype == dtype


def test_shape_errors_name_what_disagrees():
    rng = np.random.default_rng(6)
    x, offset, mask, weight, bias = random_inputs(rng, stride=1, padding=1)
    with pytest.raises(ValueError, match=r'offset must be \[1, 18, 6, 7\]'):
        deform_conv2d(x, offset[:, :9], mask, weight, bias, padding=1)
    with pytest.raises(ValueError, match='offset must be'):
        deform_conv2d(x, offset, mask, weight, bias, padding=0)
    with pytest.raises(ValueError, match='deformable_groups must divide'):
        deform_conv2d(x, offset, mask, weight, bias, padding=1, deformable_groups=2)
    with pytest.raises(ValueError, match='no grouped'):
        deform_conv2d(x, offset, mask, weight[:, :1], bias, padding=1)
    with pytest.raises(ValueError, match=r'bias must be \[4\]'):
        deform_conv2d(x, offset, mask, weight, bias[:2], padding=1)
