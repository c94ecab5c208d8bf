"""DCNv2's modulated deformable convolution as one Triton kernel: the deformable im2col fused with
the multiply-accumulate, so the [C*kh*kw, Ho*Wo] column matrix is never written (a TensorRT AOT
plugin launches one kernel and gets no workspace).

Each program computes a [BLOCK_CO output channels, BLOCK_L output pixels] tile of one image. Per
deformable group and kernel position it computes the tile's sampling positions, bilinear weights
and corner masks once (DCNv2's `dmcn_im2col_bilinear` and bounds test, plugins/deform_conv/
reference.py), then for BLOCK_C channels of the group at a time gathers the four corners, applies
the mask, and accumulates weight [BLOCK_CO, BLOCK_C] @ samples [BLOCK_C, BLOCK_L] (IEEE float32
`tl.dot`, not TF32). The bias is added last. Float16 inputs are computed in float32.

Coordinate spaces: (h, w) are input pixel indices; offsets are in input pixels, (dy, dx) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from plugins.deform_conv.reference import check_shapes, pair


@triton.jit
def deform_conv_kernel(
        x_ptr, offset_ptr, mask_ptr, weight_ptr, bias_ptr,  # inputs
        height, width, out_height, out_width,  # int32: H, W, Ho, Wo
        y_ptr,  # output [B, Cout, Ho, Wo]
        IN_CHANNELS: tl.constexpr, OUT_CHANNELS: tl.constexpr, KERNEL_H: tl.constexpr, KERNEL_W: tl.constexpr,
        STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
        DILATION_H: tl.constexpr, DILATION_W: tl.constexpr, DEFORMABLE_GROUPS: tl.constexpr,
        BLOCK_CO: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    TAPS: tl.constexpr = KERNEL_H * KERNEL_W
    GROUP_CHANNELS: tl.constexpr = IN_CHANNELS // DEFORMABLE_GROUPS
    image = tl.program_id(0).to(tl.int64)
    out_channel = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    pixel = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    num_pixels = out_height * out_width
    is_pixel = pixel < num_pixels
    is_out_channel = out_channel < OUT_CHANNELS
    base_h = (pixel // out_width) * STRIDE_H - PAD_H
    base_w = (pixel % out_width) * STRIDE_W - PAD_W
    height_f = height.to(tl.float32)
    width_f = width.to(tl.float32)
    channel_in_block = tl.arange(0, BLOCK_C)

    acc = tl.zeros((BLOCK_CO, BLOCK_L), tl.float32)
    for group in range(DEFORMABLE_GROUPS):
        for tap in range(TAPS):
            # offset channel (image, group, 2*tap + 0/1) holds dy / dx; mask channel (image, group, tap)
            pair_row = (image * DEFORMABLE_GROUPS + group) * (2 * TAPS) + 2 * tap
            dy = tl.load(offset_ptr + pair_row * num_pixels + pixel, mask=is_pixel, other=0.0).to(tl.float32)
            dx = tl.load(offset_ptr + (pair_row + 1) * num_pixels + pixel, mask=is_pixel, other=0.0).to(tl.float32)
            modulation = tl.load(mask_ptr + ((image * DEFORMABLE_GROUPS + group) * TAPS + tap) * num_pixels + pixel,
                                 mask=is_pixel, other=0.0).to(tl.float32)
            h = (base_h + (tap // KERNEL_W) * DILATION_H).to(tl.float32) + dy
            w = (base_w + (tap % KERNEL_W) * DILATION_W).to(tl.float32) + dx
            inside = (h > -1.0) & (w > -1.0) & (h < height_f) & (w < width_f) & is_pixel
            h = tl.where(inside, h, 0.0)  # far or non-finite samples are 0 anyway; keep their indices small
            w = tl.where(inside, w, 0.0)
            h_low_f = tl.floor(h)
            w_low_f = tl.floor(w)
            lh = h - h_low_f
            lw = w - w_low_f
            hh = 1.0 - lh
            hw = 1.0 - lw
            h_low = h_low_f.to(tl.int32)
            w_low = w_low_f.to(tl.int32)
            # the four corners: (h_low | h_low + 1) x (w_low | w_low + 1), each inside the image or 0
            top, bottom = inside & (h_low >= 0), inside & (h_low + 1 <= height - 1)
            left, right = w_low >= 0, w_low + 1 <= width - 1
            at = h_low * width + w_low
            w1 = tl.where(top & left, hh * hw, 0.0)
            w2 = tl.where(top & right, hh * lw, 0.0)
            w3 = tl.where(bottom & left, lh * hw, 0.0)
            w4 = tl.where(bottom & right, lh * lw, 0.0)
            for first in range(0, GROUP_CHANNELS, BLOCK_C):
                in_group = first + channel_in_block
                is_channel = in_group < GROUP_CHANNELS
                channel = group * GROUP_CHANNELS + in_group
                plane = x_ptr + (image * IN_CHANNELS + channel)[:, None] * (height * width) + at[None, :]
                rows = is_channel[:, None]
                v1 = tl.load(plane, mask=rows & (top & left)[None, :], other=0.0).to(tl.float32)
                v2 = tl.load(plane + 1, mask=rows & (top & right)[None, :], other=0.0).to(tl.float32)
                v3 = tl.load(plane + width, mask=rows & (bottom & left)[None, :], other=0.0).to(tl.float32)
                v4 = tl.load(plane + width + 1, mask=rows & (bottom & right)[None, :], other=0.0).to(tl.float32)
                sample = w1[None, :] * v1 + w2[None, :] * v2 + w3[None, :] * v3 + w4[None, :] * v4
                sample = sample * modulation[None, :]  # [BLOCK_C, BLOCK_L]
                weight = tl.load(weight_ptr + (out_channel[:, None] * IN_CHANNELS + channel[None, :]) * TAPS + tap,
                                 mask=is_out_channel[:, None] & is_channel[None, :], other=0.0).to(tl.float32)
                acc += tl.dot(weight, sample, input_precision='ieee')
    acc += tl.load(bias_ptr + out_channel, mask=is_out_channel, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + (image * OUT_CHANNELS + out_channel)[:, None] * num_pixels + pixel[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=is_out_channel[:, None] & is_pixel[None, :])


@dataclass(frozen=True)
class DeformConvKernelConfig:
    """The compile-time constants of one specialisation of `deform_conv_kernel`: the weight's shape,
    stride, padding, dilation (h, w) and the deformable groups. The launcher and the TensorRT plugin
    both derive them here."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    deformable_groups: int = 1
    block_co: int = 32
    block_c: int = 16
    block_l: int = 64
    num_warps: int = 4

    def __post_init__(self):
        if (min(self.in_channels, self.out_channels, *self.kernel, *self.stride, *self.dilation,
                self.deformable_groups) < 1 or min(self.padding) < 0 or self.in_channels % self.deformable_groups):
            raise ValueError(f'DeformConv2d needs C, Cout, kernel, stride, dilation >= 1, padding >= 0 and '
                             f'deformable_groups dividing C; got {self}')

    def constexprs(self) -> dict:
        # tl.dot needs every block dimension >= 16
        return dict(IN_CHANNELS=int(self.in_channels), OUT_CHANNELS=int(self.out_channels),
                    KERNEL_H=int(self.kernel[0]), KERNEL_W=int(self.kernel[1]),
                    STRIDE_H=int(self.stride[0]), STRIDE_W=int(self.stride[1]),
                    PAD_H=int(self.padding[0]), PAD_W=int(self.padding[1]),
                    DILATION_H=int(self.dilation[0]), DILATION_W=int(self.dilation[1]),
                    DEFORMABLE_GROUPS=int(self.deformable_groups),
                    BLOCK_CO=self.block_co, BLOCK_C=self.block_c, BLOCK_L=self.block_l)

    def grid(self, batch: int, num_pixels: int) -> tuple[int, int, int]:
        return batch, triton.cdiv(self.out_channels, self.block_co), triton.cdiv(num_pixels, self.block_l)


