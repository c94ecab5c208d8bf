"""The backend interface (state and input checks, chunking), open_backend's choice of backend, and
the torch backend's outputs against the ONNX contract."""

import numpy as np
import pytest

from yolact_torch.config import metadata_from_config, yolact_tiny
from runtime.backends import Backend, BackendError, backend_for_path, open_backend
from runtime.backends.torch_backend import TorchBackend
from runtime.contract import BOX_SCORES, POSTPROCESS_OUTPUTS


class RecordingBackend(Backend):
    """A stand-in model: one detection per image whose score is the image's first pixel / 255."""

    name = 'recording'

    def __init__(self, path, max_batch=None):
        super().__init__(path)
        self.requested_max_batch = max_batch
        self.calls = []
        self.closed = 0

    def _load_impl(self):
        self.metadata = metadata_from_config(yolact_tiny)
        self.max_batch = self.requested_max_batch

    def _infer_impl(self, images):
        self.calls.append(len(images))
        batch, dets = len(images), self.metadata.max_dets
        scores = np.zeros((batch, dets), np.float32)
        scores[:, 0] = images[:, 0, 0, 0] / 255
        return {'num_dets': np.ones(batch, np.int32), 'boxes': np.zeros((batch, dets, 4), np.float32),
                'scores': scores, 'classes': np.zeros((batch, dets), np.int32),
                'masks': np.zeros((batch, dets, 4, 4), np.float32)}

    def _close_impl(self):
        self.closed += 1


def test_backend_lifetime_and_input_checks(tmp_path):
    backend = RecordingBackend(tmp_path / 'm.bin')
    images = np.zeros((1, 320, 320, 3), np.uint8)
    with pytest.raises(BackendError, match='not loaded'):
        backend.infer(images)
    with backend:
        with pytest.raises(BackendError, match=r'uint8 \[B, H, W, 3\].*one size per batch'):
            backend.infer(np.zeros((1, 300, 320, 4), np.uint8))
        with pytest.raises(BackendError, match='uint8'):
            backend.infer(images.astype(np.float32))
        with pytest.raises(BackendError, match='empty batch'):
            backend.infer(images[:0])
    assert backend.closed == 1 and not backend.is_loaded
    backend.close()
    assert backend.closed == 1  # close is idempotent


def test_batches_larger_than_max_batch_run_in_chunks(tmp_path):
    with RecordingBackend(tmp_path / 'm.bin', max_batch=2) as backend:
        images = np.zeros((5, 320, 320, 3), np.uint8)
        images[:, 0, 0, 0] = [10, 20, 30, 40, 50]
        raw = backend.infer(images)
    assert backend.calls == [2, 2, 1]
    assert set(raw) == set(POSTPROCESS_OUTPUTS)
    np.testing.assert_allclose(raw['scores'][:, 0], np.array([10, 20, 30, 40, 50]) / 255)


def test_auto_picks_the_backend_by_suffix(tmp_path):
    assert backend_for_path('a/b/yolact_base_54_800000.pth') == 'torch'
    with pytest.raises(BackendError, match="suffix '.xyz'.*--backend"):
        backend_for_path('model.xyz')
    with pytest.raises(BackendError, match='model file not found'):
        open_backend(tmp_path / 'missing.pth')
    (tmp_path / 'm.pth').write_bytes(b'')
    with pytest.raises(BackendError, match='unknown backend'):
        open_backend(tmp_path / 'm.pth', backend='tflite')
    with pytest.raises(BackendError, match='does not take streams'):
        open_backend(tmp_path / 'm.pth', backend='torch', streams=2)


@pytest.mark.parametrize('cross_class', [False, True])
def test_torch_backend_returns_the_onnx_contract(tiny_checkpoint, cross_class):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    with open_backend(tiny_checkpoint, cross_class=cross_class, max_dets=30) as backend:
        assert isinstance(backend, TorchBackend)
        meta = backend.metadata
        assert (meta.config, meta.class_names, meta.cross_class, meta.max_dets) == \
            ('yolact_tiny', yolact_tiny.class_names, cross_class, 30)
        raw = backend.infer(images)
        single = backend.infer(images[1:])
        assert backend.output_names == POSTPROCESS_OUTPUTS  # what a served model declares
    assert not backend.is_loaded
    proto = 2 * 40  # yolact_tiny: P3 is 40x40 at 320 px, prototypes twice that
    expected = {'num_dets': ((2,), np.int32), 'boxes': ((2, 30, 4), np.float32), 'scores': ((2, 30), np.float32),
                'classes': ((2, 30), np.int32), 'masks': ((2, 30, proto, proto), np.float32)}
    assert {k: (v.shape, v.dtype) for k, v in raw.items()} == expected
    for name in POSTPROCESS_OUTPUTS:
        np.testing.assert_allclose(single[name][0], raw[name][1], atol=1e-5)
    n = int(raw['num_dets'][0])
    assert n > 0
    assert np.all(np.diff(raw['scores'][0, :n]) <= 0)
    assert not raw['scores'][0, n:].any() and not raw['masks'][0, n:].any()
    assert np.all((raw['classes'][0, :n] >= 0) & (raw['classes'][0, :n] < len(yolact_tiny.class_names)))


