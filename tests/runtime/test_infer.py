"""python -m runtime.infer end to end with a random-weight yolact_tiny checkpoint: good, broken,
grayscale, RGBA and 16-bit inputs; annotated images; a COCO results file pycocotools loads."""

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from yolact_torch.config import yolact_tiny
import runtime.files as files_module
import runtime.images as images_module
import runtime.infer as infer_module
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


def small_image(path, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((48, 64, 3), value, np.uint8))
    return path


@pytest.mark.battery
def test_a_parent_folder_is_annotated_under_its_own_name_never_over_itself(tiny_checkpoint, tmp_path, monkeypatch,
                                                                           capsys):
    photos = tmp_path / 'photos'
    sources = {p: p.read_bytes() for p in (small_image(photos / 'b.png'), small_image(photos / 'sub' / 'a.png', 30))}
    monkeypatch.chdir(photos / 'sub')
    assert main(['..', '--out', '../annotated', '--model', str(tiny_checkpoint)]) == 0
    assert '2 annotated image(s) in ../annotated/' in capsys.readouterr().out
    assert {p: p.read_bytes() for p in sources} == sources
    written = sorted(p.relative_to(photos / 'annotated').as_posix() for p in (photos / 'annotated').rglob('*.png'))
    assert written == ['photos/b.png', 'photos/sub/a.png']


