"""Inference backends behind one interface (runtime.backends.base.Backend), and `open_backend`.

Each backend's module is imported only when it is used, so a host needs only the libraries of the
backend it runs (torch for .pth checkpoints, onnxruntime for .onnx, TensorRT for .engine).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import NamedTuple

from runtime.backends.base import Backend, BackendError, RawDetections


class BackendEntry(NamedTuple):
    module: str
    class_name: str
    suffixes: tuple[str, ...]  # model files `backend='auto'` sends to this backend
    requirement: str  # what to install when the module's imports fail


# Adding a backend is one entry here.
BACKENDS: dict[str, BackendEntry] = {
    'torch': BackendEntry('runtime.backends.torch_backend', 'TorchBackend', ('.pth', '.pt'),
                          'torch (pip install "yolact-deploy[torch]")'),
    'ort': BackendEntry('runtime.backends.ort_backend', 'OrtBackend', ('.onnx',),
                        'onnxruntime (pip install "yolact-deploy[cpu]", on a GPU host [gpu])'),
    'trt': BackendEntry('runtime.tensorrt.backend', 'TrtBackend', ('.engine',),
                        'tensorrt (pip install "yolact-deploy[gpu]")'),
}


def backend_for_path(path: str | Path) -> str:
    """The backend name `auto` picks for a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for name, entry in BACKENDS.items():
        if suffix in entry.suffixes:
            return name
    known = ', '.join(f'{s} ({name})' for name, e in BACKENDS.items() for s in e.suffixes)
    raise BackendError(f'{path}: cannot tell the backend from the suffix {suffix!r}; known: {known}. '
                       f'Pass --backend with one of {", ".join(BACKENDS)}')


def open_backend(path: str | Path, backend: str = 'auto', **options) -> Backend:
    """Load the model at `path` with the named backend ('auto': by the file's suffix).

    options go to the backend's constructor (e.g. config=, cross_class=, max_dets= for torch).
    Returns the loaded Backend; close it (or use it in a with-statement) to free it.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(f'model file not found: {path}')
    name = backend_for_path(path) if backend == 'auto' else backend
    if name not in BACKENDS:
        raise BackendError(f'unknown backend {backend!r}: choose auto or one of {", ".join(BACKENDS)}')
    entry = BACKENDS[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        raise BackendError(f'the {name} backend needs {entry.requirement}: {e}') from None
    backend_class = getattr(module, entry.class_name)
    try:
        inspect.signature(backend_class).bind(path, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(backend_class).parameters if p != 'path']
        raise BackendError(f'the {name} backend does not take {", ".join(sorted(options))} (it takes '
                           f'{", ".join(accepted) or "no options"})') from None
    return backend_class(path, **options).load()


__all__ = ['BACKENDS', 'Backend', 'BackendError', 'RawDetections', 'backend_for_path',
           'open_backend']
