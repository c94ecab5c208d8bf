"""runtime/tensorrt/paste_kernel.py under Triton's interpreter equals runtime.paste.paste_masks bit for bit,
through the same tables and rounds (runtime.tensorrt.gpu_paste) the device path uses.

The kernel runs as Triton's interpreter runs it under TRITON_INTERPRET=1 (`triton.jit` then
returns `InterpretedFunction(fn)`; here that wrapper is applied to this one kernel), so this
process needs no environment switch and other tests in it can still compile PTX. The interpreter
evaluates the kernel's float32 operations with numpy: it proves the taps, order and regions; that
the PTX rounds the same is what no FMA contraction (test_paste_ptx.py) and the gpu test show.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('triton')

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from runtime.paste import paste_masks  # noqa: E402
from runtime.tensorrt.gpu_paste import ImagePaste, build_paste_rounds, scatter_round  # noqa: E402
from runtime.tensorrt.paste_kernel import PasteKernelConfig, paste_masks_kernel  # noqa: E402

CONFIG = PasteKernelConfig()
INTERPRETED = InterpretedFunction(paste_masks_kernel.fn)


def paste_with_kernel(masks: np.ndarray, boxes: np.ndarray, image_hw, threshold: float, *,
                      memory_budget: int = 1 << 26, rows=None) -> np.ndarray:
    """Paste one image's masks (float [N, Hp, Wp]) with the interpreted kernel; bool [N, H, W]."""
    rows = np.arange(len(boxes)) if rows is None else rows
    out = [np.zeros((len(boxes), *image_hw), bool)]
    grid_masks = torch.from_numpy(np.ascontiguousarray(masks))
    for paste_round in build_paste_rounds([ImagePaste(image_hw, rows, boxes)], masks.shape[-2:],
                                          block_hw=(CONFIG.block_y, CONFIG.block_x), memory_budget=memory_budget):
        ints = torch.from_numpy(paste_round.words.view(np.int32))
        floats = torch.from_numpy(paste_round.words.view(np.float32))
        packed = torch.full((paste_round.out_nbytes,), 7, dtype=torch.uint8)  # every byte must be written
        for launch in paste_round.launches:
            INTERPRETED[launch.grid](
                grid_masks, ints[launch.rows_at:], ints[launch.regions_at:], ints[launch.x_taps_at:],
                floats[launch.x_weights_at:], ints[launch.y_taps_at:], floats[launch.y_weights_at:],
                float(np.float32(threshold)), masks.shape[-2], masks.shape[-1], packed, **CONFIG.constexprs())
        assert set(np.unique(packed.numpy())) <= {0, 1}, 'a packed byte was not written'
        scatter_round(paste_round, packed.numpy(), out)
    return out[0]


def random_case(rng, n, proto_hw):
    """Masks near the threshold (so rounding decides pixels) and boxes in and beyond the image."""
    masks = (0.5 + rng.normal(0, 0.05, (n, *proto_hw))).astype(np.float32)
    masks[:, ::3] = 0.5  # exactly the threshold: > must not become >=
    boxes = rng.uniform(-0.2, 1.2, (n, 4)).astype(np.float32)
    return masks, boxes


@pytest.mark.parametrize('image_hw, proto_hw', [
    ((37, 53), (12, 9)),    # upscale, non-square both ways
    ((7, 5), (16, 20)),     # downscale
    ((1, 1), (6, 6)),       # 1 x 1 image
    ((60, 9), (5, 7)),      # several row tiles, one narrow column tile
    ((3, 200), (4, 11)),    # two column tiles
], ids=['upscale', 'downscale', '1x1', 'tall', 'wide'])
def test_kernel_equals_paste_masks_bit_for_bit(image_hw, proto_hw):
    rng = np.random.default_rng(sum(image_hw) * 31 + sum(proto_hw))
    masks, boxes = random_case(rng, 6, proto_hw)
    boxes[0] = [0, 0, 1, 1]            # the whole image
    boxes[1] = [0.9, 0.8, 0.1, 0.3]    # inverted
    boxes[2] = [0.4, 0.2, 0.4, 0.9]    # zero width
    boxes[3] = [-0.5, -0.5, 0.3, 1.5]  # partly outside
    for threshold in (0.5, 0.47):
        expected = paste_masks(masks, boxes, image_hw, threshold)
        np.testing.assert_array_equal(paste_with_kernel(masks, boxes, image_hw, threshold), expected)