@pytest.mark.battery
def test_an_output_that_resolves_to_an_input_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    photo = small_image(tmp_path / 'photos' / 'b.png')
    original = photo.read_bytes()
    missing_model = str(tmp_path / 'none.pth')  # refused before the model is even looked for
    assert main([str(photo), '--out', str(tmp_path / 'photos'), '--model', missing_model]) == 1
    assert capsys.readouterr().err.strip() == (f'error: --out would write {tmp_path / "photos" / "b.png"} over the '
                                               f'input {photo}: choose another --out')
    monkeypatch.chdir(tmp_path / 'photos')
    assert main(['b.png', '--out', '.', '--model', missing_model]) == 1
    assert main(['b.png', '--json', './b.png', '--model', missing_model]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'over the input' in err[0]
    assert err[1].startswith('error: --json would write b.png over the input')
    assert photo.read_bytes() == original


@pytest.mark.battery
def test_bad_files_in_a_folder_are_skipped_and_the_json_still_written(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from tests.runtime.test_images import png_header
    folder = tmp_path / 'images'
    small_image(folder / 'good.png')
    cv2.imwrite(str(folder / 'big.jpg'), np.zeros((100, 100, 3), np.uint8))  # over --max-pixels below
    (folder / 'bomb.png').write_bytes(png_header(100_000, 100_000))
    small_image(folder / 'locked' / 'hidden.png')
    scandir = os.scandir
    # Tests run as root, who can list anything: the sub-folder refuses here.
    monkeypatch.setattr(os, 'scandir', lambda p: (_ for _ in ()).throw(PermissionError(13, 'Permission denied', p))
                        if os.fspath(p).endswith('locked') else scandir(p))
    stale = tmp_path / 'dets.json'
    stale.write_text('[{"image_id": 999}]')
    assert main([str(folder), '--model', str(tiny_checkpoint), '--out', str(tmp_path / 'out'), '--json', str(stale),
                 '--score-thr', '0', '--max-pixels', str(48 * 64)]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith('skipped: ')]
    assert len(skipped) == 3
    for name, reason in (('locked', 'cannot list this folder'), ('bomb.png', '10000 megapixels'),
                         ('big.jpg', '100 x 100 is 0 megapixels, over the limit')):
        assert any(name in line and reason in line for line in skipped), (name, skipped)
    assert '1 annotated image(s)' in captured.out and '3 input(s) skipped' in captured.out
    results = json.loads(stale.read_text())
    assert results and {r['file_name'] for r in results} == {str(folder / 'good.png')}


@pytest.mark.battery
def test_a_failed_run_leaves_no_earlier_json_looking_current(tiny_checkpoint, tmp_path):
    (tmp_path / 'bad.png').write_bytes(b'broken')
    stale = tmp_path / 'dets.json'
    stale.write_text('[]')
    assert main([str(tmp_path / 'bad.png'), '--model', str(tiny_checkpoint), '--json', str(stale),
                 '--out', str(tmp_path / 'out')]) == 1
    assert not stale.exists()


@pytest.mark.battery
@pytest.mark.parametrize('value', ['1.5', 'nan', 'inf', '-0.1'])
def test_score_thresholds_outside_zero_to_one_are_refused(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(['x.jpg', '--score-thr', value])
    assert info.value.code == 2 and '--score-thr must be in [0, 1]' in capsys.readouterr().err


@pytest.mark.battery
def test_json_of_videos_only_is_refused_with_its_reason(capsys):
    with pytest.raises(SystemExit) as info:
        main(['clip.mp4', '--json', 'dets.json'])
    assert info.value.code == 2 and '--json covers images only' in capsys.readouterr().err


@pytest.mark.battery
def test_a_coco_json_input_keeps_its_image_ids(tiny_checkpoint, tmp_path, capsys):
    dataset = tmp_path / 'shapes'
    small_image(dataset / 'images' / '000.png', 40)
    small_image(dataset / 'images' / '001.png', 200)
    ground_truth = {
        'images': [{'id': 1, 'file_name': 'images/000.png', 'height': 48, 'width': 64},
                   {'id': 2, 'file_name': 'images/001.png', 'height': 48, 'width': 64}],
        'annotations': [{'id': 1, 'image_id': 2, 'category_id': yolact_tiny.category_ids[0], 'bbox': [4, 4, 20, 20],
                         'area': 400, 'iscrowd': 0, 'segmentation': [[4, 4, 24, 4, 24, 24, 4, 24]]}],
        'categories': [{'id': i, 'name': n} for i, n in zip(yolact_tiny.category_ids, yolact_tiny.class_names)]}
    (dataset / 'val.json').write_text(json.dumps(ground_truth))
    results_json = tmp_path / 'dets.json'
    assert main([str(dataset / 'val.json'), '--model', str(tiny_checkpoint), '--out', str(tmp_path / 'out'),
                 '--json', str(results_json), '--score-thr', '0']) == 0
    results = json.loads(results_json.read_text())
    ids = {Path(r['file_name']).name: r['image_id'] for r in results}
    assert ids == {'000.png': 1, '001.png': 2}  # not 0 and 1 from the names
    coco = COCO(str(dataset / 'val.json'))
    assert len(coco.loadRes(str(results_json)).anns) == len(results)
    assert sorted(p.relative_to(tmp_path / 'out').as_posix() for p in (tmp_path / 'out').rglob('*.png')) == \
        ['val/images/000.png', 'val/images/001.png']
    (dataset / 'empty.json').write_text('{"images": []}')
    assert main([str(dataset / 'empty.json'), '--model', str(tiny_checkpoint)]) == 1
    assert 'skipped: ' + str(dataset / 'empty.json') + ': its "images" list is empty' in capsys.readouterr().err
    (dataset / 'other.json').write_text('{"info": {}}')
    assert main([str(dataset / 'other.json'), '--model', str(tiny_checkpoint)]) == 1
    assert main([str(dataset / 'val.json'), str(dataset / 'images'), '--model', str(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert 'other.json: not a COCO instances JSON' in err[-2] and 'must be the only PATH' in err[-1]


@pytest.mark.battery
def test_outputs_that_cannot_be_written_are_one_line_before_the_work(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    photo = small_image(tmp_path / 'a.png')
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'a_folder').mkdir()
    missing_model = str(tmp_path / 'none.pth')  # the outputs are checked before the model is looked for
    for option, path, reason in [('--json', tmp_path / 'a_folder', 'is a folder: name a file'),
                                 ('--json', tmp_path / 'a_file' / 'dets.json', 'is a file, not a folder'),
                                 ('--out', tmp_path / 'a_file', 'is a file, not a folder'),
                                 ('--out', tmp_path / 'a_file' / 'sub', 'is a file, not a folder')]:
        assert main([str(photo), option, str(path), '--model', missing_model]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f'error: {option} {path}') and reason in err and err.count('\n') == 1
    # A full disk shows only when writing: one line and a non-zero exit, no earlier results left.
    real_write_atomic = infer_module.write_atomic

    def full_disk(path, data):  # what runtime.files raises when the disk fills during the write
        if Path(path).suffix == '.json':
            raise files_module._write_failure(Path(path), OSError(errno.ENOSPC, 'No space left on device'))
        return real_write_atomic(path, data)

    monkeypatch.setattr(infer_module, 'write_atomic', full_disk)
    # The runtime writes every temporary beside its output, never in TMPDIR: a broken one does not matter.
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'a_file' / 'tmp'))
    assert main([str(photo), '--json', str(tmp_path / 'dets.json'), '--model', str(tiny_checkpoint),
                 '--out', str(tmp_path / 'out')]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'error: --json: cannot write {tmp_path / "dets.json"}: no space left on the device: free some space or '
        'choose another path')
    assert (tmp_path / 'out' / 'a.png').is_file() and not (tmp_path / 'dets.json').exists()
    # Annotated images are written by runtime.images.write_image.
    def image_disk_full(path, data):
        raise files_module._write_failure(Path(path), OSError(errno.ENOSPC, 'No space left on device'))

    monkeypatch.setattr(images_module, 'write_atomic', image_disk_full)
    assert main([str(photo), '--model', str(tiny_checkpoint), '--out', str(tmp_path / 'full')]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'error: cannot write {tmp_path / "full" / "a.png"}: no space left on the device: free some space or '
        'choose another path')


@pytest.mark.battery
def test_a_video_is_never_annotated_over_itself(tmp_path, monkeypatch, capsys):
    clip = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(clip), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*'MJPG'), 5.0, (32, 24))
    writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    original = clip.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(['clip.avi', '--out', '.', '--model', str(tmp_path / 'none.pth')]) == 1
    assert capsys.readouterr().err.strip() == \
        f'error: --out would write clip.avi over the input {clip}: choose another --out'
    assert clip.read_bytes() == original
