"""Random inputs for `yolact::DeformConv2d`, shared by every form's tests (ONNX body, Triton kernel).

Offsets are drawn so that samples land inside, partly outside (one or two corners) and wholly
outside the image, and some on exact integers (where a bilinear weight is exactly 0 or 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plugins.deform_conv.reference import output_size


@dataclass
class DeformConvCase:
    """x [B, C, H, W]; offset [B, 2*G*kh*kw, Ho, Wo]; mask [B, G*kh*kw, Ho, Wo]; weight
    [Cout, C, kh, kw]; bias [Cout]; all float32; the op's attributes."""

    x: np.ndarray
    offset: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    deformable_groups: int

    def inputs(self) -> tuple:
        return self.x, self.offset, self.mask, self.weight, self.bias

    def attributes(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    deformable_groups=self.deformable_groups)


def deform_conv_case(rng: np.random.Generator, *, batch=1, channels=4, out_channels=5, size=(7, 6), kernel=(3, 3),
                     stride=(1, 1), padding=(1, 1), dilation=(1, 1), deformable_groups=1) -> DeformConvCase:
    ho = output_size(size[0], kernel[0], stride[0], padding[0], dilation[0])
    wo = output_size(size[1], kernel[1], stride[1], padding[1], dilation[1])
    k = kernel[0] * kernel[1]
    offset = rng.normal(scale=1.5, size=(batch, 2 * deformable_groups * k, ho, wo))
    pick = rng.random(offset.shape)
    offset = np.where(pick < 0.2, np.round(offset), offset)  # exact integers: weights 0 and 1
    offset = np.where(pick > 0.95, rng.choice([-9.0, 9.0], size=offset.shape), offset)  # wholly outside
    return DeformConvCase(
        x=rng.normal(size=(batch, channels, *size)).astype(np.float32),
        offset=offset.astype(np.float32),
        mask=rng.random((batch, deformable_groups * k, ho, wo)).astype(np.float32),
        weight=(rng.normal(size=(out_channels, channels, *kernel)) / np.sqrt(channels * k)).astype(np.float32),
        bias=rng.normal(size=out_channels).astype(np.float32),
        stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), deformable_groups=deformable_groups)


# Small shapes every fast form is checked on: YOLACT++'s 3x3 / stride 1 or 2 / padding 1, odd sizes,
# a 1-pixel-high and a 1-pixel-wide image, a non-square kernel, dilation, two deformable groups, batch 2.
CASES = {
    'yolact-3x3-s1': dict(size=(7, 6)),
    'yolact-3x3-s2': dict(size=(9, 7), stride=(2, 2)),
    'h1': dict(size=(1, 5), channels=3, padding=(1, 1)),
    'w1': dict(size=(6, 1), channels=3, padding=(1, 1)),
    'kernel-2x3-odd': dict(size=(5, 9), kernel=(2, 3), padding=(0, 1), stride=(1, 2)),
    'dilation-2': dict(size=(8, 7), dilation=(2, 2), padding=(2, 2)),
    'dilation-2x1-pad-0x2': dict(size=(8, 5), dilation=(2, 1), padding=(0, 2)),
    'deformable-groups-2': dict(size=(6, 5), channels=6, deformable_groups=2),
    'batch-2-1x1': dict(batch=2, size=(4, 5), kernel=(1, 1), padding=(0, 0)),
    'channels-20': dict(size=(5, 5), channels=20, out_channels=17),
}


def case(name: str, seed: int = 0) -> DeformConvCase:
    return deform_conv_case(np.random.default_rng(seed), **CASES[name])


def needed_tolerance(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(atol, rtol) that would have been needed, each alone, compared in float64 (Polygraphy's report)."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    scale = np.abs(np.asarray(expected, np.float64))
    return float(diff.max(initial=0)), float((diff / np.maximum(scale, 1e-30)).max(initial=0))


def assert_close(got: np.ndarray, expected: np.ndarray, *, atol: float, rtol: float = 0.0, what: str = ''):
    """Polygraphy-style check: |got - expected| <= atol + rtol |expected|, and the message says the
    tolerance that would have been needed."""
    assert got.shape == expected.shape, f'{what}: shape {got.shape} != {expected.shape}'
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    ok = diff <= atol + rtol * np.abs(np.asarray(expected, np.float64))
    needed_atol, needed_rtol = needed_tolerance(got, expected)
    assert ok.all(), (f'{what}: {int((~ok).sum())} of {ok.size} elements differ by more than atol={atol} '
                      f'rtol={rtol}; needed atol={needed_atol:.3g} (or rtol={needed_rtol:.3g})')
