"""Each loss on hand-made cases: a perfect prediction costs (nearly) nothing, a wrong one more."""

import math

import pytest
import torch

from yolact_torch.box_coding import point_form
from yolact_torch.config import get_config
from yolact_torch.losses import (Match, MaskSample, Target, box_loss, mask_iou, mask_loss, mask_samples, maskiou_loss,
                                 match, ohem_conf_loss, semantic_loss, yolact_loss)
from yolact_torch.priors import feature_sizes, make_priors
from yolact_torch.yolact import Yolact

CFG = get_config('yolact_tiny')
PRIORS = make_priors(CFG)
SIZE = CFG.max_size
PROTO = 2 * feature_sizes(CFG)[0][0]  # prototype grid side: twice P3's


def _rect_mask(x1, y1, x2, y2, size=SIZE):
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def test_match_assigns_the_prior_a_truth_equals():
    k = 1000
    truth = point_form(PRIORS[k])[None]
    m = match(truth, torch.tensor([2]), PRIORS, CFG)
    assert m.conf[k] == 3 and m.truth_index[k] == 0
    torch.testing.assert_close(m.loc[k], torch.zeros(4), atol=1e-5, rtol=0)
    far = point_form(PRIORS).clamp(0, 1)
    far_iou = (far[:, 0] > truth[0, 2] + 0.05) | (far[:, 2] < truth[0, 0] - 0.05)
    assert (m.conf[far_iou] == 0).all()


def test_every_truth_gets_a_prior_even_below_the_threshold():
    tiny = torch.tensor([[0.50, 0.50, 0.51, 0.51], [0.10, 0.80, 0.112, 0.815]])
    m = match(tiny, torch.tensor([0, 4]), PRIORS, CFG)
    positive = m.conf > 0
    assert positive.sum() == 2
    assert sorted(m.conf[positive].tolist()) == [1, 5]
    assert sorted(m.truth_index[positive].tolist()) == [0, 1]


def test_match_without_truths_is_all_background():
    m = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), PRIORS, CFG)
    assert (m.conf == 0).all() and m.loc.shape == PRIORS.shape


def test_box_loss_is_zero_for_the_exact_regression_and_grows_with_error():
    truths = torch.tensor([[0.1, 0.2, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]])
    m = match(truths, torch.tensor([0, 1]), PRIORS, CFG)
    positive = (m.conf > 0)[None]
    loc_t = m.loc[None]
    assert box_loss(loc_t.clone(), loc_t, positive, CFG) == 0
    small = box_loss(loc_t + 0.1, loc_t, positive, CFG)
    large = box_loss(loc_t + 1.0, loc_t, positive, CFG)
    assert 0 < small < large
    # Smooth L1 with beta 1: 0.5 * 0.1^2 per coordinate, 4 per positive prior, times bbox_alpha.
    torch.testing.assert_close(small, torch.tensor(float(positive.sum()) * 4 * 0.005 * CFG.bbox_alpha), rtol=1e-3, atol=0)


def test_ohem_uses_three_negatives_per_positive():
    num_priors, num_classes = 50, CFG.num_classes
    conf_t = torch.zeros(1, num_priors, dtype=torch.long)
    conf_t[0, 7] = 2
    uniform = torch.zeros(1, num_priors, num_classes)
    # Uniform logits: every chosen prior costs log(C); 1 positive + 3 negatives are chosen.
    torch.testing.assert_close(ohem_conf_loss(uniform, conf_t, CFG),
                               torch.tensor(4 * math.log(num_classes) * CFG.conf_alpha))


def test_ohem_picks_the_hardest_negatives_and_never_neutrals():
    num_priors, num_classes = 50, CFG.num_classes
    conf_t = torch.zeros(1, num_priors, dtype=torch.long)
    conf_t[0, 0] = 1
    conf_t[0, 10:20] = -1
    conf = torch.zeros(1, num_priors, num_classes)
    conf[0, :, 0] = 10.0  # confident background everywhere
    conf[0, 0, 1] = 20.0  # confident, correct positive
    base = ohem_conf_loss(conf, conf_t, CFG)
    assert base < 1e-2
    conf[0, 10:20, 3] = 30.0  # neutrals that look like objects: not counted
    torch.testing.assert_close(ohem_conf_loss(conf, conf_t, CFG), base)
    conf[0, 30:32, 3] = 30.0  # two hard negatives: counted
    assert ohem_conf_loss(conf, conf_t, CFG) > 30


