"""runtime.files: atomic writes leave the old file or the new one, never a partial one or a stray temporary."""

import hashlib

import pytest

from runtime.files import atomic_output, file_sha256, write_atomic


def test_write_atomic_creates_the_folder_and_replaces_the_file(tmp_path):
    target = tmp_path / 'sub' / 'out.bin'
    assert write_atomic(target, b'first') == target
    write_atomic(target, b'second')
    assert target.read_bytes() == b'second'
    assert [p.name for p in target.parent.iterdir()] == ['out.bin']


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / 'clip.mp4'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='writer failed'):
        with atomic_output(target, suffix='.mp4') as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == '.mp4' and tmp != target
            tmp.write_bytes(b'partial')
            raise RuntimeError('writer failed')
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['clip.mp4']


def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 5000  # over one 1 MiB read chunk
    path = write_atomic(tmp_path / 'data.bin', data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
