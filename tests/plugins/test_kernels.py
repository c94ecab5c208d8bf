"""The Triton kernels equal the numpy references: FastNMS index for index, MaskAssembly within
1e-5. On a CUDA device when there is one, else under Triton's interpreter (see conftest.py), so
sizes stay small; one test runs the original's top_k of 200 with more candidates than that."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from plugins.fast_nms.kernels import fast_nms as fast_nms_kernel
from plugins.fast_nms.reference import fast_nms
from plugins.mask_assembly.kernels import assemble_masks as assemble_masks_kernel
from plugins.mask_assembly.reference import assemble_masks
from tests.plugins.cases import (NMSCase, mask_case, mask_cases, negative_zero_case, nms_cases, random_boxes,
                                 random_scores)

# The interpreter evaluates 0 / 0 in lanes the kernel then masks out.
pytestmark = pytest.mark.filterwarnings('ignore:invalid value encountered in divide:RuntimeWarning')
KERNEL_SETTINGS = settings(max_examples=25, derandomize=True, deadline=None)
# Small enough for the interpreter: sorted lists of 16 slots, at most 4 classes.
SMALL_NMS = dict(max_priors=40, max_classes=4, max_batch=2, max_top_k=16, max_max_dets=16)


def garbage_outputs(batch: int, max_dets: int, dtype, device):
    """NaN / -1 filled output buffers: the kernel must write every element (TensorRT does not clear outputs)."""
    return (torch.full((batch,), -1, dtype=torch.int32, device=device),
            torch.full((batch, max_dets, 4), float('nan'), dtype=dtype, device=device),
            torch.full((batch, max_dets), float('nan'), dtype=dtype, device=device),
            torch.full((batch, max_dets), -1, dtype=torch.int32, device=device),
            torch.full((batch, max_dets), -1, dtype=torch.int32, device=device))


def check_nms(case: NMSCase, device: str, dtype=torch.float32):
    boxes = torch.from_numpy(case.boxes).to(device, dtype)
    scores = torch.from_numpy(case.scores).to(device, dtype)
    got = fast_nms_kernel(boxes, scores, **case.attributes(),
                          outputs=garbage_outputs(boxes.shape[0], case.max_dets, dtype, device))
    ref = fast_nms(boxes.float().cpu().numpy(), scores.float().cpu().numpy(), **case.attributes())
    names = ('num_dets', 'boxes', 'scores', 'classes', 'indices')
    for name, value, expected in zip(names, got, ref):
        np.testing.assert_array_equal(value.float().cpu().numpy(), expected.astype(np.float32), err_msg=name)


@KERNEL_SETTINGS
@given(case=nms_cases(**SMALL_NMS))
def test_fast_nms_kernel_equals_reference(case, kernel_device):
    check_nms(case, kernel_device)


@settings(max_examples=6, derandomize=True, deadline=None)
@given(case=nms_cases(**SMALL_NMS))
def test_fast_nms_kernel_float16_inputs(case, kernel_device):
    check_nms(case, kernel_device, torch.float16)


@pytest.mark.parametrize('cross_class', [False, True])
def test_fast_nms_kernel_more_than_top_k_candidates_per_class(cross_class, kernel_device):
    """The original's top_k = 200 with 260 candidates and a full max_dets = 100."""
    rng = np.random.default_rng(2)
    scores = np.maximum(random_scores(rng, 1, 260, 1, 0.05, 64), np.float32(0.06))  # every prior a candidate
    case = NMSCase(random_boxes(rng, (1, 260)), scores, 0.05, 0.5, 200, 100, cross_class)
    check_nms(case, kernel_device)


@pytest.mark.parametrize('cross_class', [False, True])
def test_fast_nms_kernel_ties_across_class_chunks(cross_class, kernel_device):
    """20 classes: the kernel reads class scores 16 at a time; the best class on a tie is still the lowest."""
    rng = np.random.default_rng(3)
    scores = random_scores(rng, 1, 24, 20, 0.05, 4)
    scores[0, :, 18] = scores[0, :, 3] = scores[0].max(axis=1)  # classes 3 and 18 tie for every prior's best
    check_nms(NMSCase(random_boxes(rng, (1, 24)), scores, 0.05, 0.5, 8, 16, cross_class), kernel_device)


def test_fast_nms_kernel_negative_zero_ties_zero(kernel_device):
    check_nms(negative_zero_case(), kernel_device)


