"""The torch part of the exported graph: uint8 images of any size in, the network's decoded outputs out.

Fast NMS and mask assembly are not traced from torch: the exporter appends them afterwards as the
`yolact::FastNMS` / `yolact::MaskAssembly` ONNX function nodes (export/postprocess_nodes.py), so
what torch traces here ends where those ops begin.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from yolact_torch.box_coding import decode
from yolact_torch.config import YolactConfig
from yolact_torch.preprocess import Preprocess


class DecodedHead(NamedTuple):
    """Inputs of the post-processing ops, for B images and P priors.

    boxes: float32 [B, P, 4] xyxy, relative 0..1 (decoded, not clipped).
    scores: float32 [B, P, K] softmax probabilities without the background column
        (K = num_classes - 1, class k is `class_names[k]`).
    coef: float32 [B, P, M] mask coefficients (tanh applied).
    proto: float32 [B, Hp, Wp, M] prototypes (NHWC, ReLU applied).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    coef: torch.Tensor
    proto: torch.Tensor


class RawHead(NamedTuple):
    """The `--no-postprocess` outputs: loc float32 [B, P, 4] (box regression, not decoded);
    conf float32 [B, P, num_classes] softmax, background column 0 included; coef [B, P, M];
    proto [B, Hp, Wp, M] NHWC; priors float32 [P, 4] (cx, cy, w, h relative; a constant)."""

    loc: torch.Tensor
    conf: torch.Tensor
    coef: torch.Tensor
    proto: torch.Tensor
    priors: torch.Tensor


class DeployNetwork(nn.Module):
    """Pre-processing (resize to cfg.input_size and normalisation, yolact_torch.preprocess.Preprocess) +
    YOLACT + softmax (+ box decoding) for export.

    forward(images uint8 [B, H, W, 3] BGR at their own size, H, W >= 1)
        -> DecodedHead (decode=True) or RawHead (decode=False).
    """

    def __init__(self, yolact: nn.Module, cfg: YolactConfig, *, decode_boxes: bool = True):
        super().__init__()
        self.preprocess = Preprocess(cfg)
        self.yolact = yolact.eval()
        self.variances = tuple(cfg.variances)
        self.decode_boxes = decode_boxes

    def forward(self, images: torch.Tensor):
        out = self.yolact(self.preprocess(images))
        conf = torch.softmax(out.conf, dim=-1)
        priors = self.yolact.priors
        if not self.decode_boxes:
            return RawHead(out.loc, conf, out.coef, out.proto, priors)
        boxes = decode(out.loc, priors, self.variances)
        # Column 0 is the background; the post-processing ops see foreground classes only.
        return DecodedHead(boxes, conf[..., 1:], out.coef, out.proto)
