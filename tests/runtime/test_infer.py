"""python -m runtime.infer end to end with a random-weight yolact_tiny checkpoint: good, broken,
grayscale, RGBA and 16-bit inputs; annotated images; a COCO results file pycocotools loads."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from model.config import yolact_tiny
from runtime.infer import collect_inputs, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'images'
    (folder / 'nested').mkdir(parents=True)
    cv2.imwrite(str(folder / 'color.jpg'), rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / 'nested' / 'gray.png'), rng.integers(0, 256, (100, 150), dtype=np.uint8))
    cv2.imwrite(str(folder / 'rgba.png'), rng.integers(0, 256, (120, 90, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / 'deep.png'), rng.integers(0, 65536, (64, 80, 3), dtype=np.uint16))
    (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8 this is not a JPEG')
    (folder / 'notes.txt').write_text('not an image and not named like one: ignored')
    return folder


def test_cli_end_to_end(tiny_checkpoint, image_folder, tmp_path, capsys):
    out, results_json = tmp_path / 'annotated', tmp_path / 'results' / 'dets.json'
    code = main([str(image_folder), str(tmp_path / 'missing.jpg'), '--model', str(tiny_checkpoint),
                 '--out', str(out), '--json', str(results_json), '--score-thr', '0', '--batch', '3'])
    assert code == 0
    captured = capsys.readouterr()
    assert 'corrupt.jpg' in captured.err and 'missing.jpg' in captured.err
    assert f'4 annotated image(s) in {out}/, 2 input(s) skipped' in captured.out
    assert str(results_json) in captured.out

    written = sorted(p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file())
    assert written == ['images/color.jpg', 'images/deep.png', 'images/nested/gray.png', 'images/rgba.png']
    sizes = {}
    for name in written:
        annotated = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(image_folder / Path(name).relative_to('images')), cv2.IMREAD_UNCHANGED)
        assert annotated.shape[:2] == original.shape[:2] and annotated.ndim == 3 and annotated.shape[2] == 3
        assert annotated.dtype == np.uint8
        sizes[Path(name).name] = original.shape[:2]

    results = json.loads(results_json.read_text())
    assert results, 'a random model at threshold 0 detects something'
    by_name = {Path(r['file_name']).name: r['image_id'] for r in results}
    # Non-numeric names: image ids are the 1-based positions in the sorted input list.
    assert by_name == {'color.jpg': 1, 'deep.png': 3, 'gray.png': 4, 'rgba.png': 5}
    for entry in results:
        assert entry['category_name'] == yolact_tiny.class_names[entry['class_index']]
        assert entry['category_id'] == yolact_tiny.category_ids[entry['class_index']]
    ground_truth = COCO()
    ground_truth.dataset = {
        'images': [{'id': by_name[name], 'file_name': name, 'height': h, 'width': w} for name, (h, w) in sizes.items()],
        'annotations': [],
        'categories': [{'id': i, 'name': n} for i, n in zip(yolact_tiny.category_ids, yolact_tiny.class_names)]}
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(results_json))
    assert len(loaded.anns) == len(results)
    for ann in loaded.anns.values():  # boxes lie in their images, masks inside their boxes
        height, width = sizes[Path(ann['file_name']).name]
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert ann['segmentation']['size'] == [height, width]


def test_numeric_file_names_become_image_ids(tmp_path):
    for name in ('000000000139.jpg', '000000000285.png'):
        (tmp_path / name).write_bytes(b'x')
    inputs, problems = collect_inputs([tmp_path])
    assert [i.image_id for i in inputs] == [139, 285] and problems == []
    same_name, _ = collect_inputs([tmp_path / '000000000139.jpg', tmp_path / '000000000139.jpg'])
    assert [i.output_name.name for i in same_name] == ['000000000139.jpg', '000000000139_2.jpg']


def test_nothing_to_process_exits_non_zero(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'bad.png').write_bytes(b'broken')
    assert main([str(tmp_path / 'empty'), str(tmp_path / 'bad.png'), '--model', str(tiny_checkpoint),
                 '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert 'no image files in this folder' in err and 'bad.png' in err and 'none of the inputs' in err
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.png'))


def test_missing_model_is_a_one_line_error(tmp_path):
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    done = subprocess.run([sys.executable, '-m', 'runtime.infer', str(tmp_path / 'a.png'), '--model',
                           str(tmp_path / 'none.pth')], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == f'error: model file not found: {tmp_path / "none.pth"} (pass --model FILE)'


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(['x.jpg', '--batch', '0'])
    assert info.value.code == 2 and '--batch must be at least 1' in capsys.readouterr().err


def test_unloadable_model_is_a_one_line_error(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / 'yolact_tiny_broken.pth').write_bytes(b'not a checkpoint')
    assert main([str(tmp_path / 'a.png'), '--model', str(tmp_path / 'yolact_tiny_broken.pth')]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'yolact_tiny_broken.pth' in err and '\n' not in err