def test_fast_nms_kernel_without_candidates_writes_zero_rows(kernel_device):
    rng = np.random.default_rng(4)
    case = NMSCase(random_boxes(rng, (2, 20)), np.full((2, 20, 3), 0.05, np.float32), 0.05, 0.5, 8, 10, False)
    check_nms(case, kernel_device)


@KERNEL_SETTINGS
@given(case=mask_cases(max_grid=12))
def test_mask_assembly_kernel_equals_reference(case, kernel_device):
    inputs = [torch.from_numpy(x).to(kernel_device) for x in case.inputs()]
    batch, height, width, _ = case.proto.shape
    out = torch.full((batch, case.det_indices.shape[1], height, width), float('nan'), device=kernel_device)
    masks = assemble_masks_kernel(*inputs, crop_padding=case.crop_padding, out=out)
    expected = assemble_masks(*case.inputs(), crop_padding=case.crop_padding)
    np.testing.assert_allclose(masks.cpu().numpy(), expected, rtol=0, atol=1e-5)
    # the crop is exact: the same pixels are zero
    np.testing.assert_array_equal(masks.cpu().numpy() == 0, expected == 0)


def test_mask_assembly_kernel_float16_inputs(kernel_device):
    case = mask_case(np.random.default_rng(5), 2, 20, (9, 13), 8, 6, 1)
    inputs = [torch.from_numpy(x).to(kernel_device) for x in case.inputs()]
    for i in (0, 1, 3):
        inputs[i] = inputs[i].half()
    masks = assemble_masks_kernel(*inputs, crop_padding=1)
    expected = assemble_masks(*(x.float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
                                for x in inputs), crop_padding=1)
    assert masks.dtype == torch.float16
    np.testing.assert_allclose(masks.float().cpu().numpy(), expected, rtol=0, atol=1e-3)


def test_kernels_chain_like_the_engine(kernel_device):
    """FastNMS's outputs feed MaskAssembly, as in the exported graph."""
    rng = np.random.default_rng(6)
    boxes, scores = random_boxes(rng, (2, 30)), random_scores(rng, 2, 30, 3, 0.05, 0)
    coef = np.tanh(rng.normal(size=(2, 30, 8))).astype(np.float32)
    proto = np.maximum(rng.normal(size=(2, 10, 11, 8)), 0).astype(np.float32)
    attributes = dict(conf_thresh=0.05, iou_thresh=0.5, top_k=10, max_dets=12, cross_class=False)
    num_dets, det_boxes, _, _, det_indices = fast_nms_kernel(
        torch.from_numpy(boxes).to(kernel_device), torch.from_numpy(scores).to(kernel_device), **attributes)
    masks = assemble_masks_kernel(torch.from_numpy(proto).to(kernel_device), torch.from_numpy(coef).to(kernel_device),
                                  det_indices, det_boxes, num_dets, crop_padding=1)
    ref = fast_nms(boxes, scores, **attributes)
    np.testing.assert_allclose(masks.cpu().numpy(), assemble_masks(proto, coef, ref.indices, ref.boxes, ref.num_dets,
                                                                   crop_padding=1), rtol=0, atol=1e-5)


def test_kernel_launchers_name_bad_inputs():
    boxes = torch.zeros(1, 5, 4)
    with pytest.raises(ValueError, match=r'boxes \[B, P, 4\] and scores \[B, P, K\]'):
        fast_nms_kernel(boxes, torch.zeros(1, 6, 2), conf_thresh=0.05, iou_thresh=0.5, top_k=4, max_dets=4)
    with pytest.raises(ValueError, match='float32 or float16'):
        fast_nms_kernel(boxes.double(), torch.zeros(1, 5, 2).double(), conf_thresh=0.05, iou_thresh=0.5, top_k=4,
                        max_dets=4)
    with pytest.raises(ValueError, match='top_k, max_dets'):
        fast_nms_kernel(boxes, torch.zeros(1, 5, 2), conf_thresh=0.05, iou_thresh=0.5, top_k=0, max_dets=4)
    with pytest.raises(ValueError, match=r'K \* P < 2\*\*32'):  # meta tensors: shapes without memory
        fast_nms_kernel(torch.empty(1, 2**22, 4, device='meta'), torch.empty(1, 2**22, 2**10, device='meta'),
                        conf_thresh=0.05, iou_thresh=0.5, top_k=4, max_dets=4)
    with pytest.raises(ValueError, match='int32'):
        assemble_masks_kernel(torch.zeros(1, 4, 4, 2), torch.zeros(1, 5, 2), torch.zeros(1, 3, dtype=torch.int64),
                              torch.zeros(1, 3, 4), torch.zeros(1, dtype=torch.int32), crop_padding=1)
