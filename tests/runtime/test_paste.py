"""runtime.paste (numpy, box region only) against the torch reference yolact_torch.postprocess.paste_masks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yolact_torch.postprocess import paste_masks as reference_paste
from runtime.paste import paste_masks


def random_case(rng, n, proto_hw):
    masks = rng.random((n, *proto_hw), dtype=np.float32)
    low = rng.uniform(-0.2, 0.9, (n, 2)).astype(np.float32)
    boxes = np.concatenate([low, low + rng.uniform(0, 0.7, (n, 2)).astype(np.float32)], axis=1)
    boxes[::4] = boxes[::4][:, [2, 3, 0, 1]]  # corners in either order
    boxes[1] = [0, 0, 1, 1]  # the whole image
    boxes[2, 2] = boxes[2, 0]  # zero width
    return masks, boxes


@pytest.mark.parametrize('image_hw', [(480, 640), (550, 550), (37, 201), (333, 17), (9, 12)])
def test_paste_equals_the_torch_reference(image_hw):
    rng = np.random.default_rng(sum(image_hw))
    masks, boxes = random_case(rng, 24, (69, 69))
    got = paste_masks(masks, boxes, image_hw, 0.5)
    expected = reference_paste(torch.from_numpy(masks), torch.from_numpy(boxes), image_hw, 0.5).numpy()
    assert got.dtype == bool and got.shape == (24, *image_hw)
    differ = got != expected
    if differ.any():  # allowed only where float rounding decides a value at the threshold itself
        resized = F.interpolate(torch.from_numpy(masks)[None], size=image_hw, mode='bilinear',
                                align_corners=False)[0].numpy()
        assert np.abs(resized[differ] - 0.5).max() < 1e-6, f'{differ.sum()} pixels differ'
    assert got[1].any() and not got[2].any()


def test_rows_select_masks_without_copying_them_out():
    """A batch's kept detections: rows of the [D, Hp, Wp] output, pasted as if gathered first."""
    rng = np.random.default_rng(1)
    masks, boxes = random_case(rng, 6, (40, 30))
    rows = np.array([4, 0, 4, 2])
    got = paste_masks(masks, boxes[rows], (200, 300), 0.4, rows=rows)
    np.testing.assert_array_equal(got, paste_masks(masks[rows], boxes[rows], (200, 300), 0.4))
    assert got.any()


def test_float16_masks_are_widened_exactly():
    """FP16 models' masks: every float16 is a float32, so pasting them equals pasting the widened copy."""
    rng = np.random.default_rng(2)
    masks, boxes = random_case(rng, 5, (17, 23))
    half = masks.astype(np.float16)
    got = paste_masks(half, boxes[[3, 1]], (61, 47), 0.5, rows=[3, 1])
    np.testing.assert_array_equal(got, paste_masks(half.astype(np.float32)[[3, 1]], boxes[[3, 1]], (61, 47), 0.5))


def test_masks_are_writable_zeroed_arrays_of_their_own():
    """The fresh mapping behind the stack reads as zeros outside the boxes, and each call's is new."""
    masks = np.full((2, 8, 8), 0.9, np.float32)
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
    first = paste_masks(masks, boxes, (480, 640), 0.5)
    assert first.flags.c_contiguous and first.flags.writeable
    assert first[0, :240, :320].all() and first[0].sum() == 240 * 320
    assert first[1, 240:, 320:].all() and first[1].sum() == 240 * 320
    first[:] = True
    second = paste_masks(masks, boxes, (480, 640), 0.5)
    assert second[0].sum() == 240 * 320


def test_threshold_is_strict_and_from_the_caller():
    masks = np.full((1, 4, 4), 0.5, np.float32)
    boxes = np.array([[0, 0, 1, 1]], np.float32)
    assert not paste_masks(masks, boxes, (8, 8), 0.5).any()
    assert paste_masks(masks, boxes, (8, 8), 0.25).all()


