"""runtime.files: atomic writes leave the old file or the new one, never a partial one or a stray temporary."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.files import OutputError, atomic_output, check_writable, file_sha256, temporary_name, write_atomic
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
def test_temporaries_of_killed_runs_are_removed_when_the_file_is_next_written(tmp_path):
    target = tmp_path / 'dets.json'
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True, check=True)
    stale = temporary_name(target).with_name(f'.dets.json.{int(dead.stdout)}.0123abcd.tmp')
    stale.write_bytes(b'left by kill -9')
    old = temporary_name(target)  # this live process's pid, but older than any write takes
    old.write_bytes(b'')
    os.utime(old, (0, 0))
    live = temporary_name(target)  # a writer still at work (this process)
    live.write_bytes(b'')
    other = tmp_path / '.dets.json.notes'  # not a temporary of ours
    other.write_bytes(b'')
    of_another_output = stale.with_name(stale.name.replace('dets.json', 'frame.png'))
    of_another_output.write_bytes(b'')
    write_atomic(target, b'[]')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


@pytest.mark.battery
def test_unwritable_paths_are_named_before_the_work(tmp_path, monkeypatch):
    (tmp_path / 'a_file').write_text('')
    (tmp_path / 'a_folder').mkdir()
    with pytest.raises(OutputError, match='a_folder is a folder: name a file'):
        check_writable(tmp_path / 'a_folder', '--json')
    with pytest.raises(OutputError, match='a_file, which is a file, not a folder'):
        check_writable(tmp_path / 'a_file' / 'sub' / 'dets.json', '--json')
    assert check_writable(tmp_path / 'new' / 'deeper' / 'dets.json', '--json').name == 'dets.json'
    # Tests run as root, which writes anywhere: a read-only folder is what os.access reports.
    monkeypatch.setattr(os, 'access', lambda path, mode: Path(path) != tmp_path / 'a_folder')
    with pytest.raises(OutputError, match='a_folder is not writable'):
        check_writable(tmp_path / 'a_folder' / 'dets.json', '--json')


@pytest.mark.battery
def test_an_output_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(OutputError, match='--out .*a_file is a file, not a folder'):
        check_writable(tmp_path / 'a_file', '--out', folder=True)
    with pytest.raises(OutputError, match='a_file, which is a file, not a folder'):
        check_writable(tmp_path / 'a_file' / 'annotated', '--out', folder=True)
    assert check_writable(tmp_path / 'new', '--out', folder=True) == tmp_path / 'new'


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
    with pytest.raises(OutputError, match='a_file, which is a file, not a folder'):
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
