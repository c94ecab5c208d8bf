"""Video in, annotated video out (cv2), around any backend: frames are read in batches, run through
runtime.pipeline.predict_batches, drawn with runtime.draw and written at the input's frame rate and size;
the written file is read back before it replaces anything."""

from __future__ import annotations

import shutil
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
from runtime.files import atomic_output, describe_os_error
from runtime.pipeline import batches
from runtime.pipeline import predict_batches

# Container suffix -> (FourCC, OpenCV writer backend) that OpenCV's wheels write without extra codecs.
# AVI goes through OpenCV's own Motion-JPEG writer, which keeps any frame size; FFmpeg's encoders
# store 4:2:0 chroma and round odd sizes down (321x239 -> 320x238), so MP4 (mp4v) takes even sizes only.
VIDEO_CODECS = {'.mp4': ('mp4v', cv2.CAP_FFMPEG), '.avi': ('MJPG', cv2.CAP_OPENCV_MJPEG)}
VIDEO_SUFFIXES = frozenset(VIDEO_CODECS)
# Frame rate written when a file does not state one (OpenCV reports 0).
_FALLBACK_FPS = 25.0


class VideoError(ToolkitError, ValueError):
    """A video that cannot be read or written; the message names the file and the fix."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frame_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of a video's frames as its header states, or None when OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()


def keeps_size(suffix: str, size: tuple[int, int]) -> bool:
    """Whether the writer of `suffix` stores frames of `size` (width, height) unchanged."""
    return suffix.lower() != '.mp4' or (size[0] % 2 == 0 and size[1] % 2 == 0)


def video_target(video: str | Path, out: str | Path) -> Path:
    """Where runtime.infer writes `video` annotated: out/NAME, or out/STEM.avi for an odd-sized
    .mp4, whose MP4 writer would shrink the frames by a pixel."""
    video = Path(video)
    size = frame_size(video) if video.is_file() else None
    if size is not None and not keeps_size(video.suffix, size):
        return Path(out) / f'{video.stem}.avi'
    return Path(out) / video.name


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

    The output is written to a temporary file in target's folder, read back (frame count and size)
    and renamed only then, so an interrupted run or a failed write (a full disk: OpenCV's writer
    does not report it) leaves no half-written video and keeps an earlier target. Raises VideoError
    for an unreadable source, an unsupported target suffix, an odd frame size for .mp4, or a target
    that cannot be written.
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
        if not keeps_size(target.suffix, size):
            raise VideoError(f'{target}: MP4 (mp4v) stores only even frame sizes, and {source} is {size[0]}x{size[1]}: '
                             'name the output .avi, which keeps any size')
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
            check_written(tmp, target, written, size)
    finally:
        capture.release()
    return written


def check_written(path: Path, target: Path, frames: int, size: tuple[int, int]) -> None:
    """VideoError unless the video file at `path` opens with `frames` frames of `size` (width,
    height): cv2.VideoWriter.write returns nothing and ignores a failed write (a full disk)."""
    capture = cv2.VideoCapture(str(path))
    try:
        stored = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        stored_size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        capture.release()
    if stored != frames or stored_size != size:
        try:
            free = f'{shutil.disk_usage(path.parent).free / 1e6:.0f} MB free there'
        except OSError as e:
            free = describe_os_error(e)
        raise VideoError(f'cannot write {target}: the file written holds {stored} of {frames} frames at '
                         f'{stored_size[0]}x{stored_size[1]} (is the disk full? {free}); '
                         f'{"the earlier file is kept" if target.exists() else "nothing was written"}')


def _write_annotated(backend, capture, tmp, target, fps, size, total, *, batch, score_threshold, class_names,
                     progress) -> int:
    fourcc, api = VIDEO_CODECS[target.suffix.lower()]
    writer = cv2.VideoWriter(str(tmp), api, cv2.VideoWriter_fourcc(*fourcc), fps, size)
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


def run_videos(args, videos: Sequence[tuple[Path, Path]], backend_options: dict) -> int:
    """runtime.infer's video path: annotate each (video, target) pair (targets from video_target),
    with args.model / args.backend / args.batch / args.score_thr. Returns the exit status (0 when
    every video was written, 1 otherwise); problems are printed, not raised."""
    try:
        backend = open_backend(args.model, args.backend, **backend_options)
    except ToolkitError as e:  # BackendError, CheckpointError, MetadataError: each names the fix
        print(f'error: {e}', file=sys.stderr)
        return 1
    status = 0
    with backend:
        for video, target in videos:
            if target.suffix != Path(video).suffix:
                print(f'note: {video} has an odd frame size, which MP4 cannot store: writing {target}',
                      file=sys.stderr)
            try:
                frames = annotate_video(backend, video, target, batch=args.batch, score_threshold=args.score_thr)
            except (VideoError, BackendError) as e:
                print(f'error: {e}', file=sys.stderr)
                status = 1
                continue
            print(f'{frames} annotated frame(s) in {target}')
    return status
