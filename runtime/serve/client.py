"""A served model, used like a loaded one: `ServedModel(url).predict(images)` returns the same
Detections as runtime.pipeline.predict on the model file, over Triton's HTTP or gRPC protocol
(tritonclient), in protocol.py's wire format.

url: http://HOST:PORT[/MODEL] or grpc://HOST:PORT[/MODEL] (MODEL defaults to protocol.MODEL_NAME);
HOST:PORT alone means HTTP.
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from runtime.detections import Detections
from runtime.metadata import MetadataError, ModelMetadata
from runtime.serve.protocol import (BOX_SCORES_OUTPUT, DEFAULT_SCORE_THRESHOLD, IMAGE_INPUT, METADATA_PARAMETER,
                                    MODEL_NAME, OUTPUTS, THRESHOLD_INPUT, ServeError, decode_detections)

SCHEMES = ('http', 'grpc')
TIMEOUT_S = 60.0
# gRPC statuses of a server that is gone rather than one that refused the request.
UNREACHABLE = ('StatusCode.UNAVAILABLE', 'StatusCode.DEADLINE_EXCEEDED')
# gRPC statuses of a fault on the server's side (HTTP: 5xx).
SERVER_FAULTS = ('StatusCode.INTERNAL', 'StatusCode.UNKNOWN')
START_HINT = 'is it running? (python -m runtime.serve --model FILE)'
# The most of a server's message that goes into the one-line error (a proxy's error page can be long).
MESSAGE_CHARS = 300


def server_error(url: str, status: str | None, message: str) -> ServeError:
    """The one-line ServeError for a server's error answer: HTTP status ('400', '500', ...) or gRPC
    status ('StatusCode.INVALID_ARGUMENT', ...), and its message (any length, any lines)."""
    message = ' '.join(message.split())
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + '...'
    if status in UNREACHABLE:  # gRPC reports a lost connection as a status
        return ServeError(f'{url}: the server does not answer ({message}); {START_HINT}')
    if status is not None and (status.startswith('5') or status in SERVER_FAULTS):
        # Triton's HTTP frontend also answers 500 to a body it cannot parse (README, "Serving"), which
        # this client does not send: here a 5xx is the server's (or a proxy's) own failure.
        return ServeError(f'{url}: the server failed on the request (status {status}): {message}; the '
                          f'server\'s log says why (python -m runtime.serve names it when it starts)')
    return ServeError(f'{url}: the server refused the request{f" (status {status})" if status else ""}: {message}')


def parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, 'host:port', model name) of a served model's URL; ServeError when it is not one."""
    parts = urlsplit(url if '://' in url else f'http://{url}')
    if parts.scheme not in SCHEMES or not parts.hostname or parts.port is None:
        raise ServeError(f'{url!r} is not a served model\'s URL: use http://HOST:PORT/{MODEL_NAME} or '
                         f'grpc://HOST:PORT/{MODEL_NAME}')
    return parts.scheme, f'{parts.hostname}:{parts.port}', parts.path.strip('/') or MODEL_NAME


class ServedModel:
    """A model served by Triton (python -m runtime.serve). Opening it reads the model's metadata
    and the outputs to request from its config (box_scores where a YOLACT++ model's declares them;
    ServeError when the server does not answer or serves no such model); `predict` sends one
    request per image, the server batches concurrent requests. close() (or a with-statement) ends
    the connection. Not thread-safe (tritonclient's HTTP client is not): one per thread."""

    def __init__(self, url: str):
        self.scheme, self.address, self.model = parse_url(url)
        self.url = f'{self.scheme}://{self.address}/{self.model}'
        if self.scheme == 'http':
            import tritonclient.http as triton_client
        else:
            import tritonclient.grpc as triton_client
        from tritonclient.utils import InferenceServerException
        self._api, self._server_error = triton_client, InferenceServerException
        self._client = self._call(lambda: triton_client.InferenceServerClient(
            self.address, **({'network_timeout': TIMEOUT_S} if self.scheme == 'http' else {})))
        self.metadata, self.outputs = self._read_config()

    @property
    def description(self) -> str:
        return f'Triton model {self.model!r} at {self.scheme}://{self.address}'

    def _call(self, function):
        """function() with the server's and the connection's failures turned into one-line ServeErrors."""
        try:
            return function()
        except self._server_error as e:
            raise server_error(self.url, str(e.status()) if e.status() else None, str(e.message())) from None
        except OSError as e:  # HTTP: refused, reset or timed-out connections
            raise ServeError(f'{self.url}: the server does not answer ({e.strerror or e}); {START_HINT}') from None
        except http.client.HTTPException as e:  # HTTP: the connection closed mid-answer (geventhttpclient's errors)
            raise ServeError(f'{self.url}: the server stopped answering ({e or type(e).__name__}); '
                             f'{START_HINT}') from None

    def _read_config(self) -> tuple[ModelMetadata, tuple[str, ...]]:
        """The model's metadata and the outputs to request: OUTPUTS, and BOX_SCORES_OUTPUT where the
        config declares it."""
        config = self._call(lambda: self._client.get_model_config(self.model, **(
            {'as_json': True} if self.scheme == 'grpc' else {})))
        config = config.get('config', config)  # gRPC's JSON wraps the config in {'config': ...}
        text = config.get('parameters', {}).get(METADATA_PARAMETER, {}).get('string_value')
        if text is None:
            raise ServeError(f'{self.url} has no {METADATA_PARAMETER!r} parameter: it is not a model served by '
                             f'python -m runtime.serve')
        try:
            metadata = ModelMetadata.from_json(text, f'{self.url} config')
        except MetadataError as e:
            raise ServeError(str(e)) from None
        declared = {output.get('name') for output in config.get('output', [])}
        return metadata, OUTPUTS + ((BOX_SCORES_OUTPUT,) if BOX_SCORES_OUTPUT in declared else ())

    def infer_one(self, image: np.ndarray, score_threshold: float) -> Detections:
        """One image (uint8 [H, W, 3] BGR, any size) -> its Detections, boxes and masks in its pixels."""
        inputs = [self._api.InferInput(IMAGE_INPUT, [1, *image.shape], 'UINT8'),
                  self._api.InferInput(THRESHOLD_INPUT, [1, 1], 'FP32')]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(image)[None])
        inputs[1].set_data_from_numpy(np.array([[score_threshold]], np.float32))
        outputs = [self._api.InferRequestedOutput(name) for name in self.outputs]
        result = self._call(lambda: self._client.infer(self.model, inputs, outputs=outputs))
        return decode_detections({name: result.as_numpy(name) for name in self.outputs}, image.shape[:2])

    def predict(self, images: Sequence[np.ndarray], *,
                score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> list[Detections]:
        """Detections of each image (uint8 [H, W, 3] BGR, any size), as runtime.pipeline.predict."""
        return [self.infer_one(image, score_threshold) for image in images]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> 'ServedModel':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