def test_conf_loss_perfect_vs_wrong_class():
    conf_t = torch.zeros(1, 20, dtype=torch.long)
    conf_t[0, :2] = torch.tensor([3, 5])
    perfect = torch.zeros(1, 20, CFG.num_classes)
    perfect[0, :, 0] = 15
    perfect[0, 0, 3], perfect[0, 1, 5] = 30, 30
    wrong = perfect.clone()
    wrong[0, 0, 3], wrong[0, 0, 1] = 0, 30
    assert ohem_conf_loss(perfect, conf_t, CFG) < 1e-4
    assert ohem_conf_loss(wrong, conf_t, CFG) > 10


def _mask_case(rect, coef_value):
    """One image, one truth (a rectangle in input pixels, corners on the prototype grid), one
    positive prior; the prototype's channel 0 is +20 inside the rectangle, -20 outside, and the
    prior's coefficient for it is `coef_value` (1: the right mask, -1: its inverse, 0: no idea)."""
    x1, y1, x2, y2 = rect
    gt_mask = _rect_mask(x1, y1, x2, y2)
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32) / SIZE
    proto = torch.full((1, PROTO, PROTO, 2), -20.0)
    scale = SIZE // PROTO
    proto[0, y1 // scale:y2 // scale, x1 // scale:x2 // scale, 0] = 20.0
    coef = torch.zeros(1, 3, 2)
    coef[0, 1, 0] = coef_value
    conf = torch.zeros(3, dtype=torch.long)
    conf[1] = 1
    matches = [Match(torch.zeros(3, 4), conf, torch.zeros(3, dtype=torch.long))]
    return mask_loss(mask_samples(coef, proto, matches, [Target(box, torch.tensor([0]), gt_mask[None])], CFG), CFG)


def test_mask_loss_perfect_vs_wrong():
    assert _mask_case((40, 80, 120, 160), 1.0) < 1e-3
    assert _mask_case((40, 80, 120, 160), -1.0) > 10


@pytest.mark.parametrize('rect', [(40, 80, 120, 160), (40, 40, 200, 280)])
def test_mask_loss_is_normalised_by_box_area(rect):
    # coef 0: every pixel of the crop (the box grown by crop_padding) predicts 0.5, costing log 2;
    # the sum is divided by the box's area in prototype pixels.
    scale = SIZE // PROTO
    w, h = (rect[2] - rect[0]) // scale, (rect[3] - rect[1]) // scale
    pad = 2 * CFG.crop_padding
    expected = math.log(2) * (w + pad) * (h + pad) / (w * h) * CFG.mask_alpha
    torch.testing.assert_close(_mask_case(rect, 0.0), torch.tensor(expected), rtol=1e-4, atol=0)


def test_mask_loss_trains_at_most_masks_to_train_per_image():
    rect = _rect_mask(0, 0, SIZE, SIZE)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    proto = torch.zeros(1, PROTO, PROTO, 1)
    n = CFG.masks_to_train + 50
    matches = [Match(torch.zeros(n, 4), torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))]
    # sigmoid(0) = 0.5 against an all-ones mask: log(2) per pixel, times the box area, divided by it.
    samples = mask_samples(torch.zeros(1, n, 1), proto, matches, [Target(box, torch.tensor([0]), rect[None])], CFG)
    loss = mask_loss(samples, CFG)
    torch.testing.assert_close(loss, torch.tensor(CFG.masks_to_train * math.log(2) * CFG.mask_alpha), rtol=1e-4, atol=0)


def test_semantic_loss_perfect_vs_inverted():
    height = width = SIZE // 8
    masks = torch.stack([_rect_mask(0, 0, 160, 160), _rect_mask(160, 160, 320, 320)])
    target = Target(torch.tensor([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]), torch.tensor([1, 3]), masks)
    segm = torch.full((1, CFG.num_classes - 1, height, width), -20.0)
    segm[0, 1, :20, :20] = 20
    segm[0, 3, 20:, 20:] = 20
    assert semantic_loss(segm, [target], CFG) < 1e-3
    assert semantic_loss(-segm, [target], CFG) > 1


