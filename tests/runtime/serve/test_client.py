"""The client's errors: every error answer of a server becomes one line that says whose fault it
is. A stand-in HTTP server answers as a failing server or a proxy in front of Triton would (no
tritonserver needed); test_server.py checks the real server's answers."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime.client import main as client_main
from runtime.serve.client import MESSAGE_CHARS, ServedModel, server_error
from runtime.serve.protocol import MODEL_NAME, ServeError

PROXY_PAGE = b'<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n</body>\n</html>\n'


@pytest.fixture
def failing_server():
    """An HTTP server on a free port of 127.0.0.1 that answers every request with a proxy's 502 page
    (not JSON, several lines): its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(502)
            self.send_header('Content-Type', 'text/html')
            self.send_header('Content-Length', str(len(PROXY_PAGE)))
            self.end_headers()
            self.wfile.write(PROXY_PAGE)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}/{MODEL_NAME}'
    finally:
        server.shutdown()
        server.server_close()


def test_a_5xx_that_is_not_json_becomes_one_line(failing_server):
    with pytest.raises(ServeError) as error:
        ServedModel(failing_server)
    message = str(error.value)
    assert '\n' not in message
    assert 'the server failed on the request (status 502)' in message and 'Bad Gateway' in message


def test_the_client_command_reports_a_5xx_in_one_line(failing_server, tmp_path, capsys):
    from runtime.assets import SAMPLE_IMAGE

    assert client_main([failing_server, str(SAMPLE_IMAGE), '--out', str(tmp_path / 'out')]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'status 502' in lines[0], lines
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('status, says', [
    ('400', 'refused the request (status 400)'),
    ('StatusCode.INVALID_ARGUMENT', 'refused the request (status StatusCode.INVALID_ARGUMENT)'),
    ('500', 'failed on the request (status 500)'),
    ('503', 'failed on the request (status 503)'),
    ('StatusCode.INTERNAL', 'failed on the request (status StatusCode.INTERNAL)'),
    ('StatusCode.UNAVAILABLE', 'does not answer'),
    (None, 'refused the request: '),
])
def test_server_errors_say_whose_fault_in_one_line(status, says):
    message = str(server_error('http://h:1/yolact', status, 'first line\n  second line\n' + 'x' * 1000))
    assert says in message
    assert '\n' not in message and 'first line second line' in message
    assert len(message) < MESSAGE_CHARS + 200
