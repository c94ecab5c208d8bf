"""The served demo model on 127.0.0.1: python -m runtime.client over HTTP and gRPC writes what
runtime.infer writes, bad requests get a 400 with a message and the server stays up, the
repository's Python-backend step for the official containers loads in the bundled server, and
SIGTERM stops the server cleanly, and a client whose server dies reports it in one line. Every
server started here is stopped when its test or module ends, pass or fail."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolact_torch.data.shapes import generate_image
import runtime
from runtime.assets import SAMPLE_IMAGE
from runtime.client import main as client_main
from runtime.detections import BBOX_SCORE_KEY
from runtime.infer import main as infer_main
from runtime.serve.protocol import MODEL_NAME, OUTPUTS
from runtime.serve.repository import NETWORK_NAME, ServingOptions, model_metadata, official_repository
from runtime.serve.server import TritonServer, ready

ROOT = Path(__file__).resolve().parents[3]

START_TIMEOUT_S = 180
MAX_PIXELS = 500_000


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Three shapes images, one at another size than the model's, as PNG files."""
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(5)
    pictures = [generate_image(rng)[0] for _ in range(3)]
    pictures[2] = cv2.resize(pictures[2], (400, 240))
    for index, picture in enumerate(pictures):
        cv2.imwrite(str(folder / f'{index}.png'), picture)
    return folder


