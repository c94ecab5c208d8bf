"""The deployment runtime: the bottom layer, the only package a deployment host installs (numpy, cv2,
onnxruntime or TensorRT, cuda-python). It imports nothing from yolact_torch/, export/, calib/, engines/ or
torch at module level (tests/runtime/test_layering.py); every other package may import it.

The Python API (README "Python API"): `runtime.load(path)` gives a model to call on images.
`import runtime` stays cheap: the API's modules are imported on first use of its names.
"""

import importlib

__version__ = '0.1.0'

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {'load': 'runtime.api', 'Model': 'runtime.api', 'InputError': 'runtime.api',
         'Detections': 'runtime.detections', 'ToolkitError': 'runtime.errors'}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted([*globals(), *_LAZY])
