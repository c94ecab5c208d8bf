"""python -m runtime.serve: serve a .onnx or .engine as the Triton model `yolact` with the
tritonserver bundled in nvidia-pytriton, or (--repository) write a model repository for NVIDIA's
tritonserver containers without starting anything."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from runtime.errors import ToolkitError
from runtime.serve.protocol import MODEL_NAME
from runtime.serve.repository import (NETWORK_NAME, ServingOptions, local_repository, model_metadata,
                                     official_repository, servable_metadata)
from runtime.serve.server import TritonServer

DEFAULT_OPTIONS = ServingOptions()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m runtime.serve',
        description=f'Serve a model file as the Triton model {MODEL_NAME!r} (HTTP and gRPC), or write a Triton '
                    'model repository for the official server containers.',
        epilog='Stops cleanly on SIGINT (Ctrl-C) and SIGTERM. Exit status: 0 after a clean stop or a written '
               'repository, 1 when the model or the server cannot be used, 2 for bad arguments.')
    parser.add_argument('--model', type=Path, required=True, metavar='FILE',
                        help='a .onnx (onnxruntime; the CPU here) or .engine (TensorRT, GPU host) of this toolkit')
    parser.add_argument('--http-port', type=int, default=8000, metavar='P', help='HTTP port (default: 8000)')
    parser.add_argument('--grpc-port', type=int, default=8001, metavar='P', help='gRPC port (default: 8001)')
    parser.add_argument('--metrics-port', type=int, default=8002, metavar='P',
                        help='Prometheus metrics port (default: 8002)')
    parser.add_argument('--address', default='127.0.0.1',
                        help='where the ports listen: 127.0.0.1 this host only (default), 0.0.0.0 every interface')
    parser.add_argument('--instances', type=int, default=DEFAULT_OPTIONS.instances, metavar='N',
                        help='model instances, each with its own copy of the model '
                             f'(default: {DEFAULT_OPTIONS.instances})')
    parser.add_argument('--max-batch', type=int, default=DEFAULT_OPTIONS.max_batch, metavar='N',
                        help='the most requests the dynamic batcher joins in one batch '
                             f'(default: {DEFAULT_OPTIONS.max_batch})')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_OPTIONS.max_pixels, metavar='N',
                        help='refuse images of more than N pixels (H * W) with a 400 '
                             f'(default: {DEFAULT_OPTIONS.max_pixels})')
    parser.add_argument('--repository', type=Path, default=None, metavar='DIR',
                        help=f'write a model repository for the official tritonserver containers into DIR '
                             f'({MODEL_NAME} and {NETWORK_NAME}) and exit, starting nothing')
    return parser


def serve(args: argparse.Namespace, options: ServingOptions) -> int:
    metadata = servable_metadata(args.model)  # a model that does not run here is refused before the server starts
    stop = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.append(number))
    with tempfile.TemporaryDirectory(prefix='yolact-serve-') as workspace:
        repository = local_repository(args.model, metadata, Path(workspace) / 'repository', options)
        server = TritonServer(repository, Path(workspace), http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, address=args.address)
        with server:
            print(f'serving {args.model} as {MODEL_NAME!r}: http://{args.address}:{args.http_port}/{MODEL_NAME} '
                  f'(HTTP), grpc://{args.address}:{args.grpc_port}/{MODEL_NAME} (gRPC), metrics on '
                  f'http://{args.address}:{args.metrics_port}/metrics; its log: {server.log_path}; Ctrl-C stops',
                  file=sys.stderr, flush=True)
            while not stop and server.process.poll() is None:
                time.sleep(0.2)
            if not stop:
                print(f'error: tritonserver exited on its own with status {server.process.returncode}; its log '
                      f'ends:\n{server.log_tail()}', file=sys.stderr)
                return 1
    print(f'stopped ({signal.Signals(stop[0]).name})', file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model.is_file():
        print(f'error: model file not found: {args.model} (pass --model FILE)', file=sys.stderr)
        return 1
    try:
        options = ServingOptions(max_batch=args.max_batch, instances=args.instances, max_pixels=args.max_pixels)
        if args.repository is not None:
            official_repository(args.model, model_metadata(args.model), args.repository, options)
            print(f'wrote the model repository {args.repository}/ ({MODEL_NAME}, {NETWORK_NAME}); serve it with '
                  f'the official container as the README says (section "Serving")')
            return 0
        return serve(args, options)
    except ToolkitError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
