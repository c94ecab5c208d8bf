"""The benchmark's own arithmetic and premises (it is run by `make bench`, not timed here): the
MAC count, the synthetic head really giving DETECTIONS detections, the warm-up, the data-driven
table, and that it times the artifacts it is given (the naming rule's) and builds none."""

import shutil
import time

import numpy as np
import pytest
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import export_onnx
from export.postprocess_nodes import postprocess_model
from export.bench_artifacts import main as bench_artifacts_main
from yolact_torch.checkpoint import load_model
from yolact_torch.config import yolact_tiny
from plugins import DOMAIN
from plugins.deform_conv import onnx_function as deform_conv_function
from plugins.onnx_model import DECODED_HEAD_NAMES, DOMAIN_VERSION
from runtime.backends.ort_backend import create_session
from runtime.backends.torch_backend import TorchBackend
from runtime.bench import cpu as bench
from runtime.bench.cpu import (DETECTIONS, MissingArtifactError, format_table, model_artifacts, network_gmac,
                               stage_row, synthetic_head, timed)


def test_network_gmac_counts_every_conv(tmp_path):
    """[1, 3, 32, 32] -> conv 3x3 (8 out, stride 2, pad 1) -> [8, 16, 16]: 16*16*8 * 3*3*3 MACs;
    -> grouped conv 1x1 (8 out, 2 groups) -> [8, 16, 16]: 16*16*8 * 4 MACs."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.random((8, 3, 3, 3), np.float32), 'w1')
    w2 = numpy_helper.from_array(rng.random((8, 4, 1, 1), np.float32), 'w2')
    graph = helper.make_graph(
        [helper.make_node('Conv', ['x', 'w1'], ['y'], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node('Conv', ['y', 'w2'], ['z'], group=2)],
        'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 3, 32, 32])],
        [helper.make_tensor_value_info('z', TensorProto.FLOAT, None)], [w1, w2])
    path = tmp_path / 'convs.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19)]), path)
    assert network_gmac(path) * 1e9 == 16 * 16 * 8 * 27 + 16 * 16 * 8 * 4


def test_network_gmac_counts_a_deformable_conv_as_the_conv_it_deforms(tmp_path):
    """[1, 4, 8, 8] -> yolact::DeformConv2d 3x3 (6 out, stride 2, pad 1) -> [6, 4, 4]: 4*4*6 * 4*3*3
    MACs, as a plain conv; -> conv 1x1 (2 out), whose input shape only the stand-in conv makes
    inferable -> [2, 4, 4]: 4*4*2 * 6 MACs."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.random(shape, np.float32), name)
               for name, shape in (('w', (6, 4, 3, 3)), ('b', (6,)), ('w2', (2, 6, 1, 1)))]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [deform_conv_function.make_node(['x', 'offset', 'mask', 'w', 'b'], ['y'], stride=2, padding=1),
         helper.make_node('Conv', ['y', 'w2'], ['z'])],
        'g', [value('x', TensorProto.FLOAT, ['batch', 4, 8, 8]), value('offset', TensorProto.FLOAT, ['batch', 18, 4, 4]),
              value('mask', TensorProto.FLOAT, ['batch', 9, 4, 4])],
        [value('z', TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 19),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.functions.append(deform_conv_function.make_function(19))
    path = tmp_path / 'dcn.onnx'
    onnx.save(model, path)
    assert network_gmac(path) * 1e9 == 4 * 4 * 6 * 4 * 9 + 4 * 4 * 2 * 6


def test_warm_up_lasts_its_calls_and_its_seconds():
    starts = []

    def call():
        starts.append(time.perf_counter())
        time.sleep(0.005)

    samples = timed(call, iterations=3, warmup=1, warmup_s=0.05)
    assert len(samples) == 3 and (samples >= 0.005).all()
    assert len(starts) >= 3 + 2 and starts[-3] - starts[0] >= 0.05  # warm-up ran on past its one call
    starts.clear()
    timed(call, iterations=2, warmup=4, warmup_s=0.0)
    assert len(starts) == 6


def test_synthetic_head_gives_the_stated_detections():
    num_priors, mask_dim, proto_hw = 6402, 32, (80, 80)
    head = synthetic_head(2, num_priors, yolact_tiny.num_classes - 1, mask_dim, proto_hw)
    model = postprocess_model(yolact_tiny, num_priors=num_priors, mask_dim=mask_dim, proto_hw=proto_hw)
    session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
    num_dets = session.run(['num_dets'], dict(zip(DECODED_HEAD_NAMES, head.values())))[0]
    assert num_dets.tolist() == [DETECTIONS, DETECTIONS]


def test_table_shows_the_columns_rows_have():
    samples = {'network': np.array([0.2, 0.4, 0.3]), 'post': np.array([0.01, 0.01, 0.01])}
    row = stage_row(samples, batch=2, gmac=10.0, matmul=100.0, model='m', backend='ort')
    assert row['network_p50'] == 300.0 and row['images_per_s'] == 2 / 0.31
    assert row['network_gflops'] == 2 * 10.0 * 2 / 0.3 and round(row['network_pct_of_matmul']) == 133
    other = {'model': 'm', 'backend': 'trt', 'batch': 8, 'streams': 2, 'latency_p50_ms': 5.0}
    lines = format_table([row, other]).splitlines()
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    assert header[:5] == ['model', 'backend', 'B', 'streams', 'network p50 ms'] and 'pre p50 ms' not in header
    trt_cells = dict(zip(header, (cell.strip() for cell in lines[3].strip('|').split('|'))))
    assert trt_cells['streams'] == '2' and trt_cells['network p50 ms'] == '-' and trt_cells['batch p50 ms'] == '5.0'


@pytest.fixture(scope='module')
def tiny_build(tiny_checkpoint, tmp_path_factory):
    """build/ with the tiny checkpoint's raw export and post-processing model, as `make bench` builds
    them (exported once: the export takes most of these tests' time)."""
    build = tmp_path_factory.mktemp('bench') / 'build'
    model, cfg = load_model(tiny_checkpoint)
    raw = export_onnx(model, cfg, build / 'yolact_tiny_random.raw.onnx', postprocess=False)
    assert bench_artifacts_main(['postprocess', '--raw', str(raw)]) == 0
    return build


@pytest.fixture
def tiny_artifacts(tiny_checkpoint, tiny_build, tmp_path, monkeypatch):
    """(checkpoint, raw export) with a copy of tiny_build where the naming rule looks: build/ of the
    working folder."""
    shutil.copytree(tiny_build, tmp_path / 'build')
    monkeypatch.chdir(tmp_path)
    return tiny_checkpoint, tmp_path / 'build' / 'yolact_tiny_random.raw.onnx'


def test_a_model_is_its_checkpoint_and_the_artifacts_the_naming_rule_gives_it(tiny_artifacts):
    checkpoint, raw = tiny_artifacts
    model = model_artifacts(f'tiny={checkpoint}')
    assert (model.label, model.checkpoint, model.raw_onnx.resolve()) == ('tiny', checkpoint, raw)
    assert model.post_onnx.resolve() == raw.with_name('yolact_tiny_random.postprocess.onnx')
    assert (model.config, model.input_size, model.num_classes) == ('yolact_tiny', yolact_tiny.input_size,
                                                                   yolact_tiny.num_classes - 1)
    assert model_artifacts(str(checkpoint)).label == 'yolact_tiny_random'
    model.post_onnx.unlink()
    with pytest.raises(MissingArtifactError, match=r'yolact_tiny_random.postprocess.onnx is missing: make bench '
                                                   r'builds it \(python -m export.bench_artifacts postprocess --raw '):
        model_artifacts(str(checkpoint))
    raw.unlink()
    with pytest.raises(MissingArtifactError, match=r'raw.onnx is missing: make bench builds it \(python -m export '
                                                   r'--checkpoint .* --no-postprocess\)'):
        model_artifacts(str(checkpoint))


def test_torch_and_onnxruntime_rows_from_the_artifacts(tiny_artifacts, monkeypatch, capsys):
    checkpoint, raw = tiny_artifacts
    monkeypatch.setattr(bench, 'matmul_gflops', lambda: 100.0)  # the machine's rate is not under test here
    monkeypatch.setattr(bench, 'BLAS_IDLE_S', 0.0)
    argv = ['--models', f'tiny={checkpoint}', 'missing=none/other.pth', '--batches', '1', '--iterations', '2',
            '--warmup', '0', '--warmup-seconds', '0', '--threads', '1', '--sources', 'torch_rows', 'ort_rows']
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = [dict(zip(header, (c.strip() for c in line.strip('|').split('|')))) for line in lines[2:4]]
    assert [(r['model'], r['backend'], r['prec'], r['B']) for r in rows] == [('tiny', 'torch', 'fp32', '1'),
                                                                            ('tiny', 'ort', 'fp32', '1')]
    assert all(float(r[f'{stage} p50 ms']) > 0 for r in rows for stage in bench.STAGES)
    assert 'note: missing=none/other.pth skipped: build/other.raw.onnx is missing: make bench builds it' in out
    # The bench wrote nothing beside the artifacts it was given.
    assert sorted(raw.parent.iterdir()) == sorted([raw, raw.with_name('yolact_tiny_random.postprocess.onnx')])


def test_torch_and_onnxruntime_post_process_the_same_synthetic_detections(tiny_artifacts):
    """The 'post' stage compares like with like: the torch backend, fed the raw head whose decoding is
    the synthetic head, keeps the detections the post-processing model keeps."""
    checkpoint, _ = tiny_artifacts
    model = model_artifacts(str(checkpoint))
    head = synthetic_head(2, model.num_priors, model.num_classes, model.mask_dim, model.proto_hw)
    with TorchBackend(checkpoint) as backend:
        got = backend.postprocess(backend.head_decoding_to(head))
    session = create_session(model.post_onnx)
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(None, dict(zip(DECODED_HEAD_NAMES, head.values())))))
    assert got['num_dets'].tolist() == want['num_dets'].tolist() == [DETECTIONS, DETECTIONS]
    np.testing.assert_array_equal(got['classes'], want['classes'])
    np.testing.assert_allclose(got['boxes'], want['boxes'], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got['scores'], want['scores'], rtol=0, atol=1e-5)
