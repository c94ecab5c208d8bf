"""Mask assembly as one Triton kernel: gather the detections' coefficients, the prototype product,
sigmoid and crop, in one pass over the prototype grid.

Each program computes a [BLOCK_D detections, BLOCK_PIX pixels] tile of one image's masks as one
matrix product (coefficients [BLOCK_D, M] @ prototypes [M, BLOCK_PIX], IEEE float32, not TF32),
then writes sigmoid inside each detection's padded box and 0 elsewhere, and 0 for every row past
num_dets (TensorRT does not clear outputs). The crop compares the reference's float32 bounds
exactly; kernels are compiled without FMA contraction (plugins.triton_compile) so `min * size -
padding` rounds twice, as in plugins/mask_assembly/reference.py.

Coordinate spaces: boxes are xyxy relative; masks are on the prototype grid [Hp, Wp].
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@triton.jit
def mask_assembly_kernel(
        proto_ptr, coef_ptr, det_indices_ptr, det_boxes_ptr, num_dets_ptr,  # inputs
        num_priors, height, width,  # int32: P, Hp, Wp
        masks_ptr,  # output [B, D, Hp, Wp]
        MAX_DETS: tl.constexpr, MASK_DIM: tl.constexpr, MASK_DIM_PAD: tl.constexpr, CROP_PADDING: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_PIX: tl.constexpr):
    image = tl.program_id(0).to(tl.int64)
    detection = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pixel = tl.program_id(2) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    num_pixels = height * width
    component = tl.arange(0, MASK_DIM_PAD)
    in_dim = component < MASK_DIM

    is_detection = (detection < tl.load(num_dets_ptr + image)) & (detection < MAX_DETS)
    det_row = image * MAX_DETS + detection
    prior = tl.load(det_indices_ptr + det_row, mask=is_detection, other=0).to(tl.int64)
    coef = tl.load(coef_ptr + (image * num_priors + prior[:, None]) * MASK_DIM + component[None, :],
                   mask=is_detection[:, None] & in_dim[None, :], other=0.0).to(tl.float32)
    proto = tl.load(proto_ptr + (image * num_pixels + pixel[None, :]) * MASK_DIM + component[:, None],
                    mask=(pixel < num_pixels)[None, :] & in_dim[:, None], other=0.0).to(tl.float32)
    masks = tl.sigmoid(tl.dot(coef, proto, input_precision='ieee'))  # [BLOCK_D, BLOCK_PIX]

    x1 = tl.load(det_boxes_ptr + det_row * 4 + 0, mask=is_detection, other=0.0).to(tl.float32)
    y1 = tl.load(det_boxes_ptr + det_row * 4 + 1, mask=is_detection, other=0.0).to(tl.float32)
    x2 = tl.load(det_boxes_ptr + det_row * 4 + 2, mask=is_detection, other=0.0).to(tl.float32)
    y2 = tl.load(det_boxes_ptr + det_row * 4 + 3, mask=is_detection, other=0.0).to(tl.float32)
    width_f = width.to(tl.float32)
    height_f = height.to(tl.float32)
    x_lo = tl.maximum(tl.minimum(x1, x2) * width_f - CROP_PADDING, 0.0)
    x_hi = tl.minimum(tl.maximum(x1, x2) * width_f + CROP_PADDING, width_f)
    y_lo = tl.maximum(tl.minimum(y1, y2) * height_f - CROP_PADDING, 0.0)
    y_hi = tl.minimum(tl.maximum(y1, y2) * height_f + CROP_PADDING, height_f)
    x = (pixel % width).to(tl.float32)[None, :]
    y = (pixel // width).to(tl.float32)[None, :]
    inside = ((x >= x_lo[:, None]) & (x < x_hi[:, None]) & (y >= y_lo[:, None]) & (y < y_hi[:, None])
              & is_detection[:, None])
    masks = tl.where(inside, masks, 0.0)
    tl.store(masks_ptr + det_row[:, None] * num_pixels + pixel[None, :], masks.to(masks_ptr.dtype.element_ty),
             mask=(detection < MAX_DETS)[:, None] & (pixel < num_pixels)[None, :])


@dataclass(frozen=True)
class MaskAssemblyKernelConfig:
    """The compile-time constants of one specialisation of `mask_assembly_kernel`: D, M and the
    crop padding. The launcher and the TensorRT plugin both derive them here."""

    max_dets: int
    mask_dim: int
    crop_padding: int
    block_d: int = 16
    block_pix: int = 128
    num_warps: int = 4

    def __post_init__(self):
        if self.max_dets < 1 or self.mask_dim < 1 or self.crop_padding < 0:
            raise ValueError(f'MaskAssembly needs D >= 1, M >= 1 and crop_padding >= 0; got D={self.max_dets}, '
                             f'M={self.mask_dim}, crop_padding={self.crop_padding}')

    def constexprs(self) -> dict:
        # tl.dot needs every dimension >= 16
        return dict(MAX_DETS=int(self.max_dets), MASK_DIM=int(self.mask_dim),
                    MASK_DIM_PAD=max(16, triton.next_power_of_2(self.mask_dim)),
                    CROP_PADDING=int(self.crop_padding), BLOCK_D=self.block_d, BLOCK_PIX=self.block_pix)

    def grid(self, batch: int, num_pixels: int) -> tuple[int, int, int]:
        return batch, triton.cdiv(self.max_dets, self.block_d), triton.cdiv(num_pixels, self.block_pix)



def signature(float_type: str) -> dict:
    """Triton argument types for float tensors of `float_type` ('fp32' | 'fp16')."""
    return {'proto_ptr': f'*{float_type}', 'coef_ptr': f'*{float_type}', 'det_indices_ptr': '*i32',
            'det_boxes_ptr': f'*{float_type}', 'num_dets_ptr': '*i32', 'num_priors': 'i32', 'height': 'i32',
            'width': 'i32', 'masks_ptr': f'*{float_type}'}


def assemble_masks(proto, coef, det_indices, det_boxes, num_dets, *, crop_padding: int, out=None):
    """Launch the kernel on torch tensors (CUDA, or CPU under TRITON_INTERPRET=1).

    proto float32/float16 [B, Hp, Wp, M]; coef [B, P, M]; det_indices int32 [B, D]; det_boxes
    [B, D, 4] xyxy relative; num_dets int32 [B]. Returns masks [B, D, Hp, Wp] in proto's dtype,
    as the `yolact::MaskAssembly` op; `out`, when given, is that tensor preallocated (every
    element is written).
    """
    import torch

    if proto.ndim != 4 or coef.ndim != 3 or coef.shape[0] != proto.shape[0] or coef.shape[2] != proto.shape[3]:
        raise ValueError(f'assemble_masks takes proto [B, Hp, Wp, M] and coef [B, P, M] with the same B and M; '
                         f'got proto {tuple(proto.shape)} and coef {tuple(coef.shape)}')
    if det_indices.dtype != torch.int32 or num_dets.dtype != torch.int32:
        raise ValueError(f'det_indices and num_dets must be int32 (the FastNMS outputs); got {det_indices.dtype}, '
                         f'{num_dets.dtype}')
    batch, height, width, mask_dim = proto.shape
    config = MaskAssemblyKernelConfig(det_indices.shape[1], mask_dim, crop_padding)
    masks = out if out is not None else torch.empty(
        batch, config.max_dets, height, width, dtype=proto.dtype, device=proto.device)
    if batch and height * width:
        mask_assembly_kernel[config.grid(batch, height * width)](
            proto.contiguous(), coef.to(proto.dtype).contiguous(), det_indices.contiguous(),
            det_boxes.to(proto.dtype).contiguous(), num_dets.contiguous(), coef.shape[1], height, width, masks,
            **config.constexprs(), num_warps=config.num_warps, enable_fp_fusion=False)
    return masks
