"""Model repositories: every config.pbtxt parses as Triton's ModelConfig protobuf with the serving
options and the contract's tensors, the network file is where its platform looks, and a model file
the containers cannot serve is refused."""

import json
from dataclasses import asdict

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS
from runtime.errors import ToolkitError
from runtime.metadata import ModelMetadata
from runtime.serve.__main__ import main as serve_main
from runtime.serve.protocol import (BOX_SCORES_OUTPUT, IMAGE_INPUT, IMAGE_RANGE_PARAMETER, METADATA_PARAMETER,
                                    MODEL_NAME, OUTPUTS, THRESHOLD_INPUT)
from runtime.serve.repository import (NETWORK_NAME, QUEUE_DELAY_US, ServingOptions, local_repository,
                                      model_metadata, official_repository)
from runtime.tensorrt.backend import trt_unavailable_reason
from runtime.tensorrt.sidecar import EngineInfo, EngineSidecar, sidecar_path

DT = model_config_pb2.DataType


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_serving_options(config, options, kind):
    assert config.max_batch_size == options.max_batch
    assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
    assert [(g.count, g.kind) for g in config.instance_group] == [(options.instances, kind)]


def stand_in_engine(onnx_file, outputs, engine):
    """A stand-in for the engine of `onnx_file`: its sidecar as the engine builder writes it (built
    with TensorRT on an H100, with `outputs`) beside bytes at `engine` that are no plan."""
    engine.write_bytes(b'a serialized plan')
    info = EngineInfo('tensorrt', '10.13', 'NVIDIA H100', ('9.0',), 8, (), tuple(outputs), (32, 32), (1080, 1920),
                      (3840, 3840), str(onnx_file), '0' * 64, '0' * 64, 'now')
    sidecar = EngineSidecar(model_metadata(onnx_file), info)
    sidecar_path(engine).write_text(json.dumps({**sidecar.to_dict(), 'engine': asdict(info)}))
    return engine


@pytest.fixture
def demo_engine(demo_onnx, tmp_path):
    return stand_in_engine(demo_onnx, POSTPROCESS_OUTPUTS, tmp_path / 'demo.engine')


@pytest.mark.parametrize('kind, platform, network_file', [('onnx', 'onnxruntime_onnx', 'model.onnx'),
                                                          ('engine', 'tensorrt_plan', 'model.plan')])
