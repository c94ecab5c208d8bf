"""The PyTorch backend: runs a .pth checkpoint (official YOLACT weights or this toolkit's own) with
the reference model and post-processing. The only runtime module that imports torch. Images go in at
their own size: the pre-processing is yolact_torch.preprocess.Preprocess, the module the exporter traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, BackendError, RawDetections
from runtime.contract import BOX_SCORES, POSTPROCESS_OUTPUTS


class TorchBackend(Backend):
    """path: a checkpoint yolact_torch.checkpoint.load_model reads.

    config: config name (default: from the checkpoint, or its file name for official weights).
    class_names, input_size, config_file: the checkpoint flags (runtime.checkpoint_flags), for
    checkpoints trained on other data.
    cross_class: Fast NMS across classes instead of per class. max_dets: detections per image
    (default: the config's max_num_detections). device: torch device string. num_threads: torch
    intra-op threads (None leaves torch's setting alone).
    """

    name = 'torch'

    def __init__(self, path: str | Path, *, config: str | None = None, cross_class: bool = False,
                 max_dets: int | None = None, device: str = 'cpu', num_threads: int | None = None,
                 class_names: str | None = None, input_size: int | None = None, config_file: str | Path | None = None):
        super().__init__(path)
        self.config_name = config
        self.checkpoint_flags = {'class_names': class_names, 'input_size': input_size, 'config_file': config_file}
        self.cross_class = bool(cross_class)
        self.max_dets = max_dets
        self.device = device
        self.num_threads = num_threads
        self._model = self._preprocess = self._cfg = None

    def _load_impl(self) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendError(f'the torch backend needs torch (pip install "yolact-deploy[torch]"): {e}') from None
        from yolact_torch.checkpoint import load_model
        from yolact_torch.config import metadata_from_config
        from yolact_torch.preprocess import Preprocess

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        model, cfg = load_model(self.path, self.config_name, map_location=self.device, **self.checkpoint_flags)
        self._model, self._cfg = model.to(self.device).eval(), cfg
        self._preprocess = Preprocess(cfg).to(self.device)
        self.metadata = metadata_from_config(cfg, cross_class=self.cross_class, max_dets=self.max_dets)
        self.max_batch = None
        # yolact_torch.postprocess.detect gives BOX_SCORES where the model re-scores masks (YOLACT++).
        self.output_names = POSTPROCESS_OUTPUTS + ((BOX_SCORES,) if model.maskiou_net is not None else ())

    def _infer_impl(self, images: np.ndarray) -> RawDetections:
        return self.postprocess(self.network(images))

    # The stages apart, so that the benchmark times them as it times the exported model's.

    def network(self, images: np.ndarray):
        """The network alone, pre-processing (resize and normalisation) included as in the exported
        graph. images: uint8 [B, H, W, 3] BGR, any size. Returns the raw head, a yolact_torch.yolact.YolactOutput
        of torch tensors on `device`: loc [B, P, 4], conf logits [B, P, C] (C with the background),
        coef [B, P, M], proto [B, Hp, Wp, M]."""
        import torch

        with torch.inference_mode():
            return self._model(self._preprocess(torch.from_numpy(images).to(self.device)))

    def postprocess(self, head) -> RawDetections:
        """Fast NMS and mask assembly (yolact_torch.postprocess.detect) of a raw head as `network` returns it,
        as the contract's numpy arrays (box_scores too for a YOLACT++ model)."""
        import torch

        from yolact_torch.postprocess import detect

        with torch.inference_mode():
            out = detect(head, self._model.priors, self._cfg, cross_class=self.cross_class,
                         max_dets=self.metadata.max_dets, maskiou_net=self._model.maskiou_net)
        return {name: tensor.cpu().numpy() for name, tensor in out._asdict().items() if tensor is not None}

    def head_decoding_to(self, decoded: dict[str, np.ndarray]):
        """The raw head (as `network` returns it) whose decoding is `decoded`: 'boxes' float32 [B, P, 4]
        xyxy relative, 'class_scores' float32 [B, P, K] (softmax, background excluded, rows summing
        below 1), 'coef' float32 [B, P, M], 'proto' float32 [B, Hp, Wp, M]. The boxes are encoded
        against the model's priors and the scores become log-probabilities with the background as
        the rest, so `postprocess` sees exactly these detections (the benchmark gives the exported
        post-processing the same ones)."""
        import torch

        from yolact_torch.box_coding import encode
        from yolact_torch.yolact import YolactOutput

        boxes, scores = torch.from_numpy(decoded['boxes']), torch.from_numpy(decoded['class_scores'])
        background = (1 - scores.sum(-1, keepdim=True)).clamp(min=1e-6)
        conf = torch.log(torch.cat([background, scores], -1))
        loc = encode(boxes, self._model.priors.cpu(), self._cfg.variances)
        return YolactOutput(*(t.to(self.device) for t in (loc, conf, torch.from_numpy(decoded['coef']),
                                                           torch.from_numpy(decoded['proto']))), None)

    def _close_impl(self) -> None:
        self._model = self._preprocess = self._cfg = None
