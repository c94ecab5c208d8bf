"""Video in, annotated video out, around a backend double that reports one fixed instance per frame
(the video code's job is frames, batching and files; backends are tested on their own)."""

import cv2
import numpy as np
import pytest

from yolact_torch.config import metadata_from_config, yolact_tiny
from runtime.backends.base import Backend
from runtime.video import VideoError, annotate_video, read_frames, video_target

FRAME_HW = (96, 128)
# The instance the double reports, relative xyxy: the left half of the frame's middle band.
BOX = (0.1, 0.25, 0.5, 0.75)


class OneInstanceBackend(Backend):
    """Every image gets one detection of class 0 with score 0.9 and a mask filling BOX."""

    name = 'one-instance'

    def __init__(self):
        super().__init__('one-instance')
        self.batch_sizes = []

    def _load_impl(self):
        self.metadata = metadata_from_config(yolact_tiny)
        self.max_batch = None

    def _infer_impl(self, images):
        batch, max_dets = len(images), self.metadata.max_dets
        self.batch_sizes.append(batch)
        out = {'num_dets': np.ones(batch, np.int32), 'boxes': np.zeros((batch, max_dets, 4), np.float32),
               'scores': np.zeros((batch, max_dets), np.float32), 'classes': np.zeros((batch, max_dets), np.int32),
               'masks': np.zeros((batch, max_dets, 80, 80), np.float32)}
        out['boxes'][:, 0] = BOX
        out['scores'][:, 0] = 0.9
        out['masks'][:, 0] = 1.0
        return out

    def _close_impl(self):
        pass