def test_no_detections_give_an_empty_stack_of_image_size():
    out = paste_masks(np.zeros((0, 20, 20), np.float32), np.zeros((0, 4), np.float32), (48, 64), 0.5)
    assert out.shape == (0, 48, 64) and out.dtype == bool


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match='masks \\[N, Hp, Wp\\] and boxes \\[N, 4\\]'):
        paste_masks(np.zeros((2, 5, 5), np.float32), np.zeros((3, 4), np.float32), (10, 10), 0.5)
    with pytest.raises(ValueError, match='rows \\(1,\\)'):  # a row past the masks
        paste_masks(np.zeros((2, 5, 5), np.float32), np.zeros((1, 4), np.float32), (10, 10), 0.5, rows=[2])


def test_pasting_works_where_no_cache_folder_is_writable():
    """A read-only container: numba finds nowhere to keep the machine code, so it compiles per process."""
    env = dict(os.environ, NUMBA_CACHE_LOCATOR_CLASSES='UserProvidedCacheLocator', NUMBA_CACHE_DIR='/dev/null/numba')
    code = ('import numpy as np; from runtime.paste import paste_masks; '
            'print(int(paste_masks(np.ones((1, 4, 4), np.float32), np.array([[0, 0, 0.5, 1]], np.float32), (8, 8)).sum()))')
    result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == '32'


@pytest.mark.battery
def test_a_corrupt_numba_cache_is_recompiled_with_one_warning(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    code = ('import numpy as np; from runtime.paste import paste_masks; print(int(paste_masks(np.ones((1, 4, 4), '
            'np.float32), np.array([[0, 0, 0.5, 1]], np.float32), (8, 8)).sum()))')

    def run():
        return subprocess.run([sys.executable, '-W', 'default', '-c', code], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[2], timeout=120)

    assert run().stdout.strip() == '32'
    cached = [p for p in tmp_path.rglob('*') if p.suffix in ('.nbi', '.nbc')]
    assert {p.suffix for p in cached} == {'.nbi', '.nbc'}
    for path in cached:  # a disk error or an interrupted write: numba's pickles cannot be read
        path.write_bytes(b'garbage\n')
    repaired = run()
    assert repaired.returncode == 0 and repaired.stdout.strip() == '32', repaired.stderr[-2000:]
    assert repaired.stderr.count('RuntimeWarning: numba cache of runtime.paste._paste_boxes') == 1
    assert 'is corrupt' in repaired.stderr and 'recompiling it' in repaired.stderr
    again = run()  # the fresh machine code was saved over the corrupt entry: no warning any more
    assert again.returncode == 0 and again.stdout.strip() == '32' and 'Warning' not in again.stderr


@pytest.mark.parametrize('image_hw', [(480, 640), (37, 201), (333, 17)])
def test_numpy_fallback_pastes_the_same_masks_as_the_numba_loop(image_hw, monkeypatch):
    """Hosts without numba paste with _paste_boxes_numpy: the same float32 operations, so the same bits."""
    pytest.importorskip('numba')
    import runtime.paste as paste

    rng = np.random.default_rng(7 + sum(image_hw))
    masks, boxes = random_case(rng, 24, (69, 69))
    masks = 0.5 + (masks - 0.5) * 0.01  # values near the threshold, where rounding decides
    rows = rng.permutation(24)[:20]
    compiled = paste_masks(masks, boxes[rows], image_hw, 0.5, rows=rows)
    monkeypatch.setattr(paste, '_paste_boxes', paste._paste_boxes_numpy)
    fallback = paste_masks(masks, boxes[rows], image_hw, 0.5, rows=rows)
    assert compiled.any()
    np.testing.assert_array_equal(fallback, compiled)


def test_runtime_pastes_without_numba_installed(tmp_path):
    code = ('import sys; sys.modules["numba"] = None\n'
            'import numpy as np\n'
            'import runtime.paste as paste\n'
            'assert paste._paste_boxes is paste._paste_boxes_numpy\n'
            'rng = np.random.default_rng(3)\n'
            'masks = rng.random((3, 20, 20), dtype=np.float32)\n'
            'boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [0.5, 0.5, 0.4, 0.3]], np.float32)\n'
            f'np.save({str(tmp_path / "masks.npy")!r}, paste.paste_masks(masks, boxes, (90, 70), 0.5))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rng = np.random.default_rng(3)
    masks = rng.random((3, 20, 20), dtype=np.float32)
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [0.5, 0.5, 0.4, 0.3]], np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / 'masks.npy'), paste_masks(masks, boxes, (90, 70), 0.5))
