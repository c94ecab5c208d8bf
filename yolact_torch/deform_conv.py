"""YOLACT++'s deformable convolution in torch: the DCNv2 `DCN` module (dbolya/yolact
external/DCNv2/dcn_v2.py) and the op it calls, `torch.ops.yolact.deform_conv2d`.

The op computes plugins/deform_conv/reference.py's `deform_conv2d` (the definition; DCNv2's layout:
offset channel g*2K + 2k is dy and + 1 is dx of kernel position k = i*kw + j, mask channel g*K + k).
It is a torch custom op so that the ONNX exporter sees one node and translates it into the
`yolact::DeformConv2d` function node (export/deform_conv.py) instead of tracing its body.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _modulated_deform_conv(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor,
                           stride: list[int], padding: list[int], dilation: list[int],
                           deformable_groups: int) -> Tensor:
    """The body of `deform_conv2d` in differentiable torch, run by its forward and, under autograd,
    again by its backward (the op is opaque to autograd, so the backward recomputes the graph)."""
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[2:]
    groups, taps = deformable_groups, kh * kw
    # Integer part of the sampling positions: [kh, 1, Ho, 1] rows and [1, kw, 1, Wo] columns.
    rows = (torch.arange(kh, device=x.device) * dilation[0])[:, None, None, None] + \
        (torch.arange(out_h, device=x.device) * stride[0] - padding[0])[None, None, :, None]
    cols = (torch.arange(kw, device=x.device) * dilation[1])[None, :, None, None] + \
        (torch.arange(out_w, device=x.device) * stride[1] - padding[1])[None, None, None, :]
    pairs = offset.reshape(batch, groups, kh, kw, 2, out_h, out_w)
    h = rows.to(x.dtype) + pairs[:, :, :, :, 0]  # [B, G, kh, kw, Ho, Wo]
    w = cols.to(x.dtype) + pairs[:, :, :, :, 1]
    grid = torch.stack(((2 * w + 1) / width - 1, (2 * h + 1) / height - 1), dim=-1)
    grid = grid.reshape(batch * groups, taps * out_h, out_w, 2)
    images = x.reshape(batch * groups, channels // groups, height, width)
    samples = F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    # [B*G, C/G, K*Ho, Wo] -> modulated columns [B, C*K, Ho*Wo], row c*K + k as weight flattens.
    samples = samples.reshape(batch, groups, channels // groups, taps, out_h * out_w)
    columns = (samples * mask.reshape(batch, groups, 1, taps, out_h * out_w)).reshape(batch, channels * taps, -1)
    out = weight.reshape(out_channels, -1) @ columns + bias[:, None]
    return out.reshape(batch, out_channels, out_h, out_w)


@torch.library.custom_op('yolact::deform_conv2d', mutates_args=())
def deform_conv2d(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, stride: list[int],
                  padding: list[int], dilation: list[int], deformable_groups: int) -> Tensor:
    """DCNv2's modulated deformable convolution.

    x float [B, C, H, W]; offset [B, 2*G*kh*kw, Ho, Wo] ((dy, dx) per deformable group and kernel
    position, input pixels); mask [B, G*kh*kw, Ho, Wo] in 0..1; weight [Cout, C, kh, kw]; bias
    [Cout]; stride, padding, dilation: [h, w]. Returns [B, Cout, Ho, Wo] in x's dtype.

    Bilinear sampling is grid_sample with zeros padding and align_corners=False, which is DCNv2's
    boundary rule (a corner outside the image counts 0); pixel coordinate p along an axis of n
    pixels goes in as (2p + 1) / n - 1, which grid_sample maps back to p. Differentiable in x,
    offset, mask, weight and bias (bilinear sampling is not differentiable in the offset where a
    sampling position is an integer).
    """
    return _modulated_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, deformable_groups)


@deform_conv2d.register_fake
def _(x, offset, mask, weight, bias, stride, padding, dilation, deformable_groups):
    return x.new_empty((x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


def _setup_context(ctx, inputs, output):
    x, offset, mask, weight, bias, stride, padding, dilation, deformable_groups = inputs
    ctx.save_for_backward(x, offset, mask, weight, bias)
    ctx.geometry = (stride, padding, dilation, deformable_groups)


def _backward(ctx, grad_out):
    """Gradients of x, offset, mask, weight and bias (None where not needed): the body recomputed
    with autograd on and differentiated, so forward and backward share one definition."""
    needs = ctx.needs_input_grad[:5]
    inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
    with torch.enable_grad():
        out = _modulated_deform_conv(*inputs, *ctx.geometry)
    grads = iter(torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad_out))
    return (*(next(grads) if need else None for need in needs), None, None, None, None)


deform_conv2d.register_autograd(_backward, setup_context=_setup_context)


class DCN(nn.Module):
    """DCNv2's `DCN`: a conv `conv_offset_mask` (3*G*kh*kw channels, same kernel, stride and padding,
    dilation 1, with bias) gives o1, o2, m (thirds of its channels); offset = cat(o1, o2),
    mask = sigmoid(m); then deform_conv2d with `weight` and `bias`. Keys weight, bias,
    conv_offset_mask.weight, conv_offset_mask.bias, as the official YOLACT++ checkpoints.

    forward(x float32 [B, in_channels, H, W]) -> [B, out_channels, Ho, Wo].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, deformable_groups: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = [stride] * 2, [padding] * 2, [dilation] * 2
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # DCNv2's reset_parameters: uniform in +-1/sqrt(fan_in); the offsets start at zero.
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        self.conv_offset_mask = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size * kernel_size,
                                          kernel_size, stride=stride, padding=padding, bias=True)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, m = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        return deform_conv2d(x, torch.cat((o1, o2), dim=1), torch.sigmoid(m), self.weight, self.bias,
                             self.stride, self.padding, self.dilation, self.deformable_groups)
