"""The sidecar round-trips, reports malformed files clearly, and refuses engines that do not fit
the host, saying why and to rebuild with `make engine`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.sidecar import write_sidecar
from yolact_torch.config import get_config, metadata_from_config
from runtime.contract import POSTPROCESS_OUTPUTS
from runtime.tensorrt.sidecar import (EngineInfo, EngineMismatchError, EngineSidecar, SidecarError, check_sidecar,
                                      plugin_key, read_sidecar, sidecar_mismatches, sidecar_path)

ENGINE_BYTES = b'serialized engine stand-in'
HOST = dict(tensorrt_flavour='tensorrt', tensorrt_version='10.13.0.35', gpu_name='NVIDIA L4',
            compute_capability='8.9', registered_plugins={plugin_key('FastNMS', 'yolact', '1')})


def make_sidecar(**engine_fields) -> EngineSidecar:
    metadata = metadata_from_config(get_config('yolact_base'), precision='fp16')
    fields = dict(tensorrt_flavour='tensorrt', tensorrt_version='10.13.0.35', build_gpu='NVIDIA L4',
                  compute_capabilities=('8.9',), max_batch=8, plugins=(plugin_key('FastNMS', 'yolact', '1'),),
                  outputs=POSTPROCESS_OUTPUTS,
                  min_image=(32, 32), opt_image=(1080, 1920), max_image=(3840, 3840), onnx_file='build/yolact_base.fp16.onnx', onnx_sha256='0' * 64,
                  engine_sha256=hashlib.sha256(ENGINE_BYTES).hexdigest(), built_at='2026-11-22T04:00:00Z')
    fields.update(engine_fields)
    return EngineSidecar(metadata, EngineInfo(**fields))


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / 'model.engine'
    path.write_bytes(ENGINE_BYTES)
    return path


def test_round_trip_and_layout(engine):
    sidecar = make_sidecar()
    written = write_sidecar(engine, sidecar)
    assert written == sidecar_path(engine) == engine.with_name('model.engine.json')
    assert read_sidecar(engine) == sidecar
    data = json.loads(written.read_text())
    assert data['format'] == 'yolact-engine/1'
    assert data['model'] == json.loads(sidecar.metadata.to_json())
    assert data['engine']['compute_capabilities'] == ['8.9']
    assert data['engine']['max_image'] == [3840, 3840]
    assert not list(engine.parent.glob('*.tmp'))  # the atomic write leaves nothing behind


def test_matching_host_passes(engine):
    write_sidecar(engine, make_sidecar())
    assert check_sidecar(engine, **HOST) == make_sidecar()


@pytest.mark.parametrize('host_change, expected', [
    (dict(tensorrt_version='10.14.1.48'), 'built with tensorrt 10.13.0.35, this host has tensorrt 10.14.1.48'),
    (dict(tensorrt_flavour='tensorrt_rtx', tensorrt_version='1.7.1.116'), 'this host has tensorrt_rtx'),
    (dict(gpu_name='NVIDIA A100', compute_capability='8.0'), 'targets compute capability 8.9'),
    (dict(gpu_name='NVIDIA GeForce RTX 4090'), 'built and tuned on NVIDIA L4, this GPU is NVIDIA GeForce RTX 4090'),
    (dict(gpu_name=None, compute_capability=None), 'no usable CUDA GPU'),
    (dict(registered_plugins=set()), 'uses the TensorRT plugin(s) yolact::FastNMS/1, which are not registered'),
])
def test_mismatch_is_refused_with_the_reason(engine, host_change, expected):
    write_sidecar(engine, make_sidecar())
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(engine, **{**HOST, **host_change})
    message = str(info.value)
    assert expected in message
    assert message.endswith('rebuild the engine on this host with `make engine` '
                            '(python -m engines.build --model build/yolact_base.fp16.onnx --force)')


def test_corrupted_engine_is_refused(engine):
    write_sidecar(engine, make_sidecar())
    engine.write_bytes(ENGINE_BYTES[:-3])
    with pytest.raises(EngineMismatchError, match='checksum differs'):
        check_sidecar(engine, **HOST)
    assert sidecar_mismatches(make_sidecar(), engine, verify_checksum=False, **HOST) == []


def test_several_problems_are_all_listed(engine):
    write_sidecar(engine, make_sidecar())
    engine.unlink()
    problems = sidecar_mismatches(make_sidecar(), engine, **{**HOST, 'tensorrt_version': '11.0.0'})
    assert len(problems) == 2 and 'does not exist' in problems[1]


def test_rtx_engine_runs_on_any_targeted_gpu(engine):
    write_sidecar(engine, make_sidecar(tensorrt_flavour='tensorrt_rtx', tensorrt_version='1.7.1.116', build_gpu=None,
                                       compute_capabilities=('8.0', '8.6', '8.9', '12.0'), plugins=()))
    host = dict(tensorrt_flavour='tensorrt_rtx', tensorrt_version='1.7.1.116')
    check_sidecar(engine, gpu_name='NVIDIA GeForce RTX 3090', compute_capability='8.6', **host)
    with pytest.raises(EngineMismatchError, match=r'this GPU \(NVIDIA H100\) is 9.0'):
        check_sidecar(engine, gpu_name='NVIDIA H100', compute_capability='9.0', **host)


def test_missing_sidecar(engine):
    with pytest.raises(SidecarError, match=r'sidecar .*model.engine.json is missing.*make engine'):
        read_sidecar(engine)


@pytest.mark.parametrize('text, expected', [
    ('{"format": "yolact-engine/1", "model": ', 'not valid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"format": "trtexec"}', "format 'trtexec' is not 'yolact-engine/1'"),
])
def test_malformed_sidecar(engine, text, expected):
    sidecar_path(engine).write_text(text)
    with pytest.raises(SidecarError, match='make engine') as info:
        read_sidecar(engine)
    assert expected in str(info.value)


@pytest.mark.parametrize('edit, expected', [
    (lambda d: d['engine'].pop('onnx_sha256'), 'engine field(s) onnx_sha256 missing'),
    (lambda d: d['engine'].update(max_batch='8'), 'max_batch must be a positive integer'),
    (lambda d: d['engine'].update(plugins='yolact::FastNMS/1'), 'plugins must be a list of strings'),
    (lambda d: d['engine'].update(outputs=['boxes', 3]), 'outputs must be a list of strings'),
    # A sidecar from before it recorded the engine's outputs: a repository for it could not declare box_scores.
    (lambda d: d['engine'].pop('outputs'), 'engine field(s) outputs missing'),
    (lambda d: d['engine'].update(tensorrt_flavour='onnxruntime'), 'tensorrt_flavour must be one of'),
    (lambda d: d['engine'].update(max_image=[2160]), 'max_image must be [height, width]'),
    # A sidecar from before the image-size profile: its engine takes images at the model size only.
    (lambda d: d['engine'].pop('min_image'), 'engine field(s) min_image missing'),
    (lambda d: d['model'].pop('class_names'), 'missing field(s) class_names'),
    (lambda d: d.pop('engine'), 'no "engine" object'),
])
def test_sidecar_with_bad_fields(engine, edit, expected):
    data = make_sidecar().to_dict()
    edit(data)
    sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(SidecarError, match='make engine') as info:
        read_sidecar(engine)
    assert expected in str(info.value)


def test_sidecar_module_does_not_import_tensorrt_or_onnx():
    code = ('import sys, engines.sidecar; '
            'print(sorted(m for m in ("tensorrt", "tensorrt_rtx", "onnx", "torch", "numpy") if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                            cwd=str(Path(__file__).resolve().parents[3]))
    assert result.stdout.strip() == '[]'
