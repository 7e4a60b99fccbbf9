"""The lock a run holds on its folder, and writes that reach the disk (finetune/files.py)."""
from __future__ import annotations

import json
import os
import threading

import pytest

from finetune.files import LOCK_FILE, FileLock, FolderBusyError, FolderLock, is_locked, sync_tree


def test_a_held_lock_refuses_a_second_holder_in_this_process_and_in_another_thread(tmp_path):
    first = FolderLock(str(tmp_path), "output_dir='out'").acquire()
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert record['pid'] == os.getpid() and record['host'] and record['started']
    with pytest.raises(FolderBusyError, match=rf"output_dir='out' is in use by another fit \(process {os.getpid()}"):
        FolderLock(str(tmp_path), "output_dir='out'").acquire()
    refused = []

    def other():
        try:
            FolderLock(str(tmp_path)).acquire()
        except FolderBusyError as exc:
            refused.append(str(exc))
    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(refused) == 1
    assert is_locked(str(tmp_path / LOCK_FILE))
    first.release()
    assert not (tmp_path / LOCK_FILE).exists() and not is_locked(str(tmp_path / LOCK_FILE))
    with FolderLock(str(tmp_path)) as again:  # free again once given back
        assert again.held and again.took_over is None
    assert not again.held


def test_a_lock_file_nobody_holds_is_taken_over_and_says_whose_it_was(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({'pid': 4242, 'host': 'elsewhere', 'started': 'then'}))
    lock = FolderLock(str(tmp_path)).acquire()
    assert lock.took_over == {'pid': 4242, 'host': 'elsewhere', 'started': 'then'}
    assert json.loads((tmp_path / LOCK_FILE).read_text())['pid'] == os.getpid()
    lock.release()


def test_a_lock_file_of_any_name_and_a_damaged_one(tmp_path):
    path = tmp_path / 'thing.lock'
    path.write_bytes(b'\xff\x00 not json')
    lock = FileLock(str(path)).acquire()
    assert lock.took_over is None  # unreadable: nothing to report, still taken
    lock.release()
    assert not path.exists()


def test_sync_tree_syncs_every_file_and_folder(tmp_path, monkeypatch):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'x.bin').write_bytes(b'1')
    (tmp_path / 'y.json').write_text('{}')
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(os.readlink(f'/proc/self/fd/{fd}')) or real(fd))
    sync_tree(str(tmp_path))
    assert set(synced) == {str(tmp_path / 'a' / 'x.bin'), str(tmp_path / 'y.json'), str(tmp_path / 'a'),
                           str(tmp_path)}
    assert synced.index(str(tmp_path / 'a' / 'x.bin')) < synced.index(str(tmp_path / 'a')) < synced.index(
        str(tmp_path))


def test_a_text_file_is_replaced_whole_and_synced_before_its_rename(tmp_path, monkeypatch):
    from finetune.files import write_text_atomically
    target = tmp_path / 'meta.json'
    target.write_text('old')
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
                        or real_fsync(fd))
    monkeypatch.setattr(os, 'replace', lambda a, b: events.append(('replace', b)) or real_replace(a, b))
    write_text_atomically(str(target), '{"new": 1}')
    assert target.read_text() == '{"new": 1}'
    kinds = [kind for kind, _ in events]
    assert kinds == ['fsync', 'replace', 'fsync'] and events[1][1] == str(target) and events[2][1] == str(tmp_path)

    def broken(a, b):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', broken)
    with pytest.raises(OSError):
        write_text_atomically(str(target), 'half')
    assert target.read_text() == '{"new": 1}' and os.listdir(tmp_path) == ['meta.json']