@pytest.mark.parametrize('with_empty_image', [False, True])
def test_yolact_loss_on_model_output_is_finite_and_differentiable(with_empty_image):
    torch.manual_seed(0)
    model = Yolact(CFG).train()
    model.init_weights()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    full = Target(torch.tensor([[0.1, 0.1, 0.5, 0.6]]), torch.tensor([2]), _rect_mask(32, 32, 160, 192)[None])
    empty = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, SIZE, SIZE, dtype=torch.uint8))
    losses = yolact_loss(out, model.priors, [full, empty if with_empty_image else full], CFG)
    assert all(torch.isfinite(t) and t > 0 for t in losses[:4])
    assert losses.maskiou == 0  # YOLACT: no maskiou_net
    losses.total.backward()
    assert model.prediction_layers[0].conf_layer.weight.grad.abs().sum() > 0


PLUS = get_config('yolact_plus_tiny')


class _Recorder(torch.nn.Module):
    """A stand-in maskiou_net: records its input and predicts `value` for every class."""

    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))
        self.seen = None

    def forward(self, masks):
        self.seen = masks
        return self.value.expand(masks.shape[0], PLUS.num_classes - 1)


def _square(side, x1, y1, x2, y2, inside, outside=0.0):
    mask = torch.full((side, side), outside)
    mask[y1:y2, x1:x2] = inside
    return mask


def test_mask_iou_of_binary_masks():
    a, b = _square(10, 0, 0, 4, 4, 1.0), _square(10, 2, 0, 6, 4, 1.0)  # 16 px each, 8 shared
    torch.testing.assert_close(mask_iou(torch.stack([a, a]), torch.stack([b, a])), torch.tensor([8 / 24, 1.0]))


def test_maskiou_loss_targets_the_iou_of_the_binarised_mask_and_skips_small_truths():
    """Mask 0: predicted 0.9 on 6x6 pixels (0.3 elsewhere: below 0.5, so not in the binarised mask)
    against a 6x8 truth holding them: IoU 36/48. Mask 1: truth of 5x5 = 25 pixels, not more than
    discard_mask_area (25): left out. A net predicting 0 costs alpha * 0.5 * 0.75 ** 2 (smooth L1
    below 1), and it sees mask 0 as predicted (float, not binarised)."""
    assert PLUS.discard_mask_area == 25 and PLUS.maskiou_alpha == 25
    pred = torch.stack([_square(20, 2, 2, 8, 8, 0.9, 0.3), _square(20, 0, 0, 5, 5, 0.9)])
    truth = torch.stack([_square(20, 2, 2, 10, 8, 1.0), _square(20, 0, 0, 5, 5, 1.0)])
    sample = MaskSample(pred, truth, torch.zeros(2, 4), torch.tensor([3, 1]))
    net = _Recorder(0.0)
    loss = maskiou_loss([sample], net, PLUS)
    torch.testing.assert_close(loss, torch.tensor(PLUS.maskiou_alpha * 0.5 * 0.75 ** 2))
    torch.testing.assert_close(net.seen, pred[:1, None].detach())
    assert maskiou_loss([sample], _Recorder(0.75), PLUS) < 1e-10  # a perfect prediction costs nothing
    loss.backward()
    assert net.value.grad < 0  # predicting more lowers it


def test_maskiou_loss_is_zero_when_every_truth_is_small():
    pred = _square(20, 0, 0, 5, 5, 0.9)[None]
    assert maskiou_loss([MaskSample(pred, (pred > 0.5).float(), torch.zeros(1, 4), torch.tensor([0]))],
                        _Recorder(0.0), PLUS) == 0


def test_yolact_plus_loss_trains_maskiou_net():
    torch.manual_seed(0)
    model = Yolact(PLUS).train()
    model.init_weights()
    out = model(torch.randn(1, 3, SIZE, SIZE))
    target = Target(torch.tensor([[0.1, 0.1, 0.6, 0.7]]), torch.tensor([2]), _rect_mask(32, 32, 192, 224)[None])
    losses = yolact_loss(out, model.priors, [target], PLUS, maskiou_net=model.maskiou_net)
    assert all(torch.isfinite(t) and t > 0 for t in losses)
    losses.maskiou.backward()
    assert model.maskiou_net.maskiou_net[0].weight.grad.abs().sum() > 0
    # The masks it sees are not detached (as the original's): the loss also reaches the mask coefficients.
    assert model.prediction_layers[0].mask_layer.weight.grad.abs().sum() > 0