def test_kernel_rounds_like_paste_masks_where_one_ulp_decides():
    """Masks of 0.7 and its float32 neighbours: the blended values differ from the threshold by an
    ulp or two, so any other order of the products and sums flips pixels."""
    c = np.float32(0.7)
    rng = np.random.default_rng(5)
    masks = rng.choice([np.nextafter(c, np.float32(0)), c, np.nextafter(c, np.float32(1))], (3, 12, 9))
    masks = masks.astype(np.float32)
    boxes = np.array([[0, 0, 1, 1], [0.1, 0.05, 0.95, 0.8], [0.3, 0.9, 0.0, 0.2]], np.float32)
    for threshold in (np.nextafter(c, np.float32(0)), c):
        expected = paste_masks(masks, boxes, (37, 53), threshold)
        assert 0.05 < expected[0].mean() < 0.95, 'the case must be rounding-sensitive'
        np.testing.assert_array_equal(paste_with_kernel(masks, boxes, (37, 53), threshold), expected)


def test_kernel_reads_float16_masks_and_engine_rows():
    """FP16 engines' masks, addressed by their row in a [B * D, Hp, Wp] buffer (not 0..N-1)."""
    rng = np.random.default_rng(3)
    masks, boxes = random_case(rng, 10, (9, 13))
    masks = masks.astype(np.float16)
    rows = np.array([7, 2, 9])
    got = paste_with_kernel(masks, boxes[rows], (30, 41), 0.5, rows=rows)
    np.testing.assert_array_equal(got, paste_masks(masks[rows].astype(np.float32), boxes[rows], (30, 41), 0.5))


def test_rounds_split_by_memory_budget_give_the_same_masks():
    rng = np.random.default_rng(4)
    masks, boxes = random_case(rng, 5, (8, 8))
    boxes[:] = [0.1, 0.1, 0.9, 0.9]  # 24 x 24 = 576 bytes each
    rounds = build_paste_rounds([ImagePaste((30, 30), np.arange(5), boxes)], (8, 8), block_hw=(4, 128),
                                memory_budget=1200)
    assert [[(launch.first, launch.stop) for launch in r.launches] for r in rounds] == [[(0, 2)], [(2, 4)], [(4, 5)]]
    assert [r.out_nbytes for r in rounds] == [1152, 1152, 576]
    np.testing.assert_array_equal(paste_with_kernel(masks, boxes, (30, 30), 0.5, memory_budget=1200),
                                  paste_masks(masks, boxes, (30, 30), 0.5))
    # a detection larger than the budget gets a round of its own
    one_each = build_paste_rounds([ImagePaste((30, 30), np.arange(5), boxes)], (8, 8), block_hw=(4, 128),
                                  memory_budget=100)
    assert [len(r.launches) for r in one_each] == [1] * 5


def test_no_detections_and_empty_boxes_launch_nothing():
    assert build_paste_rounds([ImagePaste((10, 10), np.zeros(0, int), np.zeros((0, 4), np.float32))], (4, 4),
                              block_hw=(4, 128)) == []
    empty = np.array([[0.5, 0.1, 0.5, 0.9], [0.2, 0.2, 0.7, 0.2], [1.1, 0, 1.3, 1]], np.float32)
    assert build_paste_rounds([ImagePaste((10, 10), np.arange(3), empty)], (4, 4), block_hw=(4, 128)) == []
    assert paste_with_kernel(np.ones((3, 4, 4), np.float32), empty, (10, 10), 0.5).shape == (3, 10, 10)
    assert paste_with_kernel(np.zeros((0, 4, 4), np.float32), np.zeros((0, 4), np.float32), (6, 8), 0.5).shape \
        == (0, 6, 8)
