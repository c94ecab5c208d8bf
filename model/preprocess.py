"""Input normalisation as the original's FastBaseTransform (without its resize: callers give
images already at the model size)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import YolactConfig


class Normalize(nn.Module):
    """images uint8 or float [B, H, W, 3] BGR in 0..255 -> float32 [B, 3, H, W] normalised RGB.

    Per BGR channel (x - cfg.mean_bgr) / cfg.std_bgr, then channels reversed to RGB and moved
    first. For the DarkNet config the mean is 0 and the std 255, i.e. x / 255 in RGB, as the original.
    """

    def __init__(self, cfg: YolactConfig):
        super().__init__()
        # RGB, shaped [3, 1, 1] to broadcast over channels-first planes.
        self.register_buffer('mean_rgb', torch.tensor(cfg.mean_bgr[::-1], dtype=torch.float32)[:, None, None],
                             persistent=False)
        self.register_buffer('std_rgb', torch.tensor(cfg.std_bgr[::-1], dtype=torch.float32)[:, None, None],
                             persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f'expected images [B, H, W, 3] (BGR, channels last), got shape {list(images.shape)}')
        # Channels first, then RGB, then normalised: the same (x - mean) / std per element, but in an
        # exported graph the per-channel constants broadcast over whole planes (over an innermost
        # axis of 3, onnxruntime took 1.5 ms of a 9 ms network). Cast first: TensorRT transposes no uint8.
        x = images.to(torch.float32).permute(0, 3, 1, 2).flip(1)
        return ((x - self.mean_rgb) / self.std_rgb).contiguous()
