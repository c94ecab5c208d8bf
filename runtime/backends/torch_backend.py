"""The PyTorch backend: runs a .pth checkpoint (official YOLACT weights or this toolkit's own) with
the reference model and post-processing. The only runtime module that imports torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, BackendError, RawDetections


class TorchBackend(Backend):
    """path: a checkpoint model.checkpoint.load_model reads.

    config: config name (default: from the checkpoint, or its file name for official weights).
    cross_class: Fast NMS across classes instead of per class. max_dets: detections per image
    (default: the config's max_num_detections). device: torch device string. num_threads: torch
    intra-op threads (None leaves torch's setting alone).
    """

    name = 'torch'

    def __init__(self, path: str | Path, *, config: str | None = None, cross_class: bool = False,
                 max_dets: int | None = None, device: str = 'cpu', num_threads: int | None = None):
        super().__init__(path)
        self.config_name = config
        self.cross_class = bool(cross_class)
        self.max_dets = max_dets
        self.device = device
        self.num_threads = num_threads
        self._model = self._normalize = self._cfg = None

    def _load_impl(self) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendError(f'the torch backend needs torch (pip install -e .[torch]): {e}') from None
        from model.checkpoint import load_model
        from model.config import metadata_from_config
        from model.preprocess import Normalize

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        model, cfg = load_model(self.path, self.config_name, map_location=self.device)
        self._model, self._cfg = model.to(self.device).eval(), cfg
        self._normalize = Normalize(cfg).to(self.device)
        self.metadata = metadata_from_config(cfg, cross_class=self.cross_class, max_dets=self.max_dets)
        self.max_batch = None

    def _infer_impl(self, images: np.ndarray) -> RawDetections:
        import torch

        from model.postprocess import detect

        with torch.inference_mode():
            batch = self._normalize(torch.from_numpy(images).to(self.device))
            out = detect(self._model(batch), self._model.priors, self._cfg, cross_class=self.cross_class,
                         max_dets=self.metadata.max_dets, maskiou_net=self._model.maskiou_net)
        return {name: tensor.cpu().numpy() for name, tensor in out._asdict().items()}

    def _close_impl(self) -> None:
        self._model = self._normalize = self._cfg = None
