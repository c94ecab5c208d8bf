"""Running the tritonserver that nvidia-pytriton bundles (Triton 2.51 with the Python backend only)
as a child process, on a repository of repository.py.

Why the environment matters: pytriton ships one Python-backend stub per Python minor version,
linked against `libpython3.X.so.1.0` and found through the loader's search path. On a host whose
venv Python (here pyenv's 3.11.7) is not the system's libpython3.11 (Debian's 3.11.2), the stub
embeds the system's 3.11.2 interpreter but imports the venv's 3.11.7 standard library, whose
multiprocessing.resource_tracker calls RLock._recursion_count (added in 3.11.5): the model fails
to initialise with "'_thread.RLock' object has no attribute '_recursion_count'". The server here
puts this interpreter's own LIBDIR first on LD_LIBRARY_PATH, so the stub embeds the same
interpreter that will import the standard library. The stub ignores PYTHONPATH when it starts;
the server passes this interpreter's import path there all the same, and the step
(triton_model.py) puts it on sys.path, so it imports the same `runtime` and site-packages.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from runtime.serve.protocol import MODEL_NAME, ServeError

INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0 (it bundles the server; pyproject.toml, serve, says why)"
# Generous: the step imports numpy, cv2, numba and onnxruntime and loads the model first.
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 15


def bundled_server() -> Path:
    """The folder of pytriton's bundled tritonserver (bin/, backends/, python_backend_stubs/),
    found without importing pytriton. ServeError when nvidia-pytriton is not installed."""
    spec = importlib.util.find_spec('pytriton')
    if spec is None or not spec.submodule_search_locations:
        raise ServeError(f'serving needs the tritonserver of nvidia-pytriton: {INSTALL_HINT}')
    return Path(next(iter(spec.submodule_search_locations))) / 'tritonserver'


def prepare_backends(workspace: Path) -> Path:
    """A backend folder for the server in `workspace`: the bundled Python backend with the stub
    built for this interpreter's Python version (links, nothing copied). Returns the folder."""
    server = bundled_server()
    version = f'{sys.version_info.major}.{sys.version_info.minor}'
    stub = server / 'python_backend_stubs' / version / 'triton_python_backend_stub'
    if not stub.is_file():
        shipped = ', '.join(sorted(p.name for p in (server / 'python_backend_stubs').iterdir()))
        raise ServeError(f'nvidia-pytriton has no Python-backend stub for Python {version}; run the server '
                         f'with a Python it ships one for ({shipped})')
    python = workspace / 'backends' / 'python'
    python.mkdir(parents=True, exist_ok=True)
    for source in [*(server / 'backends' / 'python').glob('*.*'), stub]:
        (python / source.name).unlink(missing_ok=True)
        (python / source.name).symlink_to(source)
    return workspace / 'backends'


def server_environment() -> dict[str, str]:
    """The server's environment (see the module docstring): pytriton's bundled libraries and this
    interpreter's libpython on LD_LIBRARY_PATH, this interpreter's sys.path as PYTHONPATH."""
    env = dict(os.environ)
    bundled_libs = bundled_server().parent.parent / 'nvidia_pytriton.libs'
    libraries = [sysconfig.get_config_var('LIBDIR'), str(bundled_libs), env.get('LD_LIBRARY_PATH', '')]
    env['LD_LIBRARY_PATH'] = os.pathsep.join(p for p in libraries if p)
    # The folder holding `runtime` first: an editable install finds it through an import hook, not sys.path.
    package_root = str(Path(__file__).resolve().parents[2])
    env['PYTHONPATH'] = os.pathsep.join([package_root, *(p for p in sys.path if p and Path(p).exists())])
    return env


def ready(http_port: int, model: str = MODEL_NAME) -> bool:
    """Whether the server on 127.0.0.1:http_port says `model` is ready."""
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{http_port}/v2/models/{model}/ready', timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


class TritonServer:
    """The bundled tritonserver on `repository`, as a context manager: started and ready on entry
    (ServeError with the log's tail when it exits or is not ready in time), stopped on exit.

    address: where HTTP and gRPC listen ('127.0.0.1' local only, '0.0.0.0' every interface);
    the server's log goes to workspace/tritonserver.log."""

    def __init__(self, repository: Path, workspace: Path, *, http_port: int, grpc_port: int, metrics_port: int,
                 address: str = '127.0.0.1', models: tuple[str, ...] = (MODEL_NAME,)):
        self.repository, self.workspace = Path(repository), Path(workspace)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address, self.models = address, models
        self.log_path = self.workspace / 'tritonserver.log'
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [str(bundled_server() / 'bin' / 'tritonserver'), f'--model-repository={self.repository}',
                f'--backend-directory={prepare_backends(self.workspace)}', '--model-control-mode=explicit',
                *(f'--load-model={model}' for model in self.models),
                f'--http-address={self.address}', f'--http-port={self.http_port}',
                f'--grpc-address={self.address}', f'--grpc-port={self.grpc_port}',
                f'--metrics-address={self.address}', f'--metrics-port={self.metrics_port}',
                '--allow-gpu-metrics=false', '--exit-on-error=true']

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors='replace').splitlines() if self.log_path.is_file() else []
        return '\n'.join(lines[-LOG_TAIL_LINES:])

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> 'TritonServer':
        with open(self.log_path, 'wb') as log:
            # Its own process group: a Ctrl-C in the terminal reaches this process, which stops the server.
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=server_environment(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not all(ready(self.http_port, model) for model in self.models):
            if self.process.poll() is not None or time.monotonic() > deadline:
                what = f'exited with status {self.process.returncode}' if self.process.poll() is not None \
                    else f'was not ready after {timeout_s:.0f} s'
                self.stop()
                raise ServeError(f'tritonserver {what}; its log ({self.log_path}) ends:\n{self.log_tail()}')
            time.sleep(0.25)
        return self

    def stop(self) -> int | None:
        """Stop the server (SIGINT: Triton unloads the models and exits; SIGKILL after
        STOP_TIMEOUT_S) and every process of its group (the Python-backend stubs). Returns its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # stubs left behind by a killed server
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.process.returncode

    def __enter__(self) -> 'TritonServer':
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
