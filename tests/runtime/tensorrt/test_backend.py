"""The TensorRT backend's device-free behaviour: sidecar checks against crafted sidecars, the error
messages a host without TensorRT or a GPU gets, reading an engine's I/O, and import hygiene.
(Inference itself is tested on GPU runners: tests/gpu/.)"""

import json
import subprocess
import sys

import numpy as np
import pytest

from engines.sidecar import write_sidecar
from yolact_torch.config import get_config, metadata_from_config
from runtime.backends.base import BackendError
from runtime.contract import POSTPROCESS_OUTPUTS
from runtime.files import file_sha256
from runtime.tensorrt.backend import (TensorRTUnavailableError, TrtBackend, check_engine, describe_engine,
                                          registered_plugin_keys)
from runtime.tensorrt.loader import TensorRT
from runtime.tensorrt.sidecar import EngineInfo, EngineMismatchError, EngineSidecar, SidecarError, sidecar_path

META = metadata_from_config(get_config('yolact_base'), precision='fp16')
HOST_TRT = TensorRT(module=None, flavour='tensorrt', version='10.13.0.35')
HOST_GPU = ('NVIDIA A10G', '8.6')
PLUGINS = ('yolact::FastNMS/1', 'yolact::MaskAssembly/1')


def make_engine(tmp_path, flavour='tensorrt', version=HOST_TRT.version, build_gpu=HOST_GPU[0],
                ccs=(HOST_GPU[1],), plugins=PLUGINS):
    """A stand-in engine file (bytes TensorRT never reads in these tests) and a sidecar for it."""
    path = tmp_path / 'demo.fp16.engine'
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    info = EngineInfo(tensorrt_flavour=flavour, tensorrt_version=version, build_gpu=build_gpu,
                      compute_capabilities=tuple(ccs), max_batch=8, plugins=tuple(plugins),
                      outputs=POSTPROCESS_OUTPUTS,
                      min_image=(32, 32), opt_image=(1080, 1920), max_image=(3840, 3840),
                      onnx_file='build/demo.fp16.onnx', onnx_sha256='0' * 64, engine_sha256=file_sha256(path),
                      built_at='2026-11-22T04:00:00Z')
    write_sidecar(path, EngineSidecar(META, info))
    return path


def test_matching_sidecar_gives_the_metadata(tmp_path):
    path = make_engine(tmp_path)
    sidecar = check_engine(path, HOST_TRT, HOST_GPU, frozenset(PLUGINS))
    assert sidecar.metadata == META


@pytest.mark.parametrize('change, host, words', [
    ({'version': '10.8.0.43'}, {}, ['10.8.0.43', '10.13.0.35']),
    ({'flavour': 'tensorrt_rtx', 'build_gpu': None}, {}, ['tensorrt_rtx']),
    ({}, {'gpu': ('NVIDIA L4', '8.9')}, ['8.9', 'NVIDIA L4']),
    ({}, {'gpu': ('NVIDIA RTX A6000', '8.6')}, ['NVIDIA A10G', 'NVIDIA RTX A6000']),
    ({}, {'gpu': None}, ['no usable CUDA GPU']),
    ({}, {'plugins': frozenset()}, ['yolact::FastNMS/1', 'yolact::MaskAssembly/1', 'not registered']),
])
def test_host_mismatch_names_the_reason_and_the_rebuild(tmp_path, change, host, words):
    path = make_engine(tmp_path, **change)
    gpu = host.get('gpu', HOST_GPU)
    with pytest.raises(EngineMismatchError) as err:
        check_engine(path, HOST_TRT, gpu, host.get('plugins', frozenset(PLUGINS)))
    message = str(err.value)
    for word in words + ['make engine', str(path)]:
        assert word in message


def test_corrupted_engine_file(tmp_path):
    path = make_engine(tmp_path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EngineMismatchError, match='checksum differs.*make engine'):
        check_engine(path, HOST_TRT, HOST_GPU, frozenset(PLUGINS))


def test_missing_or_broken_sidecar(tmp_path):
    path = make_engine(tmp_path)
    side = sidecar_path(path)
    side.write_text('{"format": "yolact-engine/1", "model": {}')
    with pytest.raises(SidecarError, match='not valid JSON'):
        check_engine(path, HOST_TRT, HOST_GPU, frozenset(PLUGINS))
    side.write_text(json.dumps({'format': 'yolact-engine/1', 'model': META.to_dict()}))
    with pytest.raises(SidecarError, match='no "engine"'):
        check_engine(path, HOST_TRT, HOST_GPU, frozenset(PLUGINS))
    side.unlink()
    with pytest.raises(SidecarError, match='sidecar .* is missing.*make engine'):
        check_engine(path, HOST_TRT, HOST_GPU, frozenset(PLUGINS))


def test_load_without_tensorrt_says_what_to_install(tmp_path):
    pytest.importorskip('tensorrt_rtx')  # this machine: tensorrt_rtx only, no tensorrt, no GPU
    try:
        import tensorrt  # noqa: F401
        pytest.skip('tensorrt is installed here')
    except ImportError:
        pass
    with pytest.raises(TensorRTUnavailableError) as err:
        TrtBackend(make_engine(tmp_path)).load()
    message = str(err.value)
    assert 'pip install -e .[tensorrt]' in message and '--backend ort' in message
    assert 'tensorrt_rtx is installed' in message


def test_load_without_gpu_says_so(tmp_path):
    pytest.importorskip('tensorrt_rtx')
    from runtime.cuda.device import cuda_device
    if cuda_device() is not None:
        pytest.skip('a GPU is visible here')
    path = make_engine(tmp_path, flavour='tensorrt_rtx', version='1.7.1.116', build_gpu=None)
    with pytest.raises(TensorRTUnavailableError, match='needs an NVIDIA GPU.*--backend ort'):
        TrtBackend(path).load()


