"""Modulated deformable convolution (DCNv2), numpy reference: the readable definition of the
`yolact::DeformConv2d` op that YOLACT++ puts in its ResNet backbone.

The semantics are DCNv2's forward (CharlesShang/DCNv2 as vendored by dbolya/yolact,
external/DCNv2/src/cuda/dcn_v2_im2col_cuda.cu `modulated_deformable_im2col_gpu_kernel` and
`dmcn_im2col_bilinear`, external/DCNv2/src/cuda/dcn_v2_cuda.cu `dcn_v2_cuda_forward`):

    out[b, o, y, x] = bias[o] + sum over input channel c and kernel position (i, j) of
        weight[o, c, i, j] * mask[b, g*K + k, y, x] * bilinear(input[b, c], h, w)

    k = i * kw + j, K = kh * kw, g = c // (C / deformable_groups) (the channel's deformable group),
    h = (y * stride_h - pad_h + i * dilation_h) + offset[b, g*2K + 2k,     y, x]
    w = (x * stride_w - pad_w + j * dilation_w) + offset[b, g*2K + 2k + 1, y, x]

- offset [B, 2*G*K, Ho, Wo]: per deformable group g, per kernel position k (row-major over the
  kernel), the pair (dy, dx), dy first. YOLACT's DCN module makes it as the first 2*G*K channels
  of its `conv_offset_mask` conv (chunk into o1, o2, m; offset = cat(o1, o2)), so the pairs are
  interleaved in channel order, not all dy then all dx.
- mask [B, G*K, Ho, Wo]: per group g, per kernel position k; the module applies sigmoid to the last
  G*K channels of `conv_offset_mask`. The op takes the mask as given (already in [0, 1]) and
  multiplies the sampled value by it.
- bilinear(image [H, W], h, w): 0 unless -1 < h < H and -1 < w < W; else the weighted sum of the
  four neighbours (floor(h), floor(w)) .. (floor(h) + 1, floor(w) + 1) with weights
  (1 - lh)(1 - lw), (1 - lh) lw, lh (1 - lw), lh lw (lh = h - floor(h)), where a neighbour outside
  the image counts as 0. A sample partly outside keeps its inside corners' share.
- Coordinate space: (h, w) are input pixel indices (pixel centres at integers), before padding;
  padding is implicit (zeros), as in a plain convolution.
- groups: 1 (DCNv2 has no grouped convolution: weight is [Cout, C, kh, kw]); deformable_groups G
  must divide C. Output size Ho = (H + 2 pad_h - (dilation_h (kh - 1) + 1)) // stride_h + 1, Wo alike.

With zero offsets and mask 1 the op is exactly nn.Conv2d with the same stride, padding and dilation.
Arithmetic here is float64; the result has x's float type.
"""

from __future__ import annotations

import numpy as np


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as (h, w)."""
    h, w = (value, value) if np.isscalar(value) else tuple(value)
    if int(h) != h or int(w) != w:
        raise ValueError(f'{name} must be an int or a pair of ints; got {value!r}')
    return int(h), int(w)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The convolution's output length along one axis (DCNv2's height_out / width_out)."""
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def check_shapes(x_shape, offset_shape, mask_shape, weight_shape, bias_shape, *, stride, padding, dilation,
                 deformable_groups: int) -> tuple[int, int]:
    """Raise ValueError naming what disagrees; returns (Ho, Wo)."""
    if len(x_shape) != 4 or len(weight_shape) != 4:
        raise ValueError(f'deform_conv2d takes x [B, C, H, W] and weight [Cout, C, kh, kw]; got x {tuple(x_shape)}, '
                         f'weight {tuple(weight_shape)}')
    batch, channels, height, width = x_shape
    out_channels, in_channels, kh, kw = weight_shape
    if in_channels != channels:
        raise ValueError(f'weight [Cout, C, kh, kw] must have C = {channels} input channels (DCNv2 has no grouped '
                         f'convolution); got weight {tuple(weight_shape)}')
    if deformable_groups < 1 or channels % deformable_groups:
        raise ValueError(f'deformable_groups must divide the {channels} input channels; got {deformable_groups}')
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f'stride and dilation must be >= 1 and padding >= 0; got stride {stride}, '
                         f'padding {padding}, dilation {dilation}')
    ho = output_size(height, kh, stride[0], padding[0], dilation[0])
    wo = output_size(width, kw, stride[1], padding[1], dilation[1])
    k = kh * kw
    expected = {'offset': (batch, 2 * deformable_groups * k, ho, wo), 'mask': (batch, deformable_groups * k, ho, wo)}
    for name, shape in (('offset', offset_shape), ('mask', mask_shape)):
        if tuple(shape) != expected[name]:
            raise ValueError(f'{name} must be {list(expected[name])} for x {tuple(x_shape)}, weight '
                             f'{tuple(weight_shape)}, stride {stride}, padding {padding}, dilation {dilation}, '
                             f'deformable_groups {deformable_groups}; got {list(shape)}')
    if bias_shape is not None and tuple(bias_shape) != (out_channels,):
        raise ValueError(f'bias must be [{out_channels}]; got {list(bias_shape)}')
    return ho, wo


