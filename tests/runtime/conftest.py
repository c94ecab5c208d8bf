"""Fixtures shared by the runtime tests."""

import pytest


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    """A yolact_tiny checkpoint with random weights (seeded), saved in the toolkit's own format."""
    import torch

    from yolact_torch.checkpoint import save_checkpoint
    from yolact_torch.config import yolact_tiny
    from yolact_torch.yolact import Yolact

    torch.manual_seed(0)
    model = Yolact(yolact_tiny).eval()
    return save_checkpoint(tmp_path_factory.mktemp('model') / 'yolact_tiny_random.pth', model, yolact_tiny)
