import numpy as np
import pytest
import torch

from model.config import yolact_base, yolact_darknet53
from model.preprocess import Normalize


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