def start_serve(model, log, *extra):
    """python -m runtime.serve on free ports, ready: (process, http_port, grpc_port)."""
    http_port, grpc_port, metrics_port = free_ports(3)
    with open(log, 'w') as stderr:
        process = subprocess.Popen([sys.executable, '-m', 'runtime.serve', '--model', str(model),
                                    '--http-port', str(http_port), '--grpc-port', str(grpc_port),
                                    '--metrics-port', str(metrics_port), *extra],
                                   cwd=ROOT, stderr=stderr, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while 'serving' not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_serve(process)
            pytest.fail(f'runtime.serve did not start: {log.read_text()[-2000:]}')
        time.sleep(0.2)
    return process, http_port, grpc_port


def stop_serve(process):
    """SIGTERM, then SIGKILL for its whole process group after a minute."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tritonserver_of(process):
    """The pid of the tritonserver that a runtime.serve process started (its child)."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            name, fields = stat.read_text().rsplit(')', 1)
        except OSError:
            continue
        if int(fields.split()[1]) == process.pid and name.endswith('(tritonserver'):
            return int(stat.parent.name)
    raise AssertionError(f'runtime.serve {process.pid} has no tritonserver child')


def tritonserver_log(process):
    """The log of the tritonserver that a runtime.serve process started: beside its repository."""
    arguments = Path(f'/proc/{tritonserver_of(process)}/cmdline').read_text().split('\0')
    repository = next(a.split('=', 1)[1] for a in arguments if a.startswith('--model-repository='))
    return Path(repository).parent / 'tritonserver.log'


@pytest.fixture(scope='module')
def server(demo_onnx, tmp_path_factory):
    """python -m runtime.serve on free ports: (process, http_port, grpc_port, log file)."""
    log = tmp_path_factory.mktemp('server') / 'serve.log'
    process, http_port, grpc_port = start_serve(demo_onnx, log, '--max-pixels', str(MAX_PIXELS))
    try:
        yield process, http_port, grpc_port, log
    finally:
        stop_serve(process)


@pytest.mark.parametrize('scheme', ['http', 'grpc'])
def test_client_writes_what_infer_writes(server, images, demo_onnx, tmp_path, scheme):
    _, http_port, grpc_port, _ = server
    url = f'{scheme}://127.0.0.1:{http_port if scheme == "http" else grpc_port}/{MODEL_NAME}'
    assert client_main([url, str(images), '--out', str(tmp_path / 'served'),
                        '--json', str(tmp_path / 'served.json')]) == 0
    assert infer_main([str(images), '--model', str(demo_onnx), '--out', str(tmp_path / 'local'),
                       '--json', str(tmp_path / 'local.json')]) == 0
    served, local = (json.loads((tmp_path / f'{name}.json').read_text()) for name in ('served', 'local'))
    assert len(local) >= 3  # the demo model finds the shapes
    assert served == local
    for annotated in (tmp_path / 'local').rglob('*.png'):
        assert (tmp_path / 'served' / annotated.relative_to(tmp_path / 'local')).read_bytes() == annotated.read_bytes()


@pytest.mark.parametrize('scheme', ['http', 'grpc'])
def test_runtime_load_opens_a_served_model_as_it_opens_a_file(server, images, demo_onnx, scheme):
    _, http_port, grpc_port, _ = server
    url = f'{scheme}://127.0.0.1:{http_port if scheme == "http" else grpc_port}/{MODEL_NAME}'
    paths = sorted(images.rglob('*.png'))
    with runtime.load(url) as served, runtime.load(demo_onnx) as local:
        assert served.class_names == local.class_names
        for remote, here in zip(served(paths, score_threshold=0), local(paths, score_threshold=0)):
            assert remote.to_coco_json(image_id=1) == here.to_coco_json(image_id=1)
            assert remote.names == here.names


@pytest.fixture(scope='module')
def plus_server(demo_plus_onnx, tmp_path_factory):
    """python -m runtime.serve on the YOLACT++ demo, free ports: (process, http_port, grpc_port)."""
    process, http_port, grpc_port = start_serve(demo_plus_onnx, tmp_path_factory.mktemp('plus') / 'serve.log')
    try:
        yield process, http_port, grpc_port
    finally:
        stop_serve(process)


@pytest.fixture(scope='module')
def plus_local_json(demo_plus_onnx, images, tmp_path_factory):
    """runtime.infer's COCO JSON of the YOLACT++ demo on the test images."""
    folder = tmp_path_factory.mktemp('plus_local')
    assert infer_main([str(images), '--model', str(demo_plus_onnx), '--out', str(folder / 'out'),
                       '--json', str(folder / 'local.json')]) == 0
    return json.loads((folder / 'local.json').read_text())


@pytest.mark.parametrize('scheme', ['http', 'grpc'])
def test_a_served_yolact_plus_model_gives_box_scores(plus_server, plus_local_json, demo_plus_onnx, images, tmp_path,
                                                     scheme):
    """The client's COCO JSON is runtime.infer's, each box scored with its bbox_score (the score
    before the mask re-scoring), and runtime.load of the URL gives the file's box_scores."""
    _, http_port, grpc_port = plus_server
    url = f'{scheme}://127.0.0.1:{http_port if scheme == "http" else grpc_port}/{MODEL_NAME}'
    assert client_main([url, str(images), '--out', str(tmp_path / 'served'),
                        '--json', str(tmp_path / 'served.json')]) == 0
    assert len(plus_local_json) >= 3 and all(BBOX_SCORE_KEY in entry for entry in plus_local_json)
    assert json.loads((tmp_path / 'served.json').read_text()) == plus_local_json
    with runtime.load(url) as served, runtime.load(demo_plus_onnx) as local:
        remote, here = served([images / '0.png'], score_threshold=0)[0], local([images / '0.png'], score_threshold=0)[0]
    np.testing.assert_array_equal(remote.box_scores, here.box_scores)
    assert remote.to_coco_json(image_id=1) == here.to_coco_json(image_id=1)


def post(port, body, header_length=None):
    """(HTTP status, body) of a raw infer request to the served model."""
    headers = {'Content-Type': 'application/octet-stream'}
    if header_length is not None:
        headers['Inference-Header-Content-Length'] = str(header_length)
    request = urllib.request.Request(f'http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer', body, headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def image_request(array, datatype='UINT8', threshold=None):
    """A binary-tensor infer request carrying `array` as the image input (and the score threshold
    as JSON data): (body, header length)."""
    inputs = [{'name': 'image', 'shape': list(array.shape), 'datatype': datatype,
               'parameters': {'binary_data_size': array.nbytes}}]
    if threshold is not None:
        inputs.append({'name': 'score_threshold', 'shape': [1, 1], 'datatype': 'FP32', 'data': [threshold]})
    header = json.dumps({'inputs': inputs}).encode()
    return header + array.tobytes(), len(header)


SMALL = np.zeros((1, 8, 8, 3), np.uint8)
# Grey, not black: after a JSON header that Triton reads too far, a zero byte ends the JSON text for
# its parser (the request then fails on the binary data's size, 400), any other byte fails the parse (500).
BODY, HEADER_LENGTH = image_request(np.full((1, 8, 8, 3), 128, np.uint8))
BLACK_BODY, BLACK_HEADER_LENGTH = image_request(SMALL)


@pytest.mark.parametrize('what, request_, status, message', [
    # Triton 2.51's HTTP frontend answers these itself, before the model sees them, with 500 (its
    # parse errors are TRITONSERVER_ERROR_INTERNAL; no server option changes that).
    ('body not JSON', (np.random.default_rng(0).bytes(300), None), 500, 'failed to parse the request JSON buffer'),
    ('JSON, not an inference request', (b'{"images": [1, 2]}', None), 500, "Unable to parse 'inputs'"),
    ('header length past the JSON', (BODY, HEADER_LENGTH + 20), 500, 'failed to parse the request JSON buffer'),
    ('header length short of the JSON', (BODY, HEADER_LENGTH - 5), 500, 'failed to parse the request JSON buffer'),
    ('binary data, no header length', (BODY, None), 500, 'failed to parse the request JSON buffer'),
    # Triton's own checks, 400.
    ('header length past the JSON, then zeros', (BLACK_BODY, BLACK_HEADER_LENGTH + 20), 400, 'unexpected size'),
    ('header length past the body', (BODY, len(BODY) + 100), 400, 'inference header size should be in range'),
    ('image bytes cut short', (BODY[:-10], HEADER_LENGTH), 400, 'unexpected size'),
    ('image bytes too many', (BODY + b'\0' * 10, HEADER_LENGTH), 400, 'unexpected additional input data'),
    ('wrong dtype', image_request(SMALL.astype(np.float32), 'FP32'), 400, "data-type is 'FP32'"),
    ('wrong rank', image_request(np.zeros((1, 8, 3), np.uint8)), 400, 'unexpected shape'),
    ('no batch axis', image_request(np.zeros((64, 80, 3), np.uint8)), 400, 'batch-size must be <='),
    ('one channel', image_request(np.zeros((1, 8, 8, 1), np.uint8)), 400, 'unexpected shape'),
    ('JPEG file bytes', image_request(np.fromfile(SAMPLE_IMAGE, np.uint8)[None]), 400, 'unexpected shape'),
    # The model's own checks (protocol.check_request), 400 with the fix.
    ('empty image', image_request(np.zeros((1, 0, 0, 3), np.uint8)), 400, 'is empty (0 x 0 pixels): send a decoded'),
    ('too large', image_request(np.zeros((1, 1000, MAX_PIXELS // 1000 + 1, 3), np.uint8)), 400,
     'too large (1000 x 501 pixels; this server takes at most 500000): downscale'),
    ('two images', image_request(np.zeros((2, 8, 8, 3), np.uint8)), 400, 'send one image per request'),
    ('threshold out of range', image_request(SMALL, threshold=1.5), 400, 'must be one number in 0..1, got [1.5]'),
    # Random pixels of a valid shape are a valid image: answered.
    ('random pixels', image_request(np.random.default_rng(1).integers(0, 256, (1, 64, 80, 3), np.uint8)), 200, None),
])
def test_bad_requests_are_refused_and_the_server_stays_up(server, images, what, request_, status, message):
    _, http_port, _, _ = server
    answered, answer = post(http_port, *request_)
    assert answered == status, (what, answer)
    answer = json.loads(answer)
    if message is None:
        assert [output['name'] for output in answer['outputs']] == list(OUTPUTS)
    else:
        assert message in answer['error']
    assert ready(http_port)
    good = cv2.imread(str(images / '0.png'))[None]
    assert post(http_port, *image_request(good))[0] == 200


@pytest.mark.parametrize('what, image, message', [
    ('wrong dtype', SMALL.astype(np.float32), "data-type is 'FP32'"),
    ('wrong rank', np.zeros((1, 8, 3), np.uint8), 'unexpected shape'),
    ('empty image', np.zeros((1, 0, 0, 3), np.uint8), 'is empty'),
    ('too large', np.zeros((1, 1000, MAX_PIXELS // 1000 + 1, 3), np.uint8), 'too large'),
])
def test_bad_grpc_requests_are_invalid_arguments_and_the_server_stays_up(server, images, what, image, message):
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    _, _, grpc_port, _ = server
    with grpc_client.InferenceServerClient(f'127.0.0.1:{grpc_port}') as client:
        request = grpc_client.InferInput('image', list(image.shape), np_to_triton_dtype(image.dtype))
        request.set_data_from_numpy(image)
        with pytest.raises(InferenceServerException) as error:
            client.infer(MODEL_NAME, [request])
    assert error.value.status() == 'StatusCode.INVALID_ARGUMENT' and message in error.value.message(), what
    with runtime.load(f'grpc://127.0.0.1:{grpc_port}/{MODEL_NAME}') as served:
        assert len(served([images / '0.png'])[0])


def test_the_servers_log_stays_clean(server, images):
    """No traceback in the server's log after answering requests (the stub used to log one per
    output tensor: numpy's DLPack capsule destructor failing on the stub's non-standard name)."""
    process, http_port, _, _ = server
    log = tritonserver_log(process)
    with runtime.load(f'http://127.0.0.1:{http_port}/{MODEL_NAME}') as served:
        assert all(len(dets) for dets in served(sorted(images.rglob('*.png')), score_threshold=0))
    text = log.read_text(errors='replace')
    assert 'Traceback' not in text and 'PyCapsule' not in text, text[-3000:]


@pytest.mark.gpu
def test_an_engine_served_on_a_gpu_host_answers_as_runtime_infer_does(demo_onnx, images, tmp_path):
    """The bundled server's step runs the engine with runtime.backends (TensorRT, the yolact
    plugins, GPU pasting) as runtime.infer does: over HTTP and gRPC, the same COCO JSON."""
    from engines.build import build_engine

    engine, _ = build_engine(demo_onnx, tmp_path / 'demo.engine', max_batch=ServingOptions().max_batch)
    assert infer_main([str(images), '--model', str(engine), '--out', str(tmp_path / 'local'),
                       '--json', str(tmp_path / 'local.json')]) == 0
    local = json.loads((tmp_path / 'local.json').read_text())
    assert len(local) >= 3  # the demo model finds the shapes
    process, http_port, grpc_port = start_serve(engine, tmp_path / 'serve.log')
    try:
        for scheme, port in (('http', http_port), ('grpc', grpc_port)):
            assert client_main([f'{scheme}://127.0.0.1:{port}/{MODEL_NAME}', str(images),
                                '--out', str(tmp_path / scheme), '--json', str(tmp_path / f'{scheme}.json')]) == 0
            assert json.loads((tmp_path / f'{scheme}.json').read_text()) == local, scheme
        log = tritonserver_log(process).read_text(errors='replace')
        assert 'Traceback' not in log, log[-3000:]
    finally:
        stop_serve(process)


def test_official_repositorys_step_loads_in_the_bundled_server(demo_onnx, tmp_path):
    """The containers' repository, with the step alone: the bundled server has no onnxruntime
    backend for the network, but the step must load as it would beside it."""
    repository = official_repository(demo_onnx, model_metadata(demo_onnx), tmp_path / 'repo', ServingOptions())
    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(repository, tmp_path, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    with server:
        assert ready(http_port, MODEL_NAME)
    assert server.process.returncode == 0


# The official containers' network model (onnxruntime_onnx), which the bundled server lacks, as a
# Python-backend model that runs the same file with onnxruntime and answers the outputs its config declares.
NETWORK_STAND_IN = '''import json, os, sys
sys.path[:0] = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and p not in sys.path]
import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils
from runtime.serve.triton_model import as_array, output_tensor


class TritonPythonModel:
    def initialize(self, args):
        self.names = [output['name'] for output in json.loads(args['model_config'])['output']]
        self.session = onnxruntime.InferenceSession(
            os.path.join(args['model_repository'], args['model_version'], 'model.onnx'))

    def execute(self, requests):
        responses = []
        for request in requests:
            images = np.ascontiguousarray(as_array(pb_utils.get_input_tensor_by_name(request, 'images')))
            outputs = self.session.run(self.names, {'images': images})
            responses.append(pb_utils.InferenceResponse([output_tensor(n, v) for n, v in zip(self.names, outputs)]))
        return responses
'''


def test_the_official_repositorys_step_asks_the_network_for_box_scores(demo_plus_onnx, plus_local_json, images,
                                                                        tmp_path):
    """The containers' repository of the YOLACT++ demo, its network served by a stand-in for the
    onnxruntime backend: the step's BLS call asks for box_scores and the client gets runtime.infer's JSON."""
    repository = official_repository(demo_plus_onnx, model_metadata(demo_plus_onnx), tmp_path / 'repo',
                                     ServingOptions())
    network = repository / NETWORK_NAME
    config = (network / 'config.pbtxt').read_text()
    (network / 'config.pbtxt').write_text(
        config.replace('platform: "onnxruntime_onnx"', 'backend: "python"').replace('KIND_GPU', 'KIND_CPU'))
    (network / '1' / 'model.py').write_text(NETWORK_STAND_IN)
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(repository, tmp_path, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                      models=(NETWORK_NAME, MODEL_NAME)):
        assert client_main([f'http://127.0.0.1:{http_port}/{MODEL_NAME}', str(images), '--out', str(tmp_path / 'out'),
                            '--json', str(tmp_path / 'served.json')]) == 0
    assert json.loads((tmp_path / 'served.json').read_text()) == plus_local_json


def test_sigterm_stops_the_server_cleanly(demo_onnx, tmp_path):
    process, http_port, _ = start_serve(demo_onnx, tmp_path / 'serve.log')
    try:
        tritonserver = tritonserver_of(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        stop_serve(process)
    assert 'stopped (SIGTERM)' in (tmp_path / 'serve.log').read_text()
    with pytest.raises(ProcessLookupError):  # nothing of the server's process group is left
        os.killpg(tritonserver, 0)
    assert not ready(http_port)


def test_a_client_whose_server_dies_says_so_in_one_line(server, images, tmp_path):
    """The last test of the module's server: it kills its tritonserver (SIGKILL, as a crash would)
    while a client is sending it images."""
    process, http_port, _, log = server
    many = tmp_path / 'many'
    many.mkdir()
    picture = cv2.imread(str(images / '0.png'))
    for index in range(300):
        cv2.imwrite(str(many / f'{index:03d}.png'), picture)
    client = subprocess.Popen([sys.executable, '-m', 'runtime.client', f'http://127.0.0.1:{http_port}/{MODEL_NAME}',
                               str(many), '--out', str(tmp_path / 'out')], cwd=ROOT, stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any((tmp_path / 'out').rglob('*.png')):
            assert client.poll() is None and time.monotonic() < deadline, client.stderr.read()
            time.sleep(0.05)
        os.killpg(tritonserver_of(process), signal.SIGKILL)
        _, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if 'error' in line.lower() or 'Traceback' in line]
    assert len(errors) == 1 and errors[0].startswith('error: ') and 'answer' in errors[0], stderr
    assert process.wait(60) == 1  # runtime.serve reports the server's death too
    assert 'exited on its own' in log.read_text()


PROBE_MODEL = '''import os, sys
sys.path[:0] = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and p not in sys.path]
from multiprocessing import resource_tracker


class TritonPythonModel:
    def initialize(self, args):
        resource_tracker.ensure_running()  # the call that failed with the system's libpython
        with open(os.environ['PROBE_OUT'], 'w') as out:
            out.write(sys.version)

    def execute(self, requests):
        return []
'''


def test_the_python_backend_stub_embeds_this_interpreter(tmp_path, monkeypatch):
    """The stub must run the Python whose standard library it imports: with the system's
    libpython 3.11.2 under pyenv's 3.11.7 library, resource_tracker failed on RLock._recursion_count."""
    (tmp_path / 'repo' / 'probe' / '1').mkdir(parents=True)
    (tmp_path / 'repo' / 'probe' / '1' / 'model.py').write_text(PROBE_MODEL)
    (tmp_path / 'repo' / 'probe' / 'config.pbtxt').write_text(
        'backend: "python"\nmax_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    monkeypatch.setenv('PROBE_OUT', str(tmp_path / 'version.txt'))
    http_port, grpc_port, metrics_port = free_ports(3)
    with TritonServer(tmp_path / 'repo', tmp_path, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, models=('probe',)):
        assert (tmp_path / 'version.txt').read_text() == sys.version
