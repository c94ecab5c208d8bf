"""Input pre-processing as the original's FastBaseTransform: the float image resized to the model
size (bilinear, half-pixel centres, no antialiasing, as torch's F.interpolate with
align_corners=False), then normalised.

The resize is written as index arithmetic and gathers, not F.interpolate, because the exported
graph has to reproduce torch's arithmetic: ONNX `Resize` forms its source coordinates from out/in
and differs from torch by up to 0.1 grey levels at 2160x3840, while these taps agree with torch
to one float32 rounding (README, "Pre-processing"). The same modules run in the torch backend and
are what export traces, so the three backends share one pre-processing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from yolact_torch.config import YolactConfig

# Veltkamp's split constant for float32 (2**12 + 1): scale * SPLIT - (scale * SPLIT - scale) keeps
# the top 12 of scale's 24 significant bits.
_SPLIT = float(2**12 + 1)
# The split is exact while 2 * dst + 1 has at most 12 significant bits.
_MAX_OUT_SIZE = 2048


def resize_taps(in_size: Tensor, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The two source rows (or columns) and the weight of the second, per output position, for
    a bilinear resize of one axis from in_size to out_size with half-pixel centres.

    in_size: int64 scalar tensor (a dynamic dimension in the exported graph); out_size: int.
    Returns first int64 [out_size], second int64 [out_size] (first + 1, kept inside the image),
    weight float32 [out_size] in 0..1: out[i] = x[first[i]] * (1 - weight[i]) + x[second[i]] * weight[i].

    As torch's CPU and CUDA kernels: scale = float32(in / out), src = max(scale * (dst + 0.5) - 0.5, 0)
    rounded once (they contract it to a fused multiply-add), first = floor(src), weight = src - first.
    The single rounding is kept exactly in float32 arithmetic by splitting scale into two halves
    whose products with dst + 0.5 (at most 12 significant bits for out_size < 2048) are exact.
    """
    scale = in_size.to(torch.float32) / out_size
    scaled = scale * _SPLIT
    scale_high = scaled - (scaled - scale)
    scale_low = scale - scale_high
    centres = torch.arange(out_size, dtype=torch.float32) + 0.5
    src = torch.clamp_min((scale_high * centres - 0.5) + scale_low * centres, 0.0)
    first = src.to(torch.int64)  # src >= 0, so truncation is floor
    weight = src - first.to(torch.float32)
    second = torch.minimum(first + 1, in_size - 1)
    return first, second, weight


class ResizeToInput(nn.Module):
    """float32 [B, H, W, 3] (any H, W >= 1) -> float32 [B, h, w, 3] at (h, w) = cfg.input_size,
    bilinear with half-pixel centres and no antialiasing, as F.interpolate(align_corners=False) on
    the same image in NCHW. An image already at the model size comes back unchanged (weight 0).

    Rows first, then columns, each a gather of the two taps and a weighted sum: channels last, so
    each gather moves whole rows or pixels.
    """

    def __init__(self, cfg: YolactConfig):
        super().__init__()
        self.out_height, self.out_width = cfg.input_size
        if max(cfg.input_size) > _MAX_OUT_SIZE:
            raise ValueError(f'input size {cfg.input_size}: the exact resize takes model sizes up to {_MAX_OUT_SIZE}')

    def forward(self, images: Tensor) -> Tensor:
        height = torch.scalar_tensor(images.shape[1], dtype=torch.int64)
        width = torch.scalar_tensor(images.shape[2], dtype=torch.int64)
        first, second, weight = resize_taps(height, self.out_height)
        weight = weight[:, None, None]
        rows = images.index_select(1, first) * (1 - weight) + images.index_select(1, second) * weight
        first, second, weight = resize_taps(width, self.out_width)
        # Weights spread over the channels: onnxruntime broadcasts slowly over an innermost axis of 3.
        weight = weight[:, None].expand(self.out_width, 3)
        return rows.index_select(2, first) * (1 - weight) + rows.index_select(2, second) * weight


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


class Preprocess(nn.Module):
    """The original's FastBaseTransform: images uint8 [B, H, W, 3] BGR at their own size (H, W >= 1)
    -> float32 [B, 3, h, w] normalised RGB at (h, w) = cfg.input_size.

    Cast to float32, resize (ResizeToInput), normalise (Normalize). The resize needs float input, so
    the cast comes first, as in the original (which resizes a float tensor)."""

    def __init__(self, cfg: YolactConfig):
        super().__init__()
        self.resize = ResizeToInput(cfg)
        self.normalize = Normalize(cfg)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f'expected images [B, H, W, 3] (BGR, channels last), got shape {list(images.shape)}')
        return self.normalize(self.resize(images.to(torch.float32)))
