"""Mask pasting as one Triton kernel: the device form of runtime.paste.paste_masks.

One program pastes a [BLOCK_Y, BLOCK_X] tile of one detection's box region. The bilinear taps
(source index and weight of every image row and column) and each detection's box region come
from tables the host builds with runtime.paste's own functions (runtime/tensorrt/gpu_paste.py
`build_paste_rounds`), so the kernel holds only the blend: the horizontal pass
`wx0 * m[y, x0] + wx1 * m[y, x1]` on the top and bottom source rows, then `top * wy0 +
bottom * wy1`, then `> threshold` -- paste_masks' float32 operations in its order. Compiled without
FMA contraction (plugins.triton_compile), every product and sum rounds as numpy's does, so the
result equals paste_masks bit for bit.

Only the box region is written, packed: detection d's region of h x w pixels is h * w bytes
(uint8 0/1, row-major) at byte offset regions[d, 4] of the output (regions: int32
[N, REGION_COLUMNS], runtime/tensorrt/gpu_paste.py), so only those bytes cross the bus to the host.

Coordinate spaces: masks on the prototype grid [Hp, Wp]; regions and taps in image pixels.
This module imports triton; the runtime imports it only when triton is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from runtime.tensorrt.gpu_paste import REGION_COLUMNS

@triton.jit
def paste_masks_kernel(
        masks_ptr, rows_ptr, regions_ptr, x_taps_ptr, x_weights_ptr, y_taps_ptr, y_weights_ptr,  # inputs
        threshold, proto_h, proto_w,  # float32 threshold, int32 Hp, Wp
        out_ptr,  # output: packed uint8 box regions
        REGION_COLUMNS: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    detection = tl.program_id(0)
    region = regions_ptr + detection * REGION_COLUMNS
    x_first = tl.load(region + 0)
    x_stop = tl.load(region + 1)
    y_first = tl.load(region + 2)
    y_stop = tl.load(region + 3)
    out_offset = tl.load(region + 4).to(tl.int64)
    ys = y_first + tl.program_id(1) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    xs = x_first + tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    y_inside = ys < y_stop
    x_inside = xs < x_stop

    # Taps tables are [size, 2] (index0, index1) int32 and (weight0, weight1) float32 per axis.
    x0 = tl.load(x_taps_ptr + xs * 2, mask=x_inside, other=0)[None, :]
    x1 = tl.load(x_taps_ptr + xs * 2 + 1, mask=x_inside, other=0)[None, :]
    wx0 = tl.load(x_weights_ptr + xs * 2, mask=x_inside, other=0.0)[None, :]
    wx1 = tl.load(x_weights_ptr + xs * 2 + 1, mask=x_inside, other=0.0)[None, :]
    y0 = tl.load(y_taps_ptr + ys * 2, mask=y_inside, other=0)[:, None]
    y1 = tl.load(y_taps_ptr + ys * 2 + 1, mask=y_inside, other=0)[:, None]
    wy0 = tl.load(y_weights_ptr + ys * 2, mask=y_inside, other=0.0)[:, None]
    wy1 = tl.load(y_weights_ptr + ys * 2 + 1, mask=y_inside, other=0.0)[:, None]

    inside = y_inside[:, None] & x_inside[None, :]
    grid = masks_ptr + tl.load(rows_ptr + detection).to(tl.int64) * proto_h * proto_w
    top_row = grid + y0 * proto_w
    bottom_row = grid + y1 * proto_w
    # float16 masks (FP16 engines) widen exactly to float32, as paste_masks' np.asarray does.
    top = (wx0 * tl.load(top_row + x0, mask=inside, other=0.0).to(tl.float32)
           + wx1 * tl.load(top_row + x1, mask=inside, other=0.0).to(tl.float32))
    bottom = (wx0 * tl.load(bottom_row + x0, mask=inside, other=0.0).to(tl.float32)
              + wx1 * tl.load(bottom_row + x1, mask=inside, other=0.0).to(tl.float32))
    value = top * wy0 + bottom * wy1
    local = (ys - y_first)[:, None].to(tl.int64) * (x_stop - x_first) + (xs - x_first)[None, :]
    tl.store(out_ptr + out_offset + local, (value > threshold).to(tl.uint8), mask=inside)


@dataclass(frozen=True)
class PasteKernelConfig:
    """The compile-time constants of `paste_masks_kernel` and its launch shape: tiles of
    block_y rows x block_x columns (a row of 128 columns per warp's store keeps writes coalesced)."""

    block_y: int = 4
    block_x: int = 128
    num_warps: int = 4

    def constexprs(self) -> dict:
        return dict(REGION_COLUMNS=REGION_COLUMNS, BLOCK_Y=self.block_y, BLOCK_X=self.block_x)



def signature(float_type: str) -> dict:
    """Triton argument types for masks of `float_type` ('fp32' | 'fp16')."""
    return {'masks_ptr': f'*{float_type}', 'rows_ptr': '*i32', 'regions_ptr': '*i32', 'x_taps_ptr': '*i32',
            'x_weights_ptr': '*fp32', 'y_taps_ptr': '*i32', 'y_weights_ptr': '*fp32', 'threshold': 'fp32',
            'proto_h': 'i32', 'proto_w': 'i32', 'out_ptr': '*u8'}