def original_fast_base_transform(images, cfg):
    """dbolya/yolact utils/augmentations.py FastBaseTransform (cfg.preserve_aspect_ratio False, the
    normalising transform), as written there: uint8 [B, H, W, 3] BGR -> float32 [B, 3, S, S] RGB."""
    import torch
    import torch.nn.functional as F

    img = torch.from_numpy(images).float()  # eval.py: torch.from_numpy(cv2.imread(path)).float()
    mean = torch.tensor(cfg.mean_bgr, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(cfg.std_bgr, dtype=torch.float32)[None, :, None, None]
    img = img.permute(0, 3, 1, 2).contiguous()
    img = F.interpolate(img, cfg.input_size, mode='bilinear', align_corners=False)
    img = (img - mean) / std
    return img[:, (2, 1, 0), :, :].contiguous()


class _NetworkInput(Exception):
    """Raised by the forward pre-hook below with the network's input: the test needs no more of the network."""


def test_official_checkpoint_sees_the_originals_preprocessing(tmp_path):
    """An official-layout checkpoint in the torch backend: the network's input, for images smaller
    than, equal to and larger than the model size and of an odd aspect ratio, is the original's
    float pre-processing (resize of the float image, then normalisation)."""
    import torch

    from yolact_torch.config import yolact_resnet50
    from yolact_torch.yolact import Yolact

    torch.manual_seed(0)
    path = tmp_path / 'yolact_resnet50_54_800000.pth'  # the official file name gives the config
    torch.save(Yolact(yolact_resnet50).state_dict(), path)  # the original's key layout, random weights
    side = yolact_resnet50.input_size[0]
    rng = np.random.default_rng(0)
    with open_backend(path, backend='torch') as backend:
        def capture(module, args):
            raise _NetworkInput(args[0])

        backend._model.register_forward_pre_hook(capture)
        for size in [(side // 3, side // 2), (side, side), (side + 97, 2 * side + 31), (37, 1203)]:
            images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
            with pytest.raises(_NetworkInput) as caught:
                backend.infer(images)
            network_input = caught.value.args[0]
            expected = original_fast_base_transform(images, yolact_resnet50)
            assert network_input.shape == (2, 3, side, side)
            torch.testing.assert_close(network_input, expected, rtol=0, atol=1e-5)


def test_the_runtime_imports_without_torch():
    """A deployment host has no torch: importing the runtime (even the torch backend's module) must not load it."""
    import subprocess
    import sys
    from pathlib import Path

    code = ('import sys; import runtime.infer, runtime.pipeline, runtime.backends.torch_backend; '
            'print("torch" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == 'False'


def test_torch_backend_rescores_yolact_plus(tmp_path):
    """An official YOLACT++ checkpoint (config from its file name, 550 px): the backend's scores are
    the re-scored ones, as the exported graph's."""
    import torch

    from yolact_torch.checkpoint import load_model
    from yolact_torch.postprocess import detect
    from yolact_torch.preprocess import Normalize
    from tests.yolact_torch.plus_checkpoints import PLUS_FILES, random_plus_state

    path = tmp_path / PLUS_FILES['yolact_plus_resnet50']
    torch.save(random_plus_state('yolact_plus_resnet50'), path)
    images = np.random.default_rng(0).integers(0, 256, (1, 550, 550, 3), dtype=np.uint8)
    with TorchBackend(path) as backend:
        got = backend.infer(images)
        assert set(backend.output_names) == set(got) == {*POSTPROCESS_OUTPUTS, BOX_SCORES}
    model, cfg = load_model(path)
    with torch.no_grad():
        out = model(Normalize(cfg)(torch.from_numpy(images)))
        rescored = detect(out, model.priors, cfg, maskiou_net=model.maskiou_net)
        unscored = detect(out, model.priors, cfg)
    n = int(got['num_dets'][0])
    assert n > 0 and n == int(rescored.num_dets[0])
    np.testing.assert_allclose(got['scores'][0, :n], rescored.scores[0, :n].numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(got['scores'][0, :n], unscored.scores[0, :n].numpy(), rtol=1e-3)
