"""The synthetic shapes set: deterministic, exact masks that match their boxes, COCO layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from yolact_torch.config import SHAPES_CLASSES
import yolact_torch.data.shapes
from yolact_torch.data.coco import CocoDataset, DatasetError
from yolact_torch.data.shapes import ShapesSpec, generate_image, main, write_split

ROOT = Path(__file__).resolve().parents[2]
SMALL = ShapesSpec(image_size=96, radius=(10, 30), min_visible_pixels=40)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    for folder, seed in ((a, 3), (b, 3), (c, 4)):
        write_split(folder, 'train', 3, seed, SMALL, progress=False)
    assert (a / 'train.json').read_bytes() == (b / 'train.json').read_bytes()
    for i in range(3):
        name = f'train/{i:06d}.jpg'
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / 'train.json').read_bytes() != (c / 'train.json').read_bytes()


def test_image_depends_only_on_seed_split_and_index(tmp_path):
    write_split(tmp_path / 'short', 'val', 2, 0, SMALL, progress=False)
    write_split(tmp_path / 'long', 'val', 4, 0, SMALL, progress=False)
    for i in range(2):
        name = f'val/{i:06d}.jpg'
        assert (tmp_path / 'short' / name).read_bytes() == (tmp_path / 'long' / name).read_bytes()
    assert (tmp_path / 'short' / 'val/000000.jpg').read_bytes() != (tmp_path / 'short' / 'val/000001.jpg').read_bytes()


def test_masks_match_boxes_and_areas_and_do_not_overlap(tmp_path):
    path = write_split(tmp_path, 'train', 6, 1, SMALL, progress=False)
    data = json.loads(path.read_text())
    assert [c['name'] for c in sorted(data['categories'], key=lambda c: c['id'])] == list(SHAPES_CLASSES)
    by_image = {}
    for ann in data['annotations']:
        mask = mask_utils.decode(ann['segmentation']).astype(bool)
        ys, xs = np.nonzero(mask)
        assert ann['bbox'] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann['area'] == mask.sum() >= SMALL.min_visible_pixels
        assert 1 <= ann['category_id'] <= len(SHAPES_CLASSES) and ann['iscrowd'] == 0
        by_image.setdefault(ann['image_id'], []).append(mask)
    for masks in by_image.values():
        # Visible masks of one image are disjoint: occluded parts belong to the shape on top.
        assert np.stack(masks).sum(0).max() == 1
    assert sum(len(m) for m in by_image.values()) >= 6 * SMALL.instances[0] // 2


def test_image_is_painted_through_its_masks():
    rng = np.random.default_rng(7)
    image, instances = generate_image(rng, SMALL)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert SMALL.instances[0] <= len(instances) <= SMALL.instances[1]
    for class_index, mask in instances:
        assert 0 <= class_index < len(SHAPES_CLASSES)
        inside = image[mask].astype(float).mean(0)
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
        outside = image[ring & ~mask].astype(float)
        if len(outside):  # a shape differs from what surrounds it
            assert np.abs(inside - outside.mean(0)).max() > 5


def test_cli_writes_both_splits_that_the_coco_loader_reads(tmp_path, capsys):
    assert main(['--out', str(tmp_path), '--train', '2', '--val', '1', '--seed', '5', '--size', '160']) == 0
    for split, count in (('train', 2), ('val', 1)):
        data = json.loads((tmp_path / f'{split}.json').read_text())
        assert [im['file_name'] for im in data['images']] == [f'{split}/{i:06d}.jpg' for i in range(count)]
        assert all((im['height'], im['width']) == (160, 160) for im in data['images'])
        dataset = CocoDataset(tmp_path / f'{split}.json', class_names=SHAPES_CLASSES)
        sample = dataset[0]
        assert sample.image.shape == (160, 160, 3) and sample.masks.shape[1:] == (160, 160)
    assert 'wrote' in capsys.readouterr().out


def test_cli_rejects_bad_counts(tmp_path):
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--train', '-1'])


class _Killed(BaseException):
    """Stands for the signal that ends a run midway (it is no Exception: nothing may catch it)."""


@pytest.mark.battery
def test_a_regeneration_killed_midway_leaves_no_json_and_the_loaders_name_the_command(tmp_path, monkeypatch, capsys):
    args = ['--out', str(tmp_path), '--train', '3', '--val', '2', '--size', '160']
    assert main([*args, '--seed', '1']) == 0
    made = []

    def killed_at_the_second_image(rng, spec):
        if len(made) == 1:
            raise _Killed
        made.append(1)
        return generate_image(rng, spec)

    monkeypatch.setattr(yolact_torch.data.shapes, 'generate_image', killed_at_the_second_image)
    with pytest.raises(_Killed):
        main([*args, '--seed', '2'])
    assert not (tmp_path / 'train.json').exists() and not (tmp_path / 'val.json').exists()
    for path in (tmp_path / 'train.json', tmp_path, tmp_path / 'val.json'):
        with pytest.raises(DatasetError, match=rf'is missing beside the images in .*an unfinished data set .*make it '
                                               rf'again with `python -m yolact_torch.data.shapes --out {tmp_path}`'):
            CocoDataset(path)


@pytest.mark.battery
def test_an_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / 'a_file').write_bytes(b'')
    assert main(['--out', str(tmp_path / 'a_file' / 'shapes'), '--train', '1', '--val', '1']) == 1
    assert capsys.readouterr().err.endswith('a_file, which is a file, not a folder: choose another path\n')


@pytest.mark.battery
def test_make_says_it_builds_the_shapes_set_first(tmp_path):
    venv = Path(sys.executable).parent.parent
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would make this one print directory lines.
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    env['PYTHONPATH'] = str(ROOT)
    result = subprocess.run(['make', '--no-print-directory', '-o', f'{venv}/.installed', f'VENV={venv}',
                             f'SHAPES_DIR={tmp_path}', 'SHAPES_TRAIN=2', 'SHAPES_VAL=1', f'{tmp_path}/val.json'],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.startswith(f'first building the synthetic shapes set in {tmp_path} (2 training + 1 '
                                    'validation images; once, a few minutes)\n')
    assert len(CocoDataset(tmp_path / 'train.json')) == 2
