from types import SimpleNamespace

import onnx
import pytest

import runtime.bench.precision
from calib.graph import model_metadata
from runtime.bench.precision import precision_rows
from tests.calib.standin import SIZE, build_standin, raw_export_like, smooth_images


@pytest.fixture
def context(tmp_path):
    standin = build_standin()
    raw = tmp_path / 'standin.raw.onnx'
    onnx.save(raw_export_like(standin), raw)
    model = SimpleNamespace(label='standin', raw_onnx=raw, gmac=0.01)
    images = list(smooth_images(3, size=2 * SIZE))  # bench images are larger than the model input
    return SimpleNamespace(models=[model], batches=[1, 2], iterations=2, warmup=1, warmup_s=0.0, threads=1,
                           matmul_gflops=10.0, images=images)


def test_rows_for_fp16_and_both_int8_layouts_beside_the_raw_export(context):
    rows, notes = precision_rows(context)
    variants = ['fp16', 'int8', 'int8-ort']
    assert [(r['precision'], r['batch']) for r in rows] == [(v, b) for b in (1, 2) for v in variants]
    assert all(r['network_p50'] > 0 and 'images_per_s' not in r for r in rows)
    assert len(notes) == 2 and 'int8-ort' in notes[0] and 'x of fp32' in notes[0]
    folder = context.models[0].raw_onnx.parent
    for variant in variants:
        model = onnx.load(folder / f'standin.raw.{variant}.onnx')
        assert model_metadata(model).precision == variant.removesuffix('-ort')
    ort_layout = onnx.load(folder / 'standin.raw.int8-ort.onnx')
    zero_points = {t.name: t.data_type for t in ort_layout.graph.initializer}
    assert any(n.op_type == 'QuantizeLinear' and zero_points.get(n.input[2]) == onnx.TensorProto.UINT8
               for n in ort_layout.graph.node)


def test_converted_networks_are_reused_until_the_export_changes(context, monkeypatch):
    precision_rows(context)

    def no_conversion(*args, **kwargs):
        raise AssertionError('converted again although the export did not change')

    monkeypatch.setattr(runtime.bench.precision, 'convert_fp16', no_conversion)
    monkeypatch.setattr(runtime.bench.precision, 'quantize_int8', no_conversion)
    precision_rows(context)
    raw = context.models[0].raw_onnx
    raw.write_bytes(raw.read_bytes())  # a newer export
    with pytest.raises(AssertionError, match='converted again'):
        precision_rows(context)
