"""The device-free half of the TensorRT backend: engine I/O checks against the contract, num_dets
validation, which byte ranges are downloaded, and rebuilding RawDetections from them."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolact_torch.config import get_config, metadata_from_config
from runtime.contract import BOX_SCORES
from runtime.tensorrt.engine_io import (EngineIO, EngineIOError, TensorSpec, check_num_dets, download_segments,
                                       fit_to_profile, gather_detections, validate_engine_io)

META = metadata_from_config(get_config('yolact_base'))
D = META.max_dets
HP = 138


IMAGES = ((32, 32), (1080, 1920), (3840, 3840))  # the builder's default profile


def contract_io(max_dets=D, images_dtype=np.uint8, masks_dtype=np.float32, batches=(1, 8, 32), images=IMAGES,
                drop=(), extra=()):
    """EngineIO of an engine built from our ONNX contract (dynamic batch, height and width)."""
    tensors = [
        TensorSpec('images', np.dtype(images_dtype), (-1, -1, -1, 3), True),
        TensorSpec('num_dets', np.dtype(np.int32), (-1,), False),
        TensorSpec('boxes', np.dtype(np.float32), (-1, max_dets, 4), False),
        TensorSpec('scores', np.dtype(np.float32), (-1, max_dets), False),
        TensorSpec('classes', np.dtype(np.int32), (-1, max_dets), False),
        TensorSpec('masks', np.dtype(masks_dtype), (-1, max_dets, HP, HP), False),
    ] + list(extra)
    return EngineIO(tuple(t for t in tensors if t.name not in drop), *batches, *images)


def test_contract_engine_passes_and_sizes_follow_the_batch():
    io = contract_io()
    validate_engine_io(io, META, 'x.engine')
    assert io.max_dets == D
    assert io['masks'].shape_for(8) == (8, D, HP, HP)
    assert io['masks'].row_nbytes == HP * HP * 4
    assert io['num_dets'].nbytes_for(8) == 32


def test_fp16_outputs_are_accepted():
    validate_engine_io(contract_io(masks_dtype=np.float16), META, 'x.engine')


def box_scores_spec(dtype=np.float32, shape=(-1, D)):
    return TensorSpec(BOX_SCORES, np.dtype(dtype), shape, False)


@pytest.mark.parametrize('dtype', [np.float32, np.float16])
def test_yolact_plus_engines_have_box_scores_to_download(dtype):
    """box_scores is an optional output: downloaded (after the contract's) where the engine has
    it, not asked for where it does not."""
    plus = contract_io(extra=[box_scores_spec(dtype)])
    validate_engine_io(plus, META, 'x.engine')
    assert plus.detection_outputs == ('boxes', 'scores', 'classes', 'masks', BOX_SCORES)
    assert contract_io().detection_outputs == ('boxes', 'scores', 'classes', 'masks')


@pytest.mark.parametrize('io, words', [
    (contract_io(images_dtype=np.float32), ['float32', 'uint8 [B, H, W, 3]', 'make engine']),
    (contract_io(images=((64, 64), (32, 640), (640, 640))), ['image range', 'make engine']),
    (contract_io(max_dets=50), ['max_dets=100', '50', 'make engine']),
    (contract_io(drop=('num_dets', 'boxes')), ['no-postprocess', 'num_dets']),
    (contract_io(masks_dtype=np.int32), ['masks', 'int32']),
    (contract_io(extra=[TensorSpec('priors', np.dtype(np.float32), (19248, 4), True)]), ['inputs', 'priors']),
    (contract_io(batches=(4, 2, 8)), ['4/2/8']),
    (contract_io(extra=[box_scores_spec(np.int32)]), [BOX_SCORES, 'int32']),
    (contract_io(extra=[box_scores_spec(shape=(-1, D, 1))]), [BOX_SCORES, 'rank 2']),
    (contract_io(extra=[box_scores_spec(shape=(-1, 50))]), ['box_scores holds 50', 'max_dets=100']),
    (contract_io(extra=[TensorSpec('mask_scores', np.dtype(np.float32), (-1, D), False)]),
     ['mask_scores', 'not in the model contract', 'make engine']),
])
def test_mismatched_engines_are_refused_with_the_fix(io, words):
    with pytest.raises(EngineIOError) as err:
        validate_engine_io(io, META, 'model.fp16.engine')
    assert 'model.fp16.engine' in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_batch_outside_the_profile():
    io = contract_io(batches=(1, 4, 8))
    io.check_batch(1)
    io.check_batch(8)
    with pytest.raises(EngineIOError, match='1..8.*--max-batch'):
        io.check_batch(9)
    with pytest.raises(EngineIOError):
        io.check_batch(0)


def test_num_dets_outside_range_is_an_error():
    assert check_num_dets(np.array([0, 3, D], np.int32), D).tolist() == [0, 3, D]
    with pytest.raises(EngineIOError, match='image 1'):
        check_num_dets(np.array([2, D + 1], np.int32), D)
    with pytest.raises(EngineIOError, match='-1'):
        check_num_dets(np.array([-1], np.int32), D)


def test_segments_cover_only_real_rows_and_merge_full_images():
    row = 16
    assert download_segments(np.array([2, 0, 5]), 10, row) == [(0, 32), (320, 80)]
    # image 0 full: its range runs into image 1's rows
    assert download_segments(np.array([10, 3]), 10, row) == [(0, 160 + 48)]
    assert download_segments(np.array([0, 0]), 10, row) == []
    assert download_segments(np.array([], np.int32), 10, row) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.integers(1, 12))
def test_segments_equal_the_row_mask(counts, row_nbytes):
    """Bytes covered by the segments are exactly the rows i, d with d < num_dets[i], no overlap."""
    max_dets = 6
    counts = np.array(counts)
    covered = np.zeros(len(counts) * max_dets * row_nbytes, np.int32)
    for offset, nbytes in download_segments(counts, max_dets, row_nbytes):
        assert nbytes > 0
        covered[offset:offset + nbytes] += 1
    rows = (np.arange(max_dets)[None, :] < counts[:, None]).astype(np.int32)
    expected = np.repeat(rows.reshape(-1), row_nbytes)
    np.testing.assert_array_equal(covered, expected)


def test_gather_keeps_real_rows_and_zeroes_stale_padding():
    rng = np.random.default_rng(0)
    b, d, hp = 3, 5, 4
    # What a reused pinned buffer holds: garbage everywhere past num_dets.
    host = {
        'boxes': rng.random((b, d, 4), np.float32),
        'scores': rng.random((b, d), np.float32),
        'classes': rng.integers(0, 80, (b, d)).astype(np.int32),
        'masks': rng.random((b, d, hp, hp)).astype(np.float16),
        BOX_SCORES: rng.random((b, d)).astype(np.float16),  # a YOLACT++ engine's, from an FP16 graph
    }
    counts = np.array([2, 0, 5])
    raw = gather_detections(host, counts)
    assert raw['num_dets'].dtype == np.int32 and raw['num_dets'].tolist() == [2, 0, 5]
    assert raw['masks'].dtype == np.float32 and raw[BOX_SCORES].dtype == np.float32 and raw['classes'].dtype == np.int32
    assert sorted(raw) == sorted(['num_dets', *host])
    for name, source in host.items():
        assert raw[name].shape == source.shape
        for i, n in enumerate(counts):
            np.testing.assert_array_equal(raw[name][i, :n], source[i, :n].astype(raw[name].dtype))
            assert not raw[name][i, n:].any()
    # fresh memory: the next batch overwriting the pinned buffer does not change the result
    before = raw['boxes'].copy()
    host['boxes'][:] = -1
    np.testing.assert_array_equal(raw['boxes'], before)


def test_spec_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract_io()['images'].shape = (1,)


def test_images_inside_the_profile_go_in_as_they_are():
    images = np.zeros((2, 480, 640, 3), np.uint8)
    assert fit_to_profile(images, contract_io(), 'x.engine') is images


def test_images_above_the_profile_are_refused_naming_the_rebuild_flag():
    with pytest.raises(EngineIOError, match=r'4000x640, larger than .*3840x3840.*--max-image 4000x3840'):
        fit_to_profile(np.zeros((1, 4000, 640, 3), np.uint8), contract_io(), 'x.engine')


def test_images_below_the_profile_are_enlarged_on_the_host_with_one_log_line(caplog):
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 700, 3), dtype=np.uint8)
    with caplog.at_level('INFO', logger='runtime.tensorrt.engine_io'):
        fitted = fit_to_profile(images, contract_io(), 'x.engine')
    assert fitted.shape == (2, 32, 700, 3) and fitted.dtype == np.uint8
    # Bilinear along the short side only: each column's mean is kept within rounding.
    np.testing.assert_allclose(fitted.mean(1), images.mean(1), atol=3)
    assert [r.getMessage() for r in caplog.records] == \
        ["x.engine: 2 image(s) of 5x700 enlarged on the host to 32x700, the engine's smallest"]
