"""Files a run writes, made safe: a lock on a folder one run writes at a time, and writes that reach the disk.

A leaf module (it imports nothing else of the package): artifacts, checkpoints, exports and synthesis output
all use it, and the names of a saved model's files live here so that any of them can name those files.

- :class:`FolderLock` — ``<folder>/.finetune.lock`` holds the writer's process id, host and start time while
  an advisory lock (``flock``) is held on it. The kernel drops that lock when its process ends however it
  ends, so a lock file left by a killed run is seen as stale and taken over, and a process id reused by
  another program never keeps a folder locked.
- :func:`sync_tree` / :func:`sync_folder` — ``fsync`` of every file in a folder and of the folders
  themselves, so that a rename that publishes a folder never publishes files still only in the page cache;
  :func:`write_text_atomically` — the same for one file.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any

try:  # POSIX; elsewhere the lock falls back to the process id written in the file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = '.finetune.lock'
#: the files of a saved model (see :mod:`finetune.artifacts`): its JSON config and its safetensors weights
CONFIG_FILE = 'finetune_config.json'
WEIGHTS_FILE = 'model.safetensors'


class FolderBusyError(RuntimeError):
    """Another live process (or another run in this process) holds the folder's lock; the message names it."""


class FileLock:
    """An exclusive lock held through the lock file at `path`: :meth:`acquire` before writing, :meth:`release`
    after.

    `what` names what is locked in messages (e.g. ``"output_dir='out'"``). A second acquire of a held lock, from
    this process or another, raises :class:`FolderBusyError` naming the holder; a lock file whose holder is
    gone is taken over and :attr:`took_over` says whose it was."""

    def __init__(self, path: str, what: str | None = None):
        self.path = os.fspath(path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.what = what or repr(self.path)
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FileLock:
        """Take the lock (the folder is created if needed); returns self. Raises FolderBusyError."""
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(5):  # the file may be removed by its releasing holder between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                holder = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if holder is not None:
                os.close(fd)
                raise FolderBusyError(self._busy_message(holder))
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                previous = _read_holder_fd(fd)
                if previous:
                    self.took_over = previous
                self._write_holder(fd)
                self._fd = fd
                return self
            os.close(fd)
        raise FolderBusyError(f'{self.what}: could not take the lock {self.path} (it keeps being replaced); '
                              f'another run is starting there.')

    def _lock(self, fd: int) -> dict[str, Any] | None:
        """Lock `fd`; None on success, else what the file says of its holder."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                return _read_holder_fd(fd) or {}
        holder = _read_holder_fd(fd)  # no flock: the process id decides
        if holder and holder.get('host') == socket.gethostname() and _alive(holder.get('pid')):
            return holder
        return None

    def _write_holder(self, fd: int) -> None:
        record = {'pid': os.getpid(), 'host': socket.gethostname(),
                  'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)

    def _busy_message(self, holder: dict[str, Any]) -> str:
        who = (f'process {holder.get("pid")} on {holder.get("host")}, since {holder.get("started")}'
               if holder else 'another process')
        return (f'{self.what} is in use by another fit ({who}; lock file {self.path}). Two runs writing one '
                f'folder would overwrite each other\'s checkpoints and model: wait for that run to end, or choose '
                f'another folder.')

    def release(self) -> None:
        """Give the lock back and remove the lock file (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)  # while still locked: nobody can take over a file we then remove
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class FolderLock(FileLock):
    """The lock of a whole folder one run writes (``<folder>/.finetune.lock``)."""

    def __init__(self, folder: str, what: str | None = None):
        super().__init__(os.path.join(os.fspath(folder), LOCK_FILE), what or repr(os.fspath(folder)))


def is_locked(path: str) -> bool:
    """Whether a live process holds the lock file at `path` (False when there is none). Only looks: the file is
    neither created nor written."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: take it as held
    try:
        if fcntl is None:
            holder = _read_holder_fd(fd)
            return bool(holder and holder.get('host') == socket.gethostname() and _alive(holder.get('pid')))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_holder_fd(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode()) if data else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def sync_folder(path: str) -> None:
    """``fsync`` a folder's own entry list (a rename or a new file in it reaches the disk); best effort where the
    platform cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_file(path: str) -> None:
    """``fsync`` one file's contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: str) -> None:
    """``fsync`` every file under `folder`, then every folder, deepest first: all of it is on the disk before a
    rename publishes it."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                sync_file(path)
        sync_folder(root)


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, synced and renamed into place (the file is
    then whole or as it was, and on the disk), then sync the folder."""
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    sync_folder(os.path.dirname(os.path.abspath(path)))
