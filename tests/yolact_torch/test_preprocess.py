import numpy as np
import pytest
import torch

import torch.nn.functional as F

from yolact_torch.config import yolact_base, yolact_darknet53, yolact_tiny
from yolact_torch.preprocess import Normalize, Preprocess, ResizeToInput, resize_taps


def hand_normalise(images_bgr, mean_bgr, std_bgr):
    """Loop over every output element: out[b, c, y, x] with c in RGB order."""
    batch, height, width, _ = images_bgr.shape
    out = np.zeros((batch, 3, height, width), dtype=np.float64)
    for b in range(batch):
        for c_rgb in range(3):
            c_bgr = 2 - c_rgb
            for y in range(height):
                for x in range(width):
                    out[b, c_rgb, y, x] = (float(images_bgr[b, y, x, c_bgr]) - mean_bgr[c_bgr]) / std_bgr[c_bgr]
    return out


@pytest.mark.parametrize('cfg', [yolact_base, yolact_darknet53], ids=lambda c: c.name)
@pytest.mark.parametrize('dtype', [torch.uint8, torch.float32])
def test_normalize_matches_hand_computation(cfg, dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)
    out = Normalize(cfg)(torch.from_numpy(images).to(dtype))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 3, 4)
    expected = hand_normalise(images, cfg.mean_bgr, cfg.std_bgr)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_darknet_is_rgb_over_255():
    pixel = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)  # B, G, R
    out = Normalize(yolact_darknet53)(pixel)
    torch.testing.assert_close(out.flatten(), torch.tensor([30 / 255, 20 / 255, 10 / 255]))


def test_normalize_rejects_channels_first():
    with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
        Normalize(yolact_base)(torch.zeros(1, 3, 8, 8))


# (H, W) smaller, larger, equal and of odd aspect ratios against yolact_tiny's 320 x 320.
SIZES = [(1, 1), (5, 7), (97, 1203), (320, 320), (319, 321), (480, 640), (2160, 3840)]


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_resize_is_torchs_bilinear_to_a_rounding(size):
    """The taps reproduce F.interpolate(bilinear, align_corners=False) on the float image: at most
    one float32 rounding of a grey level apart (2**-15 at 255)."""
    images = torch.from_numpy(np.random.default_rng(size[1]).integers(0, 256, (1, *size, 3), dtype=np.uint8))
    got = ResizeToInput(yolact_tiny)(images.float())
    expected = F.interpolate(images.float().permute(0, 3, 1, 2), yolact_tiny.input_size, mode='bilinear',
                             align_corners=False).permute(0, 2, 3, 1)
    assert got.shape == (1, *yolact_tiny.input_size, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=2**-15 * 2)


def test_resize_at_the_model_size_is_the_identity():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, *yolact_tiny.input_size, 3),
                                                                dtype=np.uint8)).float()
    assert torch.equal(ResizeToInput(yolact_tiny)(images), images)


def test_taps_round_once_as_torch_does():
    """480 -> 550 is where a twice-rounded source coordinate (scale * (dst + 0.5), then - 0.5) moves
    the weights by a float32 step at 255; the taps must give the once-rounded value."""
    first, second, weight = resize_taps(torch.tensor(480), 550)
    centres = np.arange(550, dtype=np.float64) + 0.5
    scale = np.float64(np.float32(480) / np.float32(550))
    src = np.maximum((scale * centres - 0.5).astype(np.float32), 0)  # exact product, one rounding
    np.testing.assert_array_equal(first.numpy(), np.floor(src).astype(np.int64))
    np.testing.assert_array_equal(second.numpy(), np.minimum(np.floor(src) + 1, 479).astype(np.int64))
    np.testing.assert_array_equal(weight.numpy(), src - np.floor(src))


def test_preprocess_is_resize_then_normalize():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 40, 70, 3), dtype=np.uint8))
    expected = Normalize(yolact_tiny)(ResizeToInput(yolact_tiny)(images.float()))
    assert torch.equal(Preprocess(yolact_tiny)(images), expected)
