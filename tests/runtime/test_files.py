"""runtime.files: atomic writes leave the old file or the new one, never a partial one or a stray temporary."""

import hashlib
import os

import pytest

from runtime.files import OutputError, atomic_output, check_writable, file_sha256, write_atomic
from tests.faults import disk_full_after


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


@pytest.mark.battery
def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'old')
    with disk_full_after(1000), pytest.raises(OutputError, match=f'cannot write {target}: File too large'):
        write_atomic(target, bytes(5000))
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['out.bin']


@pytest.mark.battery
def test_unwritable_paths_are_refused_before_writing(tmp_path):
    (tmp_path / 'a_file').write_bytes(b'')
    with pytest.raises(OutputError, match='is a folder'):
        check_writable(tmp_path, '--metrics')
    with pytest.raises(OutputError, match='lies under .*a_file, which is a file'):
        write_atomic(tmp_path / 'a_file' / 'sub' / 'out.json', b'{}')
    assert check_writable(tmp_path / 'new' / 'out.json') == tmp_path / 'new' / 'out.json'
    assert not (tmp_path / 'new').exists()  # checking creates nothing


@pytest.mark.battery
@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / 'ro'
    folder.mkdir(mode=0o555)
    with pytest.raises(OutputError, match='is not writable'):
        check_writable(folder / 'out.json')
