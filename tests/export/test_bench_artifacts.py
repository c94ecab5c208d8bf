"""python -m export.bench_artifacts checkpoint: the random-weight checkpoint `make bench` times a config with
(its postprocess command is tested against the full export in test_onnx_export.py)."""

import torch

from export.bench_artifacts import main
from yolact_torch.checkpoint import load_model


def test_writes_a_loadable_checkpoint_whose_weights_follow_the_seed(tmp_path):
    paths = [tmp_path / 'sub' / name for name in ('a.pth', 'b.pth', 'c.pth')]
    for path, seed in zip(paths, (0, 0, 1)):
        assert main(['checkpoint', '--config', 'yolact_tiny', '--output', str(path), '--seed', str(seed)]) == 0
    (a, cfg), (b, _), (c, _) = (load_model(path) for path in paths)
    assert cfg.name == 'yolact_tiny'
    weights = [dict(model.state_dict()) for model in (a, b, c)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_an_unknown_config_is_one_line_and_no_file(tmp_path, capsys):
    output = tmp_path / 'x.pth'
    assert main(['checkpoint', '--config', 'yolact_nothing', '--output', str(output)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown config 'yolact_nothing'" in err
    assert not output.exists()
