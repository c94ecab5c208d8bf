"""The torch eager side of the benchmark (runtime/bench/cpu.py): the reference model's stages, timed
the same way as the exported model's, and the models the benchmark prepares (a random-weight
checkpoint where no trained one exists, its exports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.onnx_export import export_onnx
from model.box_coding import encode
from model.checkpoint import load_model, save_checkpoint
from model.config import get_config
from model.postprocess import detect
from model.preprocess import Normalize
from model.yolact import Yolact, YolactOutput


def random_checkpoint(config: str, path: str | Path, seed: int = 0) -> Path:
    """A checkpoint of `config` with seeded random weights (speed does not depend on the weights)."""
    path = Path(path)
    if not path.is_file():
        cfg = get_config(config)
        torch.manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, Yolact(cfg).eval(), cfg)
    return path


def export_variants(checkpoint: str | Path, folder: str | Path) -> dict[str, Path]:
    """{'full': model with post-processing, 'raw': --no-postprocess model} of a checkpoint, written
    to folder/<stem>.onnx and folder/<stem>.raw.onnx unless they are newer than the checkpoint."""
    checkpoint, folder = Path(checkpoint), Path(folder)
    stem = checkpoint.name.split('.')[0]
    targets = {'full': folder / f'{stem}.onnx', 'raw': folder / f'{stem}.raw.onnx'}
    model = cfg = None
    for variant, target in targets.items():
        if target.is_file() and target.stat().st_mtime >= checkpoint.stat().st_mtime:
            continue
        if model is None:
            model, cfg = load_model(checkpoint)
        export_onnx(model, cfg, target, postprocess=variant == 'full')
    return targets


class TorchStages:
    """The reference's network and post-processing as separately timed calls.

    network(images uint8 [B, H, W, 3] BGR) -> YolactOutput (normalisation included, as in the
    exported graph). post(head) -> dict of the contract's numpy arrays, where head is the
    benchmark's decoded head: boxes float32 [B, P, 4] xyxy relative, class_scores float32
    [B, P, K], coef [B, P, M], proto [B, Hp, Wp, M]; it is turned into the raw outputs whose
    decoding gives exactly that head, so both backends post-process the same detections.
    """

    def __init__(self, checkpoint: str | Path, num_threads: int | None = None):
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model, self.cfg = load_model(checkpoint)
        self.normalize = Normalize(self.cfg)

    def network(self, images: np.ndarray) -> YolactOutput:
        with torch.inference_mode():
            return self.model(self.normalize(torch.from_numpy(images)))

    def raw_outputs(self, head: dict[str, np.ndarray]) -> YolactOutput:
        """The raw outputs (loc, conf logits) whose decode and softmax give `head`."""
        boxes, scores = torch.from_numpy(head['boxes']), torch.from_numpy(head['class_scores'])
        background = (1 - scores.sum(-1, keepdim=True)).clamp(min=1e-6)
        conf = torch.log(torch.cat([background, scores], -1))
        loc = encode(boxes, self.model.priors, self.cfg.variances)
        return YolactOutput(loc, conf, torch.from_numpy(head['coef']), torch.from_numpy(head['proto']), None)

    def post(self, raw: YolactOutput) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = detect(raw, self.model.priors, self.cfg, maskiou_net=self.model.maskiou_net)
        return {name: value.numpy() for name, value in out._asdict().items()}
