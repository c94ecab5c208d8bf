import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import calib.convert
import calib.quantize
from calib.__main__ import main
from calib.convert import convert_model
from calib.graph import CalibrationError, model_metadata
from calib.images import load_calibration_images, select
from runtime.artifacts import precision_path
from runtime.pipeline import load_image
from tests.calib.standin import DCN, SIZE, build_standin, smooth_images
from tests.faults import disk_full_after


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """Six PNGs at another size than the model's (the graph resizes them) and a COCO JSON over them."""
    folder = tmp_path_factory.mktemp('calibration_images')
    for i, image in enumerate(smooth_images(6, size=3 * SIZE, seed=11)):
        cv2.imwrite(str(folder / f'image_{i}.png'), image[:, :2 * SIZE])
    coco = {'images': [{'id': i, 'file_name': f'image_{i}.png', 'height': 3 * SIZE, 'width': 2 * SIZE}
                       for i in range(6)],
            'annotations': [], 'categories': [{'id': 1, 'name': 'thing'}]}
    (folder / 'instances.json').write_text(json.dumps(coco))
    return folder


def test_images_are_loaded_by_the_runtime_at_their_own_size(image_folder):
    pixels = load_calibration_images(image_folder, count=3)
    expected = [load_image(image_folder / f'image_{i}.png') for i in (0, 2, 5)]
    assert [p.shape for p in pixels] == [(3 * SIZE, 2 * SIZE, 3)] * 3 and pixels[0].dtype == np.uint8
    np.testing.assert_array_equal(np.stack(pixels), np.stack(expected))


def test_a_coco_json_gives_the_same_images(image_folder):
    np.testing.assert_array_equal(np.stack(load_calibration_images(image_folder / 'instances.json')),
                                  np.stack(load_calibration_images(image_folder)))


def test_selection_is_spread_over_the_set():
    assert select(list(range(10)), 4) == [0, 3, 6, 9]
    assert select(list(range(10)), None) == list(range(10))


@pytest.mark.parametrize('precision', ['fp16', 'int8'])
def test_cli_writes_a_model_that_runs(standin_path, image_folder, precision, capsys):
    assert main(['--model', str(standin_path), '--precision', precision, '--images', str(image_folder),
                 '--count', '4']) == 0
    output = precision_path(standin_path, precision)
    assert output.name == f'standin.{precision}.onnx'
    assert f'wrote {output}' in capsys.readouterr().out
    model = onnx.load(output)
    onnx.checker.check_model(model, full_check=True)
    assert model_metadata(model).precision == precision
    session = ort.InferenceSession(str(output), providers=['CPUExecutionProvider'])
    num_dets, masks = session.run(None, {'images': smooth_images(2)})
    assert num_dets.dtype == np.int32 and masks.dtype == np.float32


def test_cli_writes_the_onnxruntime_int8_layout_beside_the_model(standin_path, image_folder, capsys):
    assert main(['--model', str(standin_path), '--precision', 'int8', '--layout', 'onnxruntime',
                 '--images', str(image_folder), '--count', '4']) == 0
    output = precision_path(standin_path, 'int8', 'onnxruntime')
    assert output.name == 'standin.int8-ort.onnx' and f'wrote {output}' in capsys.readouterr().out
    model = onnx.load(output)
    assert model_metadata(model).precision == 'int8'
    assert any(n.op_type == 'QuantizeLinear' for n in model.graph.node)
    session = ort.InferenceSession(str(output), providers=['CPUExecutionProvider'])
    num_dets, masks = session.run(None, {'images': smooth_images(2)})
    assert num_dets.dtype == np.int32 and masks.dtype == np.float32


def test_a_layout_for_fp16_is_a_clear_error(standin_path, image_folder, capsys):
    assert main(['--model', str(standin_path), '--precision', 'fp16', '--layout', 'onnxruntime',
                 '--images', str(image_folder)]) == 1
    assert '--layout chooses where INT8 Q/DQ go; fp16 has none' in capsys.readouterr().err


def test_cli_reuses_the_calibration_cache(standin_path, image_folder, tmp_path, capsys):
    args = ['--model', str(standin_path), '--precision', 'int8', '--images', str(image_folder), '--count', '3',
            '--output', str(tmp_path / 'a.int8.onnx')]
    assert main(args) == 0
    assert '(written)' in capsys.readouterr().out
    assert main(args) == 0
    assert '(reused)' in capsys.readouterr().out
    assert (tmp_path / '.calib_cache').is_dir()


@pytest.mark.battery
def test_an_unwritable_cache_is_refused_before_calibrating(standin_path, image_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / 'a_file').write_bytes(b'')

    def no_calibration(*args, **kwargs):
        raise AssertionError('calibrated although the cache cannot be written')

    monkeypatch.setattr(calib.quantize, 'calibrate_amax', no_calibration)
    assert main(['--model', str(standin_path), '--precision', 'int8', '--images', str(image_folder), '--count', '3',
                 '--output', str(tmp_path / 'a.int8.onnx'), '--cache-dir', str(tmp_path / 'a_file' / 'cache')]) == 1
    err = capsys.readouterr().err.rsplit('\r', 1)[-1]  # after the progress bar
    assert err.startswith('error: calibration cache ') and err.count('\n') == 1
    assert err.endswith('a_file, which is a file, not a folder: choose another path\n')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file']