def test_repository_for_the_official_containers(demo_onnx, request, tmp_path, kind, platform, network_file):
    """The engine's repository is written without TensorRT (its metadata comes from the sidecar):
    the same two models, the network as tensorrt_plan with the plan file as built (the AOT plugins'
    PTX travels inside it)."""
    model = demo_onnx if kind == 'onnx' else request.getfixturevalue('demo_engine')
    assert serve_main(['--model', str(model), '--repository', str(tmp_path / 'repo'), '--max-batch', '4',
                       '--instances', '2']) == 0
    options, meta = ServingOptions(max_batch=4, instances=2), model_metadata(demo_onnx)
    network = parse(tmp_path / 'repo' / NETWORK_NAME / 'config.pbtxt')
    assert network.name == NETWORK_NAME and network.platform == platform
    check_serving_options(network, options, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    assert [(t.name, t.data_type, list(t.dims)) for t in network.input] == [
        (INPUT_NAME, DT.TYPE_UINT8, [-1, -1, 3])]  # any image size: the network resizes
    assert [t.name for t in network.output] == list(POSTPROCESS_OUTPUTS)
    assert list(network.output[1].dims) == [meta.max_dets, 4]
    assert sorted(p.name for p in (tmp_path / 'repo' / NETWORK_NAME / '1').iterdir()) == [network_file]
    assert (tmp_path / 'repo' / NETWORK_NAME / '1' / network_file).read_bytes() == model.read_bytes()

    step = parse(tmp_path / 'repo' / MODEL_NAME / 'config.pbtxt')
    assert step.backend == 'python'
    check_serving_options(step, options, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert [t.name for t in step.input] == [IMAGE_INPUT, THRESHOLD_INPUT]
    assert step.input[0].allow_ragged_batch and step.input[1].optional
    assert [t.name for t in step.output] == list(OUTPUTS)
    assert step.parameters['network'].string_value == NETWORK_NAME and 'model_file' not in step.parameters
    if kind == 'engine':  # its profile goes to the step, which refuses larger images and enlarges smaller ones
        assert json.loads(step.parameters[IMAGE_RANGE_PARAMETER].string_value) == {'min': [32, 32],
                                                                                   'max': [3840, 3840]}
    else:
        assert IMAGE_RANGE_PARAMETER not in step.parameters
    assert ModelMetadata.from_json(step.parameters[METADATA_PARAMETER].string_value) == meta
    assert (tmp_path / 'repo' / MODEL_NAME / '1' / 'model.py').is_file()


@pytest.mark.parametrize('kind', ['onnx', 'engine'])
def test_a_yolact_plus_repository_declares_box_scores(demo_plus_onnx, tmp_path, kind):
    """The network and the step declare box_scores, as the model has them: an ONNX model's from its
    graph, an engine's from its sidecar (no TensorRT here). YOLACT models' configs stay without
    (test_repository_for_the_official_containers)."""
    model = demo_plus_onnx if kind == 'onnx' else \
        stand_in_engine(demo_plus_onnx, (*POSTPROCESS_OUTPUTS, BOX_SCORES), tmp_path / 'plus.engine')
    assert serve_main(['--model', str(model), '--repository', str(tmp_path / 'repo')]) == 0
    network = parse(tmp_path / 'repo' / NETWORK_NAME / 'config.pbtxt')
    assert [t.name for t in network.output] == [*POSTPROCESS_OUTPUTS, BOX_SCORES]
    assert (network.output[-1].data_type, list(network.output[-1].dims)) == (
        DT.TYPE_FP32, [model_metadata(demo_plus_onnx).max_dets])
    step = parse(tmp_path / 'repo' / MODEL_NAME / 'config.pbtxt')
    assert [t.name for t in step.output] == [*OUTPUTS, BOX_SCORES_OUTPUT]
    assert (step.output[-1].data_type, list(step.output[-1].dims)) == (DT.TYPE_FP32, [-1])


def test_the_bundled_servers_repository_declares_box_scores_for_yolact_plus_only(demo_onnx, demo_plus_onnx,
                                                                                  tmp_path):
    for model, outputs in ((demo_onnx, list(OUTPUTS)), (demo_plus_onnx, [*OUTPUTS, BOX_SCORES_OUTPUT])):
        local_repository(model, model_metadata(model), tmp_path / model.stem, ServingOptions())
        assert [t.name for t in parse(tmp_path / model.stem / MODEL_NAME / 'config.pbtxt').output] == outputs


def test_a_batch_above_the_engines_profile_is_refused_in_one_line(demo_engine, tmp_path, capsys):
    """Triton would not load a tensorrt_plan configured for more than its profile's batch (8 here)."""
    assert serve_main(['--model', str(demo_engine), '--repository', str(tmp_path / 'repo'), '--max-batch', '9']) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--max-batch 9 is above the engine profile's maximum batch 8" in lines[0], lines
    assert '--max-batch 8' in lines[0] and not (tmp_path / 'repo').exists()


def test_the_bundled_servers_repository_for_an_engine(demo_engine, tmp_path):
    """Written without TensorRT: the step opens the engine itself and knows its image range."""
    local_repository(demo_engine, model_metadata(demo_engine), tmp_path / 'repo', ServingOptions())
    step = parse(tmp_path / 'repo' / MODEL_NAME / 'config.pbtxt')
    assert step.parameters['model_file'].string_value == str(demo_engine.resolve())
    assert json.loads(step.parameters[IMAGE_RANGE_PARAMETER].string_value) == {'min': [32, 32], 'max': [3840, 3840]}
    assert sorted(p.name for p in (tmp_path / 'repo').iterdir()) == [MODEL_NAME]


def test_an_engine_is_refused_in_one_line_on_a_host_without_tensorrt(demo_engine, demo_onnx, capsys):
    """The bundled server runs the engine in its Python-backend step with runtime.backends, which
    needs TensorRT and a GPU: without them runtime.serve says so before starting a server, and
    names what serves here instead."""
    reason = trt_unavailable_reason()
    if reason is None:
        pytest.skip('this host runs engines (tests/runtime/serve/test_server.py serves one)')
    assert serve_main(['--model', str(demo_engine), '--http-port', '1', '--grpc-port', '1']) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {demo_engine} cannot be served on this host: '), lines
    assert 'NVIDIA GPU' in lines[0] and f'--model {demo_onnx}' in lines[0] and '--repository DIR' in lines[0]


def test_a_checkpoint_is_refused_with_the_fix(tmp_path, capsys):
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(ToolkitError, match='export or build'):
        official_repository(checkpoint, None, tmp_path / 'repo', ServingOptions())
    assert not (tmp_path / 'repo').exists()
    assert serve_main(['--model', str(tmp_path / 'missing.onnx'), '--repository', str(tmp_path / 'repo')]) == 1
    assert capsys.readouterr().err.count('\n') == 1
