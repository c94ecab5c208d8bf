"""The FP16/INT8 rows time the variants calib wrote beside the raw export (the bench converts nothing),
and name the command for a variant that is missing."""

from types import SimpleNamespace

import onnx
import pytest

from calib.fp16 import convert_fp16
from calib.graph import model_metadata
from calib.quantize import quantize_int8
from runtime.artifacts import precision_path
from runtime.bench.precision import VARIANTS, precision_rows
from tests.calib.standin import SIZE, build_standin, raw_export_like, smooth_images


@pytest.fixture(scope='module')
def raw_with_variants(tmp_path_factory):
    """A stand-in raw export and its three variants, converted by calib as `make bench` does."""
    folder = tmp_path_factory.mktemp('bench')
    raw = folder / 'standin.raw.onnx'
    onnx.save(raw_export_like(build_standin()), raw)
    calibration = smooth_images(3)
    for precision, layout in VARIANTS.values():
        if precision == 'fp16':
            converted = convert_fp16(onnx.load(raw), calibration)
        else:
            converted = quantize_int8(onnx.load(raw), calibration, cache_dir=folder / 'cache', model_name='standin',
                                      layout=layout or 'tensorrt').model
        onnx.save(converted, precision_path(raw, precision, layout))
    return raw


def context_for(raw):
    model = SimpleNamespace(label='standin', raw_onnx=raw, gmac=0.01,
                            input_size=model_metadata(onnx.load(raw)).input_size)
    images = list(smooth_images(3, size=2 * SIZE))  # bench images are larger than the model input
    return SimpleNamespace(models=[model], batches=[1, 2], iterations=2, warmup=1, warmup_s=0.0, threads=1,
                           matmul_gflops=10.0, images=images)


def test_rows_for_fp16_and_both_int8_layouts_beside_the_raw_export(raw_with_variants):
    rows, notes = precision_rows(context_for(raw_with_variants))
    variants = ['fp16', 'int8', 'int8-ort']
    assert [(r['precision'], r['batch']) for r in rows] == [(v, b) for b in (1, 2) for v in variants]
    assert all(r['network_p50'] > 0 and 'images_per_s' not in r for r in rows)
    assert len(notes) == 2 and 'int8-ort' in notes[0] and 'x of fp32' in notes[0]


def test_a_missing_variant_is_left_out_with_the_command_that_makes_it(raw_with_variants, tmp_path):
    raw = tmp_path / raw_with_variants.name
    raw.write_bytes(raw_with_variants.read_bytes())
    fp16 = precision_path(raw_with_variants, 'fp16')
    precision_path(raw, 'fp16').write_bytes(fp16.read_bytes())
    rows, notes = precision_rows(context_for(raw))
    assert [(r['precision'], r['batch']) for r in rows] == [('fp16', 1), ('fp16', 2)]
    assert notes[:2] == [
        f'standin.raw.int8.onnx missing, its row left out: make bench converts it '
        f'(python -m calib --model {raw} --precision int8 --images IMAGES)',
        f'standin.raw.int8-ort.onnx missing, its row left out: make bench converts it '
        f'(python -m calib --model {raw} --precision int8 --layout onnxruntime --images IMAGES)']
    assert 'fp16 ' in notes[2] and 'int8' not in notes[2]