@pytest.mark.battery
def test_a_full_disk_while_writing_the_model_is_one_line(standin_path, image_folder, tmp_path, capsys, monkeypatch):
    output = tmp_path / 'a.int8.onnx'
    save_model = calib.convert.save_model

    def on_a_full_disk(model, path):
        with disk_full_after(5000):
            return save_model(model, path)

    monkeypatch.setattr(calib.convert, 'save_model', on_a_full_disk)
    assert main(['--model', str(standin_path), '--precision', 'int8', '--images', str(image_folder),
                 '--count', '3', '--output', str(output)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f'error: cannot write {output}: File too large; free space there or choose another path\n')
    assert 'Traceback' not in err and not output.exists()


@pytest.mark.battery
def test_a_full_temporary_folder_is_one_line_naming_tmpdir(standin_path, image_folder, tmp_path, capsys):
    with disk_full_after(5000):
        assert main(['--model', str(standin_path), '--precision', 'fp16', '--images', str(image_folder),
                     '--count', '3', '--output', str(tmp_path / 'a.fp16.onnx')]) == 1
    err = capsys.readouterr().err.rsplit('\r', 1)[-1]
    assert err.startswith('error: cannot write temporary files in ') and err.count('\n') == 1
    assert err.endswith(': File too large; free space there or set TMPDIR to another folder\n')


@pytest.mark.battery
def test_calibration_shows_one_bar_and_names_modules(standin_path, image_folder, tmp_path, capsys):
    assert main(['--model', str(standin_path), '--precision', 'int8', '--images', str(image_folder), '--count', '6',
                 '--keep-sensitive', '--output', str(tmp_path / 'a.int8.onnx')]) == 0
    captured = capsys.readouterr()
    redraws = [line for line in captured.err.replace('\r', '\n').splitlines() if line.strip()]
    assert redraws and all(line.startswith('calibrating (entropy): ') for line in redraws), redraws
    # The stand-in's weights are named as the export names them after the modules (proto.weight ...).
    assert 'kept in FP32 (2 convolutions): proto, coef\n' in captured.out


def test_an_empty_folder_is_a_clear_error(standin_path, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert main(['--model', str(standin_path), '--precision', 'int8', '--images', str(tmp_path / 'empty')]) == 1
    assert 'no images in' in capsys.readouterr().err


def test_a_count_beyond_the_folder_is_a_clear_error(standin_path, image_folder, capsys):
    assert main(['--model', str(standin_path), '--precision', 'int8', '--images', str(image_folder),
                 '--count', '50']) == 1
    err = capsys.readouterr().err
    assert 'asked for 50 calibration images but only 6 are available' in err and '--count 6' in err


def test_an_unknown_precision_is_a_clear_error(standin_path, image_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--model', str(standin_path), '--precision', 'int4', '--images', str(image_folder)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(CalibrationError, match="unknown precision 'int4': choose one of fp16, int8"):
        convert_model(standin_path, 'int4', image_folder)


def test_a_converted_model_is_not_converted_again(standin_path, image_folder, tmp_path, capsys):
    fp16 = tmp_path / 'standin.fp16.onnx'
    assert main(['--model', str(standin_path), '--precision', 'fp16', '--images', str(image_folder),
                 '--count', '2', '--output', str(fp16)]) == 0
    assert main(['--model', str(fp16), '--precision', 'int8', '--images', str(image_folder)]) == 1
    assert 'is already fp16: convert the FP32 export instead' in capsys.readouterr().err


def test_a_missing_model_is_a_clear_error(tmp_path, image_folder, capsys):
    assert main(['--model', str(tmp_path / 'nope.onnx'), '--precision', 'fp16', '--images', str(image_folder)]) == 1
    assert 'does not exist: export one first' in capsys.readouterr().err


def test_cli_converts_a_yolact_plus_model_and_keeps_its_offset_convolutions(image_folder, tmp_path, capsys):
    path = tmp_path / 'plus.onnx'
    onnx.save(build_standin(deformable=True), path)
    args = ['--model', str(path), '--precision', 'int8', '--images', str(image_folder), '--count', '4']
    assert main(args) == 0
    assert 'kept in FP32 (1 convolutions): dcn.conv_offset_mask' in capsys.readouterr().out
    model = onnx.load(precision_path(path, 'int8'))
    assert [n.name for n in model.graph.node if n.op_type == 'DeformConv2d'] == [DCN]
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    num_dets, masks = session.run(None, {'images': smooth_images(2)})
    assert num_dets.dtype == np.int32 and masks.dtype == np.float32
    assert main([*args, '--no-keep-offsets']) == 0
    assert 'kept in FP32' not in capsys.readouterr().out