def bilinear(image: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """DCNv2's `dmcn_im2col_bilinear` with its caller's bounds test, vectorised.

    image float64 [C, H, W]; h, w float64 [...] (input pixel coordinates) -> float64 [C, ...]:
    0 where not (-1 < h < H and -1 < w < W), else the bilinear interpolation in which neighbours
    outside the image count as 0.
    """
    _, height, width = image.shape
    inside = (h > -1) & (w > -1) & (h < height) & (w < width)
    # Clamped before floor so that far-away (or infinite) samples, which are 0 anyway, index safely.
    h = np.where(inside, h, 0.0)
    w = np.where(inside, w, 0.0)
    h_low, w_low = np.floor(h).astype(np.int64), np.floor(w).astype(np.int64)
    lh, lw = h - h_low, w - w_low
    value = np.zeros((image.shape[0], *h.shape))
    for row, row_weight in ((h_low, 1 - lh), (h_low + 1, lh)):
        for col, col_weight in ((w_low, 1 - lw), (w_low + 1, lw)):
            valid = inside & (row >= 0) & (row <= height - 1) & (col >= 0) & (col <= width - 1)
            corner = image[:, np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
            value += np.where(valid, row_weight * col_weight, 0.0) * corner
    return value


def deform_conv2d(x: np.ndarray, offset: np.ndarray, mask: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                  *, stride=1, padding=0, dilation=1, deformable_groups: int = 1) -> np.ndarray:
    """The `yolact::DeformConv2d` op (DCNv2 forward; see the module docstring for the layout).

    x float [B, C, H, W]; offset float [B, 2*G*kh*kw, Ho, Wo] ((dy, dx) per group and kernel
    position, in input pixels); mask float [B, G*kh*kw, Ho, Wo]; weight float [Cout, C, kh, kw];
    bias float [Cout] or None (zeros). stride, padding, dilation: int or (h, w). Returns
    [B, Cout, Ho, Wo] in x's float type, computed in float64.
    """
    stride, padding, dilation = pair(stride, 'stride'), pair(padding, 'padding'), pair(dilation, 'dilation')
    out_type = np.asarray(x).dtype if np.asarray(x).dtype.kind == 'f' else np.dtype(np.float32)
    x, offset, mask, weight = (np.asarray(a, np.float64) for a in (x, offset, mask, weight))
    ho, wo = check_shapes(x.shape, offset.shape, mask.shape, weight.shape,
                          None if bias is None else np.shape(bias), stride=stride, padding=padding,
                          dilation=dilation, deformable_groups=deformable_groups)
    batch, channels, _, _ = x.shape
    out_channels, _, kh, kw = weight.shape
    k_count, group_channels = kh * kw, channels // deformable_groups
    base_h = (np.arange(ho) * stride[0] - padding[0])[:, None]  # [Ho, 1]
    base_w = (np.arange(wo) * stride[1] - padding[1])[None, :]  # [1, Wo]

    columns = np.zeros((batch, channels, kh, kw, ho, wo))  # the modulated samples (DCNv2's im2col)
    for b in range(batch):
        for g in range(deformable_groups):
            image = x[b, g * group_channels:(g + 1) * group_channels]
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    dy = offset[b, g * 2 * k_count + 2 * k]
                    dx = offset[b, g * 2 * k_count + 2 * k + 1]
                    h = (base_h + i * dilation[0]) + dy  # the integer part first, as DCNv2 adds them
                    w = (base_w + j * dilation[1]) + dx
                    columns[b, g * group_channels:(g + 1) * group_channels, i, j] = (
                        bilinear(image, h, w) * mask[b, g * k_count + k])
    out = np.einsum('ocij,bcijyx->boyx', weight, columns)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out.astype(out_type)
