"""Real engine builds with TensorRT-RTX (on the CPU) from toy models at each precision: the engine
and its sidecar are written, model-local functions become standard layers, engines are reused
only when nothing changed, and bad input gets a clear error. Running the engines needs a GPU and
is the TensorRT backend's test (tests/runtime)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import engines.build
from engines.build import build_engine, main, register_plugins
from engines.errors import EngineBuildError
from engines.trt import RTX_NOT_DEFAULT, rtx_compute_capabilities
from runtime.cuda.device import cuda_device
from runtime.tensorrt.loader import TensorRT, load_tensorrt
from runtime.tensorrt.sidecar import check_sidecar, read_sidecar, sidecar_path
from tests.engines.build_log import build_logged
from tests.engines.toy_models import TOY_FUNCTION, toy_metadata, toy_model
from tests.faults import disk_full_after

rtx_module = pytest.importorskip('tensorrt_rtx', reason='TensorRT-RTX is not installed (pip install -e .[tensorrt-rtx])')
ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ('fp32', 'fp16', 'int8')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """precision -> (onnx path, engine path, returned sidecar, log messages); one build each."""
    folder = tmp_path_factory.mktemp('engines')
    results = {}
    for precision in PRECISIONS:
        onnx_path = folder / f'toy.{precision}.onnx'
        onnx.save_model(toy_model(precision), onnx_path)
        (engine_path, sidecar), messages = build_logged(onnx_path, precision=precision, verbose=True)
        results[precision] = onnx_path, engine_path, sidecar, messages
    return results


@pytest.mark.parametrize('precision', PRECISIONS)
def test_engine_and_sidecar(built, precision):
    onnx_path, engine_path, sidecar, _ = built[precision]
    assert engine_path == onnx_path.with_suffix('.engine')
    assert read_sidecar(engine_path) == sidecar
    assert sidecar.metadata == toy_metadata(precision)
    info = sidecar.engine
    assert (info.tensorrt_flavour, info.tensorrt_version) == ('tensorrt_rtx', rtx_module.__version__)
    assert info.build_gpu is None  # built on the CPU
    rtx = load_tensorrt('tensorrt-rtx')
    assert info.compute_capabilities == tuple(cc for cc in rtx_compute_capabilities(rtx) if cc not in RTX_NOT_DEFAULT)
    assert info.max_batch == 8
    assert (info.min_image, info.opt_image, info.max_image) == ((32, 32), (1080, 1920), (3840, 3840))
    assert info.plugins == ()
    assert info.outputs == tuple(output.name for output in onnx.load(onnx_path).graph.output)
    assert info.onnx_file == str(onnx_path)
    assert info.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert info.engine_sha256 == hashlib.sha256(engine_path.read_bytes()).hexdigest()
    assert not list(engine_path.parent.glob('.*.tmp'))


def test_precisions_give_different_engines(built):
    assert len({built[p][2].engine.engine_sha256 for p in PRECISIONS}) == len(PRECISIONS)


@pytest.mark.parametrize('precision', PRECISIONS)
def test_function_body_becomes_standard_layers(built, precision):
    messages = built[precision][3]
    assert any(f'yolact::{TOY_FUNCTION} built from their ONNX function bodies as standard layers' in m
               for m in messages)
    layers = [m for m in messages if m.startswith('layer ')]
    # The body (Relu, Constant, CastLike, Mul) as TensorRT layers, and no plugin layer anywhere.
    assert any(' ACTIVATION ' in m for m in layers) and any(' ELEMENTWISE ' in m for m in layers)
    assert not any(' PLUGIN' in m for m in layers)


def test_io_tensors_are_logged(built):
    messages = built['fp16'][3]
    assert any(m.split() == ['input', 'images', 'UINT8', '(-1,', '-1,', '-1,', '3)'] for m in messages)
    assert any(m.split()[:3] == ['output', 'scores', 'FLOAT'] for m in messages)


def test_int8_network_quantizes(built):
    layers = [m for m in built['int8'][3] if m.startswith('layer ')]
    assert any(' QUANTIZE ' in m and 'INT8' in m for m in layers)
    fp16_layers = [m for m in built['fp16'][3] if m.startswith('layer ') and ' CONVOLUTION ' in m]
    assert fp16_layers and all('HALF' in m for m in fp16_layers)


def test_reuse_and_rebuild(write_toy):
    onnx_path = write_toy('fp32')
    engine_path, first = build_engine(onnx_path, max_batch=2)
    inode = engine_path.stat().st_ino
    (_, again), messages = build_logged(onnx_path, max_batch=2)
    assert again == first and engine_path.stat().st_ino == inode
    assert any(m.startswith(f'reusing {engine_path}') for m in messages)

    (_, forced), _ = build_logged(onnx_path, max_batch=2, force=True)
    assert engine_path.stat().st_ino != inode
    assert read_sidecar(engine_path) == forced

    (_, wider), messages = build_logged(onnx_path, max_batch=4)
    assert wider.engine.max_batch == 4
    assert any('was built with another max_batch' in m for m in messages)

    engine_path.write_bytes(engine_path.read_bytes()[:100])
    (_, repaired), messages = build_logged(onnx_path, max_batch=4)
    assert any('is not the engine its sidecar describes' in m for m in messages)
    assert repaired.engine.engine_sha256 == hashlib.sha256(engine_path.read_bytes()).hexdigest()


@pytest.mark.battery
def test_a_forced_rebuild_on_a_full_disk_keeps_the_old_pair_usable(write_toy, monkeypatch, capsys):
    onnx_path = write_toy('fp32')
    engine_path, old = build_engine(onnx_path, max_batch=2)
    old_bytes, old_sidecar = engine_path.read_bytes(), sidecar_path(engine_path).read_bytes()
    write_pair = engines.build.write_engine_pair

    def on_a_full_disk(*args):
        with disk_full_after(len(old_bytes) // 2):
            write_pair(*args)

    monkeypatch.setattr(engines.build, 'write_engine_pair', on_a_full_disk)
    assert main(['--model', str(onnx_path), '--max-batch', '2', '--force']) == 1
    # The builder's progress bar redraws one line with carriage returns; then comes the error alone.
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.endswith(f'\rerror: cannot write {engine_path}: File too large; '
                                                  'free space there or choose another path\n')
    assert engine_path.read_bytes() == old_bytes and sidecar_path(engine_path).read_bytes() == old_sidecar
    assert read_sidecar(engine_path).engine.engine_sha256 == hashlib.sha256(old_bytes).hexdigest() == old.engine.engine_sha256
    assert sorted(p.name for p in engine_path.parent.iterdir()) == sorted(
        [onnx_path.name, engine_path.name, sidecar_path(engine_path).name])


@pytest.mark.battery
@pytest.mark.parametrize('where', ('folder', 'under a file'))
def test_an_engine_output_that_cannot_be_written_is_refused_before_the_build(write_toy, tmp_path, capsys,
                                                                             monkeypatch, where):
    (tmp_path / 'a_file').write_bytes(b'')
    output = tmp_path if where == 'folder' else tmp_path / 'a_file' / 'toy.engine'
    model = write_toy('fp32')

    def no_build(flavour):
        raise AssertionError('the build started')

    monkeypatch.setattr(engines.build, 'load_tensorrt', no_build)
    assert main(['--model', str(model), '--output', str(output)]) == 1
    err = capsys.readouterr().err
    expected = f'{output} is a folder' if where == 'folder' else 'a_file, which is a file'
    assert err.startswith('error: engine ') and expected in err and err.count('\n') == 1


def test_turing_target_and_output_path(write_toy, tmp_path):
    engine_path, sidecar = build_engine(write_toy('fp16'), tmp_path / 'out' / 'turing.engine', compute_capability='7.5',
                                        max_batch=1)
    assert engine_path.is_file() and sidecar_path(engine_path).is_file()
    assert sidecar.engine.compute_capabilities == ('7.5',)


def test_rtx_builds_without_a_timing_cache(write_toy, tmp_path):
    cache = tmp_path / 'asked.cache'
    (engine_path, _), messages = build_logged(write_toy('fp32'), timing_cache=cache, max_batch=1)
    assert any(m.startswith('--timing-cache ignored: TensorRT-RTX builds on the CPU') for m in messages)
    assert not cache.exists() and not (engine_path.parent / 'tensorrt.timing.cache').exists()


@pytest.mark.gpu
def test_tensorrt_on_a_gpu_builds_for_it_with_a_persistent_timing_cache(write_toy):
    trt = pytest.importorskip('tensorrt')
    engine_path, sidecar = build_engine(write_toy('fp16'), flavour='tensorrt', max_batch=2)
    name, cc = cuda_device()
    assert (sidecar.engine.tensorrt_flavour, sidecar.engine.build_gpu, sidecar.engine.compute_capabilities) == (
        'tensorrt', name, (cc,))
    check_sidecar(engine_path, tensorrt_flavour='tensorrt', tensorrt_version=trt.__version__, gpu_name=name,
                  compute_capability=cc)
    cache = engine_path.parent / 'tensorrt.timing.cache'
    assert cache.stat().st_size > 0
    _, messages = build_logged(write_toy('int8'), flavour='tensorrt', max_batch=2)
    assert f'timing cache: {cache} (loaded)' in messages


def test_plugin_registration_says_why_not(monkeypatch):
    assert register_plugins(load_tensorrt('tensorrt-rtx')) == (
        False, 'the yolact plugins are TensorRT Python plugins (tensorrt.plugin), which TensorRT-RTX lacks')
    # TensorRT proper asks the plugins package, whose answer reaches the build log unchanged.
    monkeypatch.setattr('engines.build.register_tensorrt_plugins', lambda: (False, 'triton is not importable'))
    assert register_plugins(TensorRT(module=None, flavour='tensorrt', version='10.13.0.35')) == (
        False, 'triton is not importable')


def test_custom_op_without_a_body(write_toy):
    with pytest.raises(EngineBuildError, match=rf"cannot parse .*node .*\({TOY_FUNCTION}\).*function body"):
        build_engine(write_toy('fp32', with_function_body=False))


def test_fixed_batch_needs_matching_max_batch(write_toy):
    path = write_toy('fp32', fixed_batch=2)
    with pytest.raises(EngineBuildError, match='fixed batch of 2: pass --max-batch 2'):
        build_engine(path)
    assert build_engine(path, max_batch=2)[1].engine.max_batch == 2


def test_cli_builds(write_toy, capsys):
    path = write_toy('int8')
    assert main(['--model', str(path), '--precision', 'int8', '--max-batch', '2']) == 0
    out = capsys.readouterr().out
    assert str(path.with_suffix('.engine')) in out and 'int8, tensorrt_rtx' in out and 'batch 1..2' in out


def test_cli_truncated_model(write_toy, capsys):
    path = write_toy('fp32')
    path.write_bytes(path.read_bytes()[:200])
    assert main(['--model', str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {path} is not a readable ONNX model') and 'Traceback' not in err
    assert not path.with_suffix('.engine').exists()


def test_cli_unknown_precision(write_toy, capsys):
    with pytest.raises(SystemExit) as info:
        main(['--model', str(write_toy('fp32')), '--precision', 'int4'])
    assert info.value.code == 2
    assert "argument --precision: invalid choice: 'int4' (choose from 'fp32', 'fp16', 'int8')" in capsys.readouterr().err


def test_cli_precision_must_match_the_model(write_toy, capsys):
    assert main(['--model', str(write_toy('fp32')), '--precision', 'fp16']) == 1
    assert 'is a fp32 model, not fp16: pass the fp16 model (made by `make calib`)' in capsys.readouterr().err


def test_cli_without_tensorrt(write_toy):
    """As `make engine` runs it, in a Python where neither TensorRT nor TensorRT-RTX imports."""
    code = ("import sys; sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None; "
            "from engines.build import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, '-c', code, '--model', str(write_toy('fp32'))], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith('error: TensorRT is not installed')
    assert "pip install -e '.[tensorrt]'" in result.stderr and "pip install -e '.[tensorrt-rtx]'" in result.stderr


def test_make_engine_picks_the_model_of_the_precision():
    # Under `make test` the parent make's MAKEFLAGS/MAKELEVEL would make this one print directory lines.
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    result = subprocess.run(['make', '-n', '--no-print-directory', '-o', '.venv/.installed', 'engine',
                             'PRECISION=int8', 'MODEL=build/demo.onnx', 'MAX_BATCH=4', 'MAX_IMAGE=720x1280'],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    command = result.stdout.strip().splitlines()[-1].split()
    assert command[1:] == ['-m', 'engines.build', '--model', 'build/demo.int8.onnx', '--precision', 'int8',
                           '--max-batch', '4', '--min-image', '32x32', '--opt-image', '1080x1920',
                           '--max-image', '720x1280']


def test_the_profile_covers_the_image_sizes_asked_for(write_toy, monkeypatch):
    """The engine's profile is what the flags say (images of any size go in; the graph resizes), it
    builds, and a new range rebuilds. The engine cannot be deserialised without a GPU, so the
    profile is read where the builder sets it."""
    profile_class = load_tensorrt('tensorrt-rtx').module.IOptimizationProfile
    set_shape, shapes = profile_class.set_shape, []

    def recording_set_shape(profile, name, *shapes_of_input):
        shapes.append((name, *(tuple(s) for s in shapes_of_input)))
        return set_shape(profile, name, *shapes_of_input)

    monkeypatch.setattr(profile_class, 'set_shape', recording_set_shape)
    onnx_path = write_toy('fp32')
    engine_path, sidecar = build_engine(onnx_path, max_batch=2, min_image=(8, 9), opt_image=(48, 64),
                                        max_image=(96, 128))
    assert shapes == [('images', (1, 8, 9, 3), (2, 48, 64, 3), (2, 96, 128, 3))]
    assert (sidecar.engine.min_image, sidecar.engine.opt_image, sidecar.engine.max_image) == ((8, 9), (48, 64), (96, 128))
    assert read_sidecar(engine_path) == sidecar
    (_, wider), messages = build_logged(onnx_path, max_batch=2, min_image=(8, 9), opt_image=(48, 64),
                                        max_image=(200, 128))
    assert any('was built with another max_image' in m for m in messages)
    assert shapes[-1] == ('images', (1, 8, 9, 3), (2, 48, 64, 3), (2, 200, 128, 3))


def test_bad_image_ranges_are_refused(write_toy, capsys):
    with pytest.raises(EngineBuildError, match='--min-image <= --opt-image <= --max-image'):
        build_engine(write_toy('fp32'), min_image=(64, 64), opt_image=(32, 640), max_image=(640, 640))
    with pytest.raises(SystemExit):
        main(['--model', str(write_toy('fp32')), '--max-image', '4k'])
    assert "'4k' is not HEIGHTxWIDTH" in capsys.readouterr().err

