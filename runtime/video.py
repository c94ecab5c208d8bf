"""Video in, annotated video out (cv2), around any backend: frames are read in batches, run through
runtime.pipeline.predict_batches, drawn with runtime.draw and written at the input's frame rate and size."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from runtime.backends import BackendError, open_backend
from runtime.backends.base import Backend
from runtime.draw import draw_detections
from runtime.errors import ToolkitError
from runtime.files import atomic_output
from runtime.pipeline import batches
from runtime.pipeline import predict_batches

# Container suffix -> the FourCC OpenCV's bundled FFmpeg writes into it without extra codecs.
VIDEO_CODECS = {'.mp4': 'mp4v', '.avi': 'MJPG'}
VIDEO_SUFFIXES = frozenset(VIDEO_CODECS)
# Frame rate written when a file does not state one (OpenCV reports 0).
_FALLBACK_FPS = 25.0


class VideoError(ToolkitError, ValueError):
    """A video that cannot be read or written; the message names the file and the fix."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The video's uint8 [H, W, 3] BGR frames until it ends (or a frame cannot be decoded)."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def annotate_video(backend: Backend, source: str | Path, target: str | Path, *, batch: int = 1,
                   score_threshold: float, class_names: Sequence[str] | None = None,
                   progress: bool = True) -> int:
    """Detect instances in every frame of `source` and write the annotated frames to `target`
    (.mp4 or .avi; same size and frame rate). Returns the number of frames written.

    The output is written to a temporary file in target's folder and renamed when complete, so
    an interrupted run leaves no half-written video. Raises VideoError for an unreadable source,
    an unsupported target suffix or a target that cannot be written.
    """
    source, target = Path(source), Path(target)
    if target.suffix.lower() not in VIDEO_CODECS:
        raise VideoError(f'{target}: cannot write {target.suffix or "files without a suffix"}; '
                         f'name the output {" or ".join(sorted(VIDEO_SUFFIXES))}')
    if batch < 1:
        raise VideoError(f'batch must be at least 1, got {batch}')
    if not source.is_file():
        raise VideoError(f'{source}: no such video file')
    capture = cv2.VideoCapture(str(source))
    try:
        if not capture.isOpened():
            raise VideoError(f'{source}: OpenCV cannot open this video (corrupt or unsupported codec)')
        fps = capture.get(cv2.CAP_PROP_FPS) or _FALLBACK_FPS
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # an estimate; 0 when unknown
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VideoError(f'cannot write {target}: {e.strerror or e} (choose another --out)') from None
        # The temporary name keeps the suffix: OpenCV picks the container by it.
        with atomic_output(target, suffix=target.suffix) as tmp:
            written = _write_annotated(backend, capture, tmp, target, fps, size, total, batch=batch,
                                       score_threshold=score_threshold, class_names=class_names, progress=progress)
            if written == 0:
                raise VideoError(f'{source}: no frame could be decoded (empty or corrupt video)')
    finally:
        capture.release()
    return written


def _write_annotated(backend, capture, tmp, target, fps, size, total, *, batch, score_threshold, class_names,
                     progress) -> int:
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODECS[target.suffix.lower()]), fps, size)
    if not writer.isOpened():
        raise VideoError(f'cannot write {target}: OpenCV could not open a {target.suffix} writer there')
    names = backend.metadata.class_names if class_names is None else class_names
    written = 0
    try:
        with tqdm(total=total, unit='frame', desc=target.name, disable=not progress, file=sys.stderr) as bar:
            # Batches as a stream: the TensorRT backend overlaps them on its --streams.
            for frames, frame_detections in predict_batches(backend, batches(read_frames(capture), batch),
                                                            score_threshold=score_threshold):
                for frame, detections in zip(frames, frame_detections):
                    writer.write(draw_detections(frame, detections, names))
                written += len(frames)
                bar.update(len(frames))
    finally:
        writer.release()
    return written


def run_videos(args, videos: Sequence[Path], backend_options: dict) -> int:
    """runtime.infer's video path: annotate each video into args.out under its own name, with
    args.model / args.backend / args.batch / args.score_thr. Returns the exit status (0 when every
    video was written, 1 otherwise); problems are printed, not raised."""
    try:
        backend = open_backend(args.model, args.backend, **backend_options)
    except ToolkitError as e:  # BackendError, CheckpointError, MetadataError: each names the fix
        print(f'error: {e}', file=sys.stderr)
        return 1
    status = 0
    with backend:
        for video in videos:
            target = Path(args.out) / Path(video).name
            try:
                frames = annotate_video(backend, video, target, batch=args.batch, score_threshold=args.score_thr)
            except (VideoError, BackendError) as e:
                print(f'error: {e}', file=sys.stderr)
                status = 1
                continue
            print(f'{frames} annotated frame(s) in {target}')
    return status
