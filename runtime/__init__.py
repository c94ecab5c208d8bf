"""The deployment runtime: the bottom layer, the only package a deployment host installs (numpy, cv2,
onnxruntime or TensorRT, cuda-python). It imports nothing from model/, export/, calib/, engines/ or
torch at module level (tests/runtime/test_layering.py); every other package may import it."""

__version__ = '0.1.0'
