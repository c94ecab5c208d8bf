"""The Triton Python-backend step of the served `yolact` model: the repository writer copies this
file as `yolact/1/model.py`, and Triton's Python-backend stub loads it (the stub provides
triton_python_backend_utils; the `runtime` package must be importable in the stub's Python).

It takes the requests the dynamic batcher grouped (protocol.py's wire format), runs the host
pre-processing, the network and the host post-processing (mask pasting) of runtime.pipeline on
them as one batch, and answers each request with its compact detections. The network runs one of
two ways, by the config's parameters:
  model_file: runtime.backends opens the .onnx / .engine in this process (the bundled server,
              which has the Python backend only);
  network:    the name of a model in the same repository (onnxruntime_onnx or tensorrt_plan in
              the official containers), called through BLS.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

# The Python-backend stub starts its interpreter isolated from the environment: PYTHONPATH is in
# os.environ but not on sys.path. The bundled server (runtime/serve/server.py) passes the import
# path of the process that started it there, so apply it before importing the runtime.
sys.path[:0] = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from runtime.backends import open_backend  # noqa: E402
from runtime.contract import BOX_SCORES, INPUT_NAME, POSTPROCESS_OUTPUTS  # noqa: E402
from runtime.images import enlarge_to  # noqa: E402
from runtime.metadata import ModelMetadata  # noqa: E402
from runtime.pipeline import predict, same_size_groups, to_detections  # noqa: E402
from runtime.serve.protocol import (BOX_SCORES_OUTPUT, IMAGE_INPUT, IMAGE_RANGE_PARAMETER,  # noqa: E402
                                    MAX_PIXELS_PARAMETER, METADATA_PARAMETER, THRESHOLD_INPUT)
from runtime.serve.protocol import ServeError, check_request, encode_detections  # noqa: E402


# pytriton's stub was built against numpy 1: with numpy 2 its pb_utils.Tensor(name, array) and
# tensor.as_numpy() read the dtype's itemsize as 0 (outputs of size 0, inputs read as zeros). Tensors
# cross through DLPack instead, which carries the dtype itself.
def as_array(tensor) -> np.ndarray:
    """A pb_utils.Tensor as a numpy array (a view of the tensor's memory)."""
    return np.from_dlpack(tensor)


# The stub renames a DLPack capsule it consumed "used_dlpack" (python_backend's pb_tensor.cc,
# FromDLPackCapsule), where the DLPack protocol says "used_dltensor". numpy's capsule destructor
# knows only the protocol's names: on the stub's name it fails to read the capsule and writes
# "ValueError: PyCapsule_GetPointer called with incorrect name" with a traceback into the server's
# log, once per output tensor. It frees nothing then (the stub owns the tensor and calls its deleter
# once the response is sent), so nothing leaks or is freed twice; output_tensor gives the consumed
# capsule the protocol's name, and numpy's destructor leaves a consumed capsule alone.
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
# ctypes.pythonapi raises the Python error a failed call sets, so the int it returns needs no check.
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
# A capsule keeps a pointer to its name, not a copy: a module constant outlives every capsule.
CONSUMED_CAPSULE_NAME = b'used_dltensor'


def output_tensor(name: str, array: np.ndarray):
    """A pb_utils.Tensor of a C-contiguous numpy array, through DLPack, except an empty array: numpy
    gives it strides that the stub's contiguity check refuses, and its size is 0 either way."""
    if array.size == 0:
        return pb_utils.Tensor(name, array)
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, CONSUMED_CAPSULE_NAME)
    return tensor


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args['model_config'])
        parameters = {key: value['string_value'] for key, value in config.get('parameters', {}).items()}
        self.metadata = ModelMetadata.from_json(parameters[METADATA_PARAMETER], f'{args["model_name"]} config')
        self.max_pixels = int(parameters[MAX_PIXELS_PARAMETER])
        # An engine's profile: larger images are refused per request (a 400, not a failed batch); smaller
        # ones the TensorRT backend enlarges itself, and the BLS path here before calling the network.
        image_range = json.loads(parameters.get(IMAGE_RANGE_PARAMETER, 'null'))
        self.min_image, self.max_image = (None, None) if image_range is None else \
            (tuple(image_range['min']), tuple(image_range['max']))
        self.backend = None
        self.network = parameters.get('network')
        # The repository writer declares box_scores where the network has them (YOLACT++): ask it for them then.
        declared = {output['name'] for output in config['output']}
        self.network_outputs = POSTPROCESS_OUTPUTS + ((BOX_SCORES,) if BOX_SCORES_OUTPUT in declared else ())
        if 'model_file' in parameters:
            self.backend = open_backend(parameters['model_file'])

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        by_threshold: dict[float, list[tuple[int, np.ndarray]]] = {}
        for index, request in enumerate(requests):
            threshold = pb_utils.get_input_tensor_by_name(request, THRESHOLD_INPUT)
            try:
                image, score_threshold = check_request(
                    as_array(pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT)),
                    None if threshold is None else as_array(threshold), self.max_pixels, self.max_image)
            except ServeError as e:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
                continue
            by_threshold.setdefault(score_threshold, []).append((index, image))
        for score_threshold, group in by_threshold.items():
            for (index, _), dets in zip(group, self._detect([image for _, image in group], score_threshold)):
                responses[index] = pb_utils.InferenceResponse(
                    [output_tensor(name, value) for name, value in encode_detections(dets).items()])
        return responses

    def _detect(self, images: list[np.ndarray], score_threshold: float) -> list:
        """Detections of each image (uint8 [H, W, 3] BGR, any size) as one batch."""
        if self.backend is not None:
            return predict(self.backend, images, score_threshold=score_threshold)
        # The network resizes inside (any H, W; an engine from its profile's minimum up), but a batch holds
        # images of one size.
        detections: list = [None] * len(images)
        for group in same_size_groups(images):
            batch = np.stack([images[i] if self.min_image is None else enlarge_to(images[i], self.min_image)
                              for i in group])
            response = pb_utils.InferenceRequest(model_name=self.network,
                                                 requested_output_names=list(self.network_outputs),
                                                 inputs=[output_tensor(INPUT_NAME, batch)]).exec()
            if response.has_error():
                raise pb_utils.TritonModelException(f'{self.network}: {response.error().message()}')
            raw = {name: as_array(pb_utils.get_output_tensor_by_name(response, name)) for name in self.network_outputs}
            # The network's config declares num_dets [1], reshaped from the model's [] (Triton takes no empty
            # dims), so it arrives as [B, 1]; the contract's is [B].
            raw['num_dets'] = raw['num_dets'].reshape(-1)
            found = to_detections(raw, [images[i].shape[:2] for i in group], score_threshold=score_threshold,
                                  mask_threshold=self.metadata.mask_threshold)
            for i, dets in zip(group, found):
                detections[i] = dets
        return detections

    def finalize(self) -> None:
        if self.backend is not None:
            self.backend.close()
