"""python -m runtime.serve.bench (`make bench-serve`): a load test of the served model. Starts the
bundled server on a model file (127.0.0.1, free ports), then, for each concurrency, that many
clients send one image in a loop for --duration seconds. Prints throughput, p50/p99 latency,
errors, the server's memory (resident set of its processes) at the start and the end of each
load, and the response size for the image."""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from runtime.errors import ToolkitError
from runtime.assets import SAMPLE_IMAGE
from runtime.images import load_image
from runtime.serve.client import ServedModel
from runtime.serve.protocol import DEFAULT_SCORE_THRESHOLD, MODEL_NAME, encode_detections
from runtime.serve.repository import ServingOptions, local_repository, servable_metadata
from runtime.serve.server import TritonServer

DEFAULT_IMAGE = SAMPLE_IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def server_memory_mb(pid: int) -> float:
    """Resident memory (MB) of the server and every process of its group (the Python-backend stubs)."""
    total_kb = 0
    for status in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = status.read_text().rsplit(')', 1)[1].split()
            if int(fields[2]) != pid:  # fields[2]: the process group id
                continue
            for line in (status.parent / 'status').read_text().splitlines():
                if line.startswith('VmRSS:'):
                    total_kb += int(line.split()[1])
        except (OSError, IndexError, ValueError):  # a process that ended while it was read
            continue
    return total_kb / 1024


def load(url: str, image: np.ndarray, concurrency: int, duration_s: float,
         score_threshold: float) -> tuple[list[float], int]:
    """(latencies in seconds of the answered requests, errors) of `concurrency` clients sending
    `image` for duration_s seconds."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + duration_s

    def client():
        with ServedModel(url) as served:
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    served.predict([image], score_threshold=score_threshold)
                except ToolkitError:
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m runtime.serve.bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', type=Path, required=True, metavar='FILE', help='a .onnx or .engine')
    parser.add_argument('--image', type=Path, default=DEFAULT_IMAGE, help='the image every request sends')
    parser.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16], metavar='N')
    parser.add_argument('--duration', type=float, default=30.0, metavar='S',
                        help='seconds per concurrency (default: 30)')
    parser.add_argument('--max-batch', type=int, default=ServingOptions().max_batch, metavar='N')
    parser.add_argument('--instances', type=int, default=ServingOptions().instances, metavar='N')
    parser.add_argument('--score-thr', type=float, default=DEFAULT_SCORE_THRESHOLD, metavar='T',
                        help='score threshold of the requests (0 keeps every detection the model makes)')
    parser.add_argument('--protocol', choices=['http', 'grpc'], default='http')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        image = load_image(args.image)
        options = ServingOptions(max_batch=args.max_batch, instances=args.instances)
        with tempfile.TemporaryDirectory(prefix='yolact-bench-serve-') as workspace:
            repository = local_repository(args.model, servable_metadata(args.model), Path(workspace) / 'repository',
                                          options)
            http_port, grpc_port = free_port(), free_port()
            with TritonServer(repository, Path(workspace), http_port=http_port, grpc_port=grpc_port,
                              metrics_port=free_port()) as server:
                url = f'{args.protocol}://127.0.0.1:{http_port if args.protocol == "http" else grpc_port}/{MODEL_NAME}'
                with ServedModel(url) as served:
                    dets = served.predict([image], score_threshold=args.score_thr)[0]
                payload = sum(a.nbytes for a in encode_detections(dets).values())
                print(f'{args.model} on the bundled tritonserver ({args.protocol}), image {args.image.name} '
                      f'{image.shape[1]}x{image.shape[0]}, {len(dets)} detection(s), response tensors {payload} bytes; '
                      f'max batch {options.max_batch}, {options.instances} instance(s), {args.duration:g} s each')
                print('server MB: resident memory of tritonserver and its Python-backend stub(s) at the start '
                      'and at the end of each load')
                print(f'{"concurrency":>11} {"images/s":>9} {"p50 ms":>8} {"p99 ms":>8} {"errors":>7} '
                      f'{"server MB start":>15} {"server MB end":>13}')
                for concurrency in args.concurrency:
                    start_mb = server_memory_mb(server.process.pid)
                    latencies, errors = load(url, image, concurrency, args.duration, args.score_thr)
                    p50, p99 = (np.percentile(latencies, [50, 99]) * 1e3) if latencies else (float('nan'),) * 2
                    print(f'{concurrency:>11} {len(latencies) / args.duration:>9.1f} {p50:>8.1f} {p99:>8.1f} '
                          f'{errors:>7} {start_mb:>15.0f} {server_memory_mb(server.process.pid):>13.0f}', flush=True)
    except ToolkitError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