def write_video(path, frames, fps=12.0):
    fourcc = {'.mp4': 'mp4v', '.avi': 'MJPG'}[path.suffix]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, FRAME_HW[::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = list(read_frames(capture))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.fixture
def gray_frames():
    return [np.full((*FRAME_HW, 3), 60 + 10 * i, np.uint8) for i in range(7)]


@pytest.mark.parametrize('suffix', ['.mp4', '.avi'])
def test_annotated_video_keeps_frames_size_and_rate(tmp_path, gray_frames, suffix):
    source = write_video(tmp_path / f'in{suffix}', gray_frames)
    target = tmp_path / 'out' / f'annotated{suffix}'
    with OneInstanceBackend() as backend:
        assert annotate_video(backend, source, target, batch=3, score_threshold=0.3, progress=False) == 7
        assert backend.batch_sizes == [3, 3, 1]
    frames, fps = read_video(target)
    assert len(frames) == 7 and frames[0].shape == (*FRAME_HW, 3) and fps == pytest.approx(12.0)
    height, width = FRAME_HW
    inside = (slice(int(0.4 * height), int(0.6 * height)), slice(int(0.2 * width), int(0.4 * width)))
    outside = (slice(None), slice(int(0.7 * width), None))
    for original, annotated in zip(gray_frames, frames):
        # The mask tint changes the box's inside; the right part of the frame stays as it was.
        assert np.abs(annotated[inside].astype(int) - original[inside]).mean() > 20
        assert np.abs(annotated[outside].astype(int) - original[outside]).mean() < 10  # codec loss only
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_batch_size_does_not_change_the_output(tmp_path, gray_frames):
    source = write_video(tmp_path / 'in.avi', gray_frames)
    with OneInstanceBackend() as backend:
        annotate_video(backend, source, tmp_path / 'one.avi', batch=1, score_threshold=0.3, progress=False)
        annotate_video(backend, source, tmp_path / 'four.avi', batch=4, score_threshold=0.3, progress=False)
    one, _ = read_video(tmp_path / 'one.avi')
    four, _ = read_video(tmp_path / 'four.avi')
    np.testing.assert_array_equal(np.stack(one), np.stack(four))


def test_score_threshold_applies(tmp_path, gray_frames):
    source = write_video(tmp_path / 'in.avi', gray_frames)
    with OneInstanceBackend() as backend:
        annotate_video(backend, source, tmp_path / 'none.avi', batch=2, score_threshold=0.95, progress=False)
    frames, _ = read_video(tmp_path / 'none.avi')
    for original, annotated in zip(gray_frames, frames):
        assert np.abs(annotated.astype(int) - original).mean() < 4  # nothing drawn


def test_bad_videos_raise_named_errors(tmp_path, gray_frames):
    not_a_video = tmp_path / 'notes.mp4'
    not_a_video.write_text('not a video')
    good = write_video(tmp_path / 'in.avi', gray_frames)
    with OneInstanceBackend() as backend:
        with pytest.raises(VideoError, match='cannot open|no frame'):
            annotate_video(backend, not_a_video, tmp_path / 'x.mp4', score_threshold=0.3, progress=False)
        with pytest.raises(VideoError, match='no such video'):
            annotate_video(backend, tmp_path / 'missing.mp4', tmp_path / 'x.mp4', score_threshold=0.3, progress=False)
        with pytest.raises(VideoError, match='.mkv'):
            annotate_video(backend, good, tmp_path / 'x.mkv', score_threshold=0.3, progress=False)
        blocker = tmp_path / 'file'
        blocker.write_text('')
        with pytest.raises(VideoError, match='cannot write'):
            annotate_video(backend, good, blocker / 'x.avi', score_threshold=0.3, progress=False)
    assert not (tmp_path / 'x.mp4').exists() and not (tmp_path / 'x.mkv').exists()


REAL_VIDEO_WRITER = cv2.VideoWriter


class DiskFullWriter:
    """cv2.VideoWriter on a disk that fills after `room` frames: later writes vanish without a word,
    as OpenCV's do on a full disk."""

    room = 3

    def __init__(self, *args):
        self.writer, self.frames = REAL_VIDEO_WRITER(*args), 0

    def isOpened(self):
        return self.writer.isOpened()

    def write(self, frame):
        self.frames += 1
        if self.frames <= self.room:
            self.writer.write(frame)

    def release(self):
        self.writer.release()


@pytest.mark.battery
@pytest.mark.parametrize('suffix', ['.mp4', '.avi'])
def test_a_failed_write_keeps_the_earlier_video(tmp_path, gray_frames, monkeypatch, suffix):
    source = write_video(tmp_path / f'in{suffix}', gray_frames)
    target = tmp_path / 'out' / f'annotated{suffix}'
    with OneInstanceBackend() as backend:
        annotate_video(backend, source, target, batch=2, score_threshold=0.3, progress=False)
        good = target.read_bytes()
        monkeypatch.setattr(cv2, 'VideoWriter', DiskFullWriter)
        with pytest.raises(VideoError, match=r'cannot write .*holds 3 of 7 frames .*disk full.*earlier file is kept'):
            annotate_video(backend, source, target, batch=2, score_threshold=0.3, progress=False)
    assert target.read_bytes() == good
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.battery
def test_odd_sized_videos_keep_their_size(tmp_path):
    odd = [np.full((239, 321, 3), 50 + 20 * i, np.uint8) for i in range(3)]
    source = tmp_path / 'odd.avi'
    writer = cv2.VideoWriter(str(source), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (321, 239))
    for frame in odd:
        writer.write(frame)
    writer.release()
    assert video_target(source, tmp_path / 'out') == tmp_path / 'out' / 'odd.avi'
    with OneInstanceBackend() as backend:
        assert annotate_video(backend, source, tmp_path / 'out' / 'odd.avi', score_threshold=0.3, progress=False) == 3
        # MP4's writer would store 320x238: refused with the fix, and runtime.infer writes .avi instead.
        with pytest.raises(VideoError, match=r'MP4 \(mp4v\) stores only even frame sizes.*321x239.*\.avi'):
            annotate_video(backend, source, tmp_path / 'out' / 'odd.mp4', score_threshold=0.3, progress=False)
    frames, _ = read_video(tmp_path / 'out' / 'odd.avi')
    assert len(frames) == 3 and frames[0].shape == (239, 321, 3)
    odd_mp4 = tmp_path / 'odd.mp4'
    odd_mp4.write_bytes(source.read_bytes())  # an AVI named .mp4: OpenCV reads it by its content
    assert video_target(odd_mp4, tmp_path / 'out') == tmp_path / 'out' / 'odd.avi'
    assert video_target(write_video(tmp_path / 'even.mp4', odd[:0]), tmp_path / 'out') == tmp_path / 'out' / 'even.mp4'