def test_missing_engine_file_and_bad_options(tmp_path):
    with pytest.raises(BackendError, match='make engine'):
        TrtBackend(tmp_path / 'none.engine').load()
    with pytest.raises(BackendError, match='streams'):
        TrtBackend(tmp_path / 'x.engine', streams=0)
    with pytest.raises(BackendError, match='not loaded'):
        TrtBackend(tmp_path / 'x.engine').infer(np.zeros((1, 550, 550, 3), np.uint8))
    with pytest.raises(BackendError, match='not loaded'):
        next(TrtBackend(tmp_path / 'x.engine').infer_batches([np.zeros((1, 550, 550, 3), np.uint8)]))


class _FakeEngine:
    """The ICudaEngine calls describe_engine makes, answered with TensorRT-RTX's real enums."""

    def __init__(self, trt, tensors, profile):
        self.trt, self.tensors, self.profile = trt, tensors, profile
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_dtype(self, name):
        return self.tensors[name][0]

    def get_tensor_shape(self, name):
        return self.tensors[name][1]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == 'images' else self.trt.TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name, index):
        assert (name, index) == ('images', 0)
        return [(b, *hw, 3) for b, hw in zip(self.profile, ((32, 32), (1080, 1920), (3840, 3840)))]


def test_describe_engine_reads_dtypes_shapes_and_profile():
    trt = pytest.importorskip('tensorrt_rtx')
    t = trt.DataType
    tensors = {'images': (t.UINT8, (-1, -1, -1, 3)), 'num_dets': (t.INT32, (-1,)),
               'boxes': (t.FLOAT, (-1, 100, 4)), 'scores': (t.FLOAT, (-1, 100)),
               'classes': (t.INT32, (-1, 100)), 'masks': (t.HALF, (-1, 100, 138, 138))}
    io = describe_engine(_FakeEngine(trt, tensors, (1, 4, 16)), trt)
    assert (io.min_batch, io.opt_batch, io.max_batch) == (1, 4, 16)
    assert (io.min_image, io.opt_image, io.max_image) == ((32, 32), (1080, 1920), (3840, 3840))
    assert io['images'].is_input and not io['masks'].is_input
    assert io['masks'].dtype == np.float16 and io['num_dets'].dtype == np.int32
    assert io['boxes'].shape == (-1, 100, 4)
    static = dict(tensors, images=(t.UINT8, (2, 550, 550, 3)))
    io = describe_engine(_FakeEngine(trt, static, None), trt)
    assert (io.min_batch, io.opt_batch, io.max_batch) == (2, 2, 2)
    assert io.min_image == io.max_image == (550, 550)


def test_registered_plugin_keys_reads_the_registry():
    module = pytest.importorskip('tensorrt_rtx')
    trt = TensorRT(module=module, flavour='tensorrt_rtx', version=module.__version__)
    keys = registered_plugin_keys(trt)
    creators = module.get_plugin_registry().all_creators
    assert len(keys) == len({(c.name, c.plugin_namespace, c.plugin_version) for c in creators})
    for c in creators:
        assert f'{c.plugin_namespace}::{c.name}/{c.plugin_version}' in keys


def test_runtime_imports_neither_torch_nor_tensorrt():
    code = ('import sys, runtime.tensorrt.backend, runtime.cuda.memory, runtime.tensorrt.scheduling, runtime.tensorrt.engine_io; '
            'bad = [m for m in ("torch", "tensorrt", "tensorrt_rtx", "onnx") if m in sys.modules]; '
            'print(bad); sys.exit(1 if bad else 0)')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(__import__('pathlib').Path(__file__).resolve().parents[3]))
    assert done.returncode == 0, done.stdout + done.stderr


def test_auto_sends_engines_to_trt(tmp_path):
    from runtime.backends import backend_for_path, open_backend

    assert backend_for_path('build/demo.fp16.engine') == 'trt'
    path = make_engine(tmp_path)
    with pytest.raises(BackendError, match='needs tensorrt|needs an NVIDIA GPU') as err:
        open_backend(path)  # auto
    assert 'make engine' in str(err.value) or '--backend ort' in str(err.value)


def test_default_model_prefers_its_engine_when_tensorrt_can_run_it(tmp_path, monkeypatch):
    from runtime.tensorrt import backend as trt_backend

    onnx = tmp_path / 'demo.onnx'
    onnx.write_bytes(b'onnx')
    engine = tmp_path / 'demo.engine'
    monkeypatch.setattr(trt_backend, 'trt_unavailable_reason', lambda: None)  # a GPU host
    assert trt_backend.prefer_engine(onnx) == onnx  # no engine built yet
    engine.write_bytes(b'engine')
    assert trt_backend.prefer_engine(onnx) == engine
    monkeypatch.setattr(trt_backend, 'trt_unavailable_reason', lambda: 'no CUDA device is visible')
    assert trt_backend.prefer_engine(onnx) == onnx



def test_infer_cli_streams_option(tmp_path, capsys):
    from runtime.infer import main

    image = tmp_path / 'a.png'
    image.write_bytes(b'')
    with pytest.raises(SystemExit) as exit_:
        main([str(image), '--streams', '0'])
    assert exit_.value.code == 2 and '--streams must be at least 1' in capsys.readouterr().err
    checkpoint = tmp_path / 'm.pth'
    checkpoint.write_bytes(b'not loaded: the option is refused first')
    import cv2
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert main([str(image), '--model', str(checkpoint), '--streams', '2', '--out', str(tmp_path / 'out')]) == 1
    assert 'does not take streams' in capsys.readouterr().err
