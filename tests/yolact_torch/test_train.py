"""Training: the schedule, loss going down, exact resume, fine-tuning to another class count,
two processes under torchrun, and the errors a user can cause."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from yolact_torch.checkpoint import load_model, read_checkpoint, save_checkpoint
from yolact_torch.config import get_config
from yolact_torch.data.augment import TrainAugmentation
from yolact_torch.data.coco import CocoDataset
from yolact_torch.data.shapes import ShapesSpec, write_split
from yolact_torch.data.training import IterationBatches, TrainingStream, collate
from yolact_torch.preprocess import Normalize
import yolact_torch.train
from yolact_torch.train import (TrainingError, initialise_from_plain, learning_rate, main, make_optimizer, train_step,
                                training_memory)
from yolact_torch.yolact import Yolact
from tests.faults import disk_full_after

CFG = get_config('yolact_tiny')
SMALL = ShapesSpec(image_size=128, radius=(14, 40), min_visible_pixels=60)
ROOT = Path(__file__).resolve().parents[2]
FAST = ['--config', 'yolact_tiny', '--batch-size', '2', '--workers', '0', '--threads', '2',
        '--no-expand', '--no-crop']


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp('shapes')
    return write_split(folder, 'train', 4, seed=0, spec=SMALL, progress=False)


def test_learning_rate_schedule():
    cfg = dataclasses.replace(CFG, lr=1e-2, lr_warmup_init=1e-4, lr_warmup_until=10, lr_steps=(20, 30), gamma=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(5, cfg) == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4))
    assert learning_rate(10, cfg) == pytest.approx(1e-2)
    assert learning_rate(19, cfg) == pytest.approx(1e-2)
    assert learning_rate(20, cfg) == pytest.approx(1e-3)
    assert learning_rate(30, cfg) == pytest.approx(1e-4)


def test_processes_share_each_iteration_without_overlap():
    single = list(IterationBatches(3, 5, 4))
    ranks = [list(IterationBatches(3, 5, 4, rank, 2)) for rank in range(2)]
    assert single == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert [a + b for a, b in zip(*ranks)] == single
    with pytest.raises(ValueError, match='divisible'):
        IterationBatches(0, 1, 3, 0, 2)


def test_a_few_steps_reduce_the_loss_on_one_batch(shapes):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    dataset = CocoDataset(shapes, require_annotations=True)
    stream = TrainingStream(dataset, TrainAugmentation(CFG, photometric=False, expand=False, crop=False, mirror=False), 0)
    images, targets = collate([stream[0], stream[1]])
    model = Yolact(CFG).train()
    model.init_weights()
    cfg = dataclasses.replace(CFG, lr=2e-3, lr_warmup_until=0)
    optimizer = make_optimizer(model, cfg)
    normalize = Normalize(cfg)
    totals = [train_step(model, normalize, optimizer, images, targets, cfg, i, seed=0).total.item() for i in range(12)]
    assert min(totals[-3:]) < 0.7 * totals[0], totals


def _weights(path):
    return read_checkpoint(path)['model']


def test_resume_continues_exactly(shapes, tmp_path):
    straight, broken = tmp_path / 'straight', tmp_path / 'broken'
    assert main([*FAST, '--data', str(shapes), '--iters', '3', '--save-every', '2', '--out', str(straight)]) == 0
    # The same run stopped after its checkpoint at iteration 2, then resumed for the last step.
    assert main([*FAST, '--data', str(shapes), '--iters', '2', '--out', str(broken)]) == 0
    assert main([*FAST, '--data', str(shapes), '--iters', '3', '--out', str(broken),
                 '--resume', str(broken / 'yolact_tiny_2.pth')]) == 0
    for name in ('yolact_tiny_2.pth', 'yolact_tiny_3.pth'):
        a, b = _weights(straight / name), _weights(broken / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = _weights(straight / 'yolact_tiny_2.pth'), _weights(straight / 'yolact_tiny_3.pth')
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the step did something
    final = read_checkpoint(straight / 'yolact_tiny_final.pth')
    assert 'optimizer' not in final and final['iteration'] == 3
    model, cfg = load_model(straight / 'yolact_tiny_final.pth')
    assert cfg.class_names == CFG.class_names and not model.training


def test_init_from_another_class_count_reinitialises_class_layers(shapes, tmp_path, capsys):
    three = CFG.with_classes(['a', 'b', 'c'])
    torch.manual_seed(1)
    source = Yolact(three)
    source.init_weights()
    save_checkpoint(tmp_path / 'three.pth', source, three)
    out = tmp_path / 'run'
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--lr', '0', '--warmup-lr', '0',
                 '--out', str(out), '--init', str(tmp_path / 'three.pth')]) == 0
    message = capsys.readouterr().out
    assert 'prediction_layers.0.conf_layer.weight' in message and 'semantic_seg_conv.weight' in message
    trained = _weights(out / 'yolact_tiny_final.pth')
    assert trained['prediction_layers.0.conf_layer.weight'].shape[0] == 3 * CFG.num_classes
    # lr 0 and frozen batch norm (auto with --init and 2 images): shared weights stay the source's.
    for key in ('backbone.conv1.weight', 'fpn.lat_layers.0.weight', 'prediction_layers.0.mask_layer.weight'):
        assert torch.equal(trained[key], source.state_dict()[key]), key



def test_init_plain_starts_yolact_plus_equal_to_the_yolact_it_comes_from(tmp_path):
    """A yolact_plus_tiny initialised from a yolact_tiny checkpoint computes what the checkpoint
    does (each DCN: zero offsets, mask sigmoid(0) = 0.5, the plain weight doubled); only the DCNs'
    bias and offset/mask conv and the maskiou_net stay fresh."""
    torch.manual_seed(0)
    source = Yolact(CFG)
    source.init_weights()
    with torch.no_grad():  # a non-trivial plain conv2 (the fresh init is a scaled Kaiming normal anyway)
        source.backbone.layers[2][1].conv2.weight.normal_()
    save_checkpoint(tmp_path / 'plain.pth', source, CFG)
    plus = Yolact(get_config('yolact_plus_tiny'))
    plus.init_weights()
    name, doubled, fresh = initialise_from_plain(plus, tmp_path / 'plain.pth')
    dcns = ['backbone.layers.1.0.conv2', 'backbone.layers.2.0.conv2', 'backbone.layers.2.1.conv2',
            'backbone.layers.3.0.conv2']
    assert name == 'yolact_tiny' and doubled == [f'{d}.weight' for d in dcns]
    dcn_parts = ('bias', 'conv_offset_mask.bias', 'conv_offset_mask.weight')
    assert fresh == sorted([f'{d}.{k}' for d in dcns for k in dcn_parts]
                           + [k for k in plus.state_dict() if k.startswith('maskiou_net.')])
    x = torch.randn(1, 3, CFG.max_size, CFG.max_size)
    with torch.no_grad():
        for got, expected in zip(plus.eval()(x)[:4], source.eval()(x)[:4]):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)



def test_yolact_plus_trains_from_a_yolact_checkpoint_on_the_command_line(shapes, tmp_path, capsys):
    torch.manual_seed(0)
    source = Yolact(CFG)
    source.init_weights()
    save_checkpoint(tmp_path / 'plain.pth', source, CFG)
    out = tmp_path / 'run'
    args = [*FAST[2:], '--config', 'yolact_plus_tiny', '--data', str(shapes), '--iters', '1', '--lr', '1e-3',
            '--out', str(out), '--init-plain', str(tmp_path / 'plain.pth')]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert ('--init-plain' in printed and 'took over' in printed
            and '4 DCN weights as the plain conv2 weight doubled' in printed)
    trained = _weights(out / 'yolact_plus_tiny_final.pth')
    # One SGD step moved the offset convs and the maskiou_net away from their zero / fresh start.
    assert trained['backbone.layers.2.0.conv2.conv_offset_mask.weight'].abs().sum() > 0
    assert any(k.startswith('maskiou_net.') for k in trained)

def test_init_plain_refuses_what_is_not_the_plain_counterpart(tmp_path):
    wide = dataclasses.replace(CFG, backbone=dataclasses.replace(CFG.backbone, width=8))
    save_checkpoint(tmp_path / 'narrow.pth', Yolact(wide), wide)
    plus_cfg = get_config('yolact_plus_tiny')
    save_checkpoint(tmp_path / 'plus.pth', Yolact(plus_cfg), plus_cfg)
    with pytest.raises(TrainingError, match='more than the DCNs and maskiou_net: width 8 .config 16.'):
        initialise_from_plain(Yolact(plus_cfg), tmp_path / 'narrow.pth')
    with pytest.raises(TrainingError, match='already a YOLACT\\+\\+ .yolact_plus_tiny.: start from it with --init'):
        initialise_from_plain(Yolact(plus_cfg), tmp_path / 'plus.pth')
    with pytest.raises(TrainingError, match='config yolact_tiny has no DCNs'):
        initialise_from_plain(Yolact(CFG), tmp_path / 'narrow.pth')

@pytest.mark.slow
def test_two_processes_with_torchrun(shapes, tmp_path):
    out = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         '-m', 'yolact_torch.train', *FAST, '--threads', '1', '--data', str(shapes), '--iters', '2', '--out', str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'over 2 process(es)' in result.stderr + result.stdout
    model, cfg = load_model(out / 'yolact_tiny_final.pth')
    assert read_checkpoint(out / 'yolact_tiny_final.pth')['iteration'] == 2
    assert sorted(p.name for p in out.iterdir()) == ['yolact_tiny_2.pth', 'yolact_tiny_final.pth']


def test_missing_data_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([*FAST, '--data', str(tmp_path / 'nope.json'), '--iters', '1', '--out', str(tmp_path)]) == 1
    assert 'does not exist' in capsys.readouterr().err


def test_resume_with_other_classes_is_refused(shapes, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--save-every', '1', '--out', str(out)]) == 0
    checkpoint = read_checkpoint(out / 'yolact_tiny_1.pth')
    checkpoint['class_names'] = ['a', 'b', 'c', 'd', 'e']
    torch.save(checkpoint, tmp_path / 'other.pth')
    capsys.readouterr()
    assert main([*FAST, '--data', str(shapes), '--iters', '2', '--out', str(out),
                 '--resume', str(tmp_path / 'other.pth')]) == 1
    assert 'trained on the classes a, b, c, d, e' in capsys.readouterr().err


def test_weights_only_file_cannot_be_resumed(shapes, tmp_path, capsys):
    save_checkpoint(tmp_path / 'w.pth', Yolact(CFG), CFG)
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--out', str(tmp_path),
                 '--resume', str(tmp_path / 'w.pth')]) == 1
    assert 'use --init' in capsys.readouterr().err


def test_non_contiguous_category_ids_and_names_survive_training_export_and_evaluation(shapes, tmp_path):
    """A user's COCO-format data with ids 3, 7, 12, 40, 41 and its own names: trained at another
    input size, then exported, run and evaluated with no flag; the names and ids come out as given."""
    from export.__main__ import main as export_main
    from export.onnx_export import read_metadata
    from yolact_torch.eval import evaluate
    from runtime.infer import main as infer_main

    data = json.loads(Path(shapes).read_text())
    new_id = {c['id']: i for c, i in zip(sorted(data['categories'], key=lambda c: c['id']), (3, 7, 12, 40, 41))}
    names = ('rock', 'paper', 'scissors', 'lizard', 'spock')
    data['categories'] = [{'id': new_id[c['id']], 'name': names[(3, 7, 12, 40, 41).index(new_id[c['id']])]}
                          for c in data['categories']]
    for ann in data['annotations']:
        ann['category_id'] = new_id[ann['category_id']]
    user_json = tmp_path / 'mine.json'
    user_json.write_text(json.dumps(data))
    images = ['--images', str(Path(shapes).parent)]

    out = tmp_path / 'run'
    assert main([*FAST, '--data', str(user_json), *images, '--iters', '1', '--out', str(out), '--input-size', '128']) == 0
    _, cfg = load_model(out / 'yolact_tiny_final.pth')
    assert (cfg.class_names, cfg.category_ids, cfg.max_size) == (names, (3, 7, 12, 40, 41), 128)

    onnx_path = tmp_path / 'mine.onnx'
    assert export_main(['--checkpoint', str(out / 'yolact_tiny_final.pth'), '--output', str(onnx_path)]) == 0
    meta = read_metadata(onnx.load(onnx_path))
    assert (meta.class_names, meta.category_ids, meta.input_size) == (names, (3, 7, 12, 40, 41), (128, 128))

    image = Path(shapes).parent / data['images'][0]['file_name']
    assert infer_main([str(image), '--model', str(onnx_path), '--score-thr', '0', '--json', str(tmp_path / 'd.json'),
                       '--out', str(tmp_path / 'out')]) == 0
    detections = json.loads((tmp_path / 'd.json').read_text())
    assert detections and all(d['category_id'] == (3, 7, 12, 40, 41)[d['class_index']]
                              and d['category_name'] == names[d['class_index']] for d in detections)
    metrics = evaluate(onnx_path, user_json, Path(shapes).parent, progress=False)
    assert set(metrics) == {'box', 'mask'}


def test_resume_with_another_input_size_is_refused(shapes, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--save-every', '1', '--out', str(out),
                 '--input-size', '128']) == 0
    capsys.readouterr()
    assert main([*FAST, '--data', str(shapes), '--iters', '2', '--out', str(out),
                 '--resume', str(out / 'yolact_tiny_1.pth')]) == 1
    assert 'was trained with another max_size' in capsys.readouterr().err


@pytest.mark.battery
@pytest.mark.parametrize('flags, expected', [
    (['--save-every', '0'], '--save-every must be at least 1, got 0'),
    (['--threads', '0'], '--threads must be at least 1, got 0'),
    (['--lr', 'nan'], '--lr must be a finite number >= 0, got nan'),
    (['--iters', '-3'], '--iters must be at least 1, got -3'),
    (['--epochs', '-1'], '--epochs must be a positive number, got -1.0'),
    (['--batch-size', '0'], '--batch-size must be at least 1, got 0'),
])
def test_flags_that_cannot_make_a_run_are_refused(shapes, tmp_path, capsys, flags, expected):
    out = tmp_path / 'run'
    length = [] if flags[0] in ('--iters', '--epochs') else ['--iters', '1']
    assert main([*FAST, '--data', str(shapes), *length, '--out', str(out), *flags]) == 1
    assert capsys.readouterr().err == f'error: {expected}\n'
    assert not out.exists()  # no untrained weights saved as final


@pytest.mark.battery
def test_resume_with_another_config_names_the_one_it_was_trained_with(shapes, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--save-every', '1', '--out', str(out)]) == 0
    capsys.readouterr()
    other = [*FAST[:1], 'yolact_resnet50', *FAST[2:]]
    assert main([*other, '--data', str(shapes), '--iters', '2', '--out', str(out),
                 '--resume', str(out / 'yolact_tiny_1.pth')]) == 1
    assert capsys.readouterr().err == (f'error: {out / "yolact_tiny_1.pth"} was trained with config \'yolact_tiny\', '
                                       "not 'yolact_resnet50': resume with --config yolact_tiny\n")


@pytest.mark.battery
def test_a_batch_that_cannot_fit_in_memory_is_refused_with_one_that_fits(shapes, tmp_path, capsys, monkeypatch):
    # A fixed amount: the machine's own changes from one moment to the next with other processes.
    monkeypatch.setattr(yolact_torch.train, 'available_memory', lambda: 10 * 10**9)
    assert main([*FAST, '--data', str(shapes), '--iters', '1', '--out', str(tmp_path / 'run'),
                 '--batch-size', '100000']) == 1
    fixed, per_image = training_memory(CFG, 1)
    need, fitting = (fixed + per_image * 100000) / 1e9, (10 * 10**9 - fixed) // per_image
    assert 0 < fitting < 100000
    assert capsys.readouterr().err == (
        f'error: --batch-size 100000 (per process) of yolact_tiny would need about {need:.1f} GB of memory and this '
        f'machine has 10.0 GB available: pass --batch-size {fitting} or less\n')
    assert not (tmp_path / 'run').exists()


def test_training_memory_grows_with_the_activations_of_each_image():
    fixed, per_image = training_memory(CFG, 1)
    weights = sum(p.numel() for p in Yolact(CFG).parameters()) * 4
    assert fixed >= 3 * weights
    # At least every activation of the input convolution's output is kept for its backward pass.
    h, w = CFG.input_size
    assert per_image > 64 * (h // 2) * (w // 2) * 4
    big = dataclasses.replace(CFG, max_size=CFG.max_size * 2)
    assert training_memory(big, 1)[1] > 3.5 * per_image


@pytest.mark.battery
@pytest.mark.parametrize('where', ('under a file', 'full disk'))
def test_a_checkpoint_folder_that_cannot_be_written_is_one_line(shapes, tmp_path, capsys, where):
    if where == 'under a file':
        (tmp_path / 'a_file').write_bytes(b'')
        assert main([*FAST, '--data', str(shapes), '--iters', '1', '--out', str(tmp_path / 'a_file' / 'run')]) == 1
        assert capsys.readouterr().err.endswith('a_file, which is a file, not a folder: choose another path\n')
        return
    out = tmp_path / 'run'
    with disk_full_after(100_000):
        assert main([*FAST, '--data', str(shapes), '--iters', '1', '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert f'\nerror: cannot write {out / "yolact_tiny_1.pth"}: File too large' in err and 'Traceback' not in err
    assert list(out.iterdir()) == []