# Argument names in launch order: inputs, int32 scalars, outputs (a TensorRT AOT plugin's order).
INPUT_ARGS = ('x_ptr', 'offset_ptr', 'mask_ptr', 'weight_ptr', 'bias_ptr')
SCALAR_ARGS = ('height', 'width', 'out_height', 'out_width')
OUTPUT_ARGS = ('y_ptr',)


def signature(float_type: str) -> dict:
    """Triton argument types for float tensors of `float_type` ('fp32' | 'fp16')."""
    return {**{name: f'*{float_type}' for name in INPUT_ARGS}, **{name: 'i32' for name in SCALAR_ARGS},
            **{name: f'*{float_type}' for name in OUTPUT_ARGS}}


def deform_conv2d(x, offset, mask, weight, bias, *, stride=1, padding=0, dilation=1, deformable_groups: int = 1,
                  out=None):
    """Launch the kernel on torch tensors (CUDA, or CPU under TRITON_INTERPRET=1).

    x float32/float16 [B, C, H, W]; offset [B, 2*G*kh*kw, Ho, Wo]; mask [B, G*kh*kw, Ho, Wo];
    weight [Cout, C, kh, kw]; bias [Cout]. Returns y [B, Cout, Ho, Wo] in x's dtype, as the
    `yolact::DeformConv2d` op; `out`, when given, is that tensor preallocated (every element is
    written).
    """
    import torch

    if x.dtype not in (torch.float32, torch.float16):
        raise ValueError(f'deform_conv2d takes float32 or float16 tensors; got {x.dtype}')
    stride, padding, dilation = pair(stride, 'stride'), pair(padding, 'padding'), pair(dilation, 'dilation')
    out_h, out_w = check_shapes(tuple(x.shape), tuple(offset.shape), tuple(mask.shape), tuple(weight.shape),
                                tuple(bias.shape), stride=stride, padding=padding, dilation=dilation,
                                deformable_groups=deformable_groups)
    batch, channels, height, width = x.shape
    config = DeformConvKernelConfig(channels, weight.shape[0], tuple(weight.shape[2:]), stride, padding, dilation,
                                    deformable_groups)
    y = out if out is not None else torch.empty(batch, weight.shape[0], out_h, out_w, dtype=x.dtype, device=x.device)
    if batch and out_h * out_w:
        deform_conv_kernel[config.grid(batch, out_h * out_w)](
            x.contiguous(), offset.to(x.dtype).contiguous(), mask.to(x.dtype).contiguous(),
            weight.to(x.dtype).contiguous(), bias.to(x.dtype).contiguous(), height, width, out_h, out_w, y,
            **config.constexprs(), num_warps=config.num_warps, enable_fp_fusion=False)
    return y
