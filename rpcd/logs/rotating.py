"""The log file on disk: append-only, rotated by size into numbered backups."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time

import gevent.monkey
from twisted.logger import Logger

# A real lock even under monkey-patching: OS threads (Twisted's thread pool, a method's own
# thread) may write too, and a gevent lock cannot be shared with them.
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")

log = Logger(namespace="rpcd.logs")


class LogError(Exception):
    """The log file cannot be used; the message is one line naming the file and the reason."""


def stderr(message: str) -> None:
    """Say something about the log on fd 2 directly: twistd points sys.stderr at the log."""
    try:
        os.write(2, f"rpcd: {message}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _holder(fd: int) -> int | None:
    """The pid holding a POSIX write lock on the file, if any (F_GETLK)."""
    query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    kind, _, _, _, pid = struct.unpack("hhqqi", answer)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


class RotatingFile:
    """An append-only file rotated by size: PATH, PATH.1 (newest backup) ... PATH.N.

    Thread-safe. A failing write never raises: the error is reported on stderr once, lines
    are dropped (and counted) until a retry succeeds, then a line in the log says how many.
    A failing rotation is reported once too, and once more when rotating works again.

    The file is locked: an exclusive `flock` (kept across twistd's daemonizing fork) so a
    second daemon on the same file refuses to start, plus a POSIX lock retaken at each
    write (closing any descriptor of the file drops it), through which the second one
    learns the pid to name. With
    `shared=True` several processes (the `--processes` workers and their supervisor) write
    one file: each holds a shared `flock`, rotation is serialised with a POSIX lock, and
    each notices at its next write that another one rotated.

    PATH is opened without following a symbolic link and must be a regular file. Whether
    it still names the open file is checked at each write (one `stat`): a log deleted or
    moved away is reopened, never written past its end unseen.
    """

    retry_interval = 1.0

    def __init__(self, path: str, max_bytes: int, backups: int, *, shared: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.shared = shared
        self._lock = _allocate_lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._size = 0
        self._error: str | None = None  # set while writes fail
        self._rotate_error: str | None = None  # set while rotations fail
        self._retry_at = 0.0
        self._dropped = 0
        self._partial = False  # the file ends in the middle of a line
        try:
            self._open()
        except OSError as exc:
            raise LogError(f"cannot open log file {self.path}: {exc.strerror}") from None
        if not os.access(os.path.dirname(self.path), os.W_OK | os.X_OK):
            os.close(self._fd)
            raise LogError(f"cannot rotate log file {self.path}: its directory is not writable")

    def _open(self) -> None:
        """Open PATH for appending: a regular file, not through a link, locked (LogError if not)."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LogError(f"refusing log file {self.path}: it is a symbolic link") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LogError(f"refusing log file {self.path}: not a regular file")
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(fd)
                held = f"pid {pid}" if pid else "another process"
                raise LogError(
                    f"log file {self.path} is in use by {held}: give each daemon its own log_file"
                ) from None
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                self._partial = True  # torn by a crash mid-write: the next line starts afresh
        except BaseException:
            os.close(fd)
            raise
        self._size = st.st_size
        self._identity = (st.st_dev, st.st_ino)
        self._fd = fd

    def write(self, data: bytes) -> None:
        """Append whole lines, rotating between lines whenever the next would not fit."""
        with self._lock:
            lost = self._write(data)
        if lost:
            log.warn(
                "{count} log lines were lost while the log could not be written ({error})",
                count=lost[0],
                error=lost[1],
            )

    def _moved(self) -> bool:
        """Whether PATH no longer names the open file (deleted, moved, rotated by a sibling)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if (st.st_dev, st.st_ino) != self._identity:
            return True
        if self.shared:
            self._size = st.st_size  # the other writers' lines count too
        return False

    def _mark(self) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # held by the process that forked us, until it exits: the flock guards

    def _reopen(self) -> None:
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        self._partial = False
        self._open()

    def _write(self, data: bytes) -> tuple[int, str] | None:
        lost = None
        if self._fd is None and self._error is None:  # closed
            return None
        if self._error is not None:
            if time.monotonic() < self._retry_at:
                self._dropped += data.count(b"\n")
                return None
        try:
            if self._error is not None or self._moved():
                self._reopen()
            if not self.shared:
                self._mark()
            if self._partial:
                data = b"\n" + data
                self._partial = False
            while len(data) > self.max_bytes - self._size:
                cut = data.rfind(b"\n", 0, self.max_bytes - self._size) + 1
                if not cut:  # not even the first line fits
                    if self._size:
                        if self._rotate():
                            continue
                        cut = len(data)  # cannot rotate: keep writing this file
                    else:
                        cut = data.find(b"\n") + 1 or len(data)  # longer than max_bytes: alone
                self._put(data[:cut])
                data = data[cut:]
                if data:
                    self._rotate()
            self._put(data)
        except (OSError, LogError) as exc:
            return self._failed(exc, data.count(b"\n"))
        if self._error is not None:
            lost, self._error, self._dropped = (self._dropped, self._error), None, 0
            stderr(f"writing log file {self.path} again")
        return lost

    def _put(self, data: bytes) -> None:
        while data:
            written = os.write(self._fd, data)
            self._size += written
            self._partial = written < len(data) or data[-1:] != b"\n"
            data = data[written:]

    def _failed(self, exc: Exception, dropped: int) -> None:
        """Note a write error (reported once), count the dropped lines, retry later."""
        if self._error is None:
            if isinstance(exc, OSError):
                self._error = exc.strerror or str(exc)
                stderr(f"cannot write log file {self.path}: {self._error}; dropping lines")
            else:  # LogError: the message names the file already
                self._error = str(exc).split(": ", 1)[-1]
                stderr(f"{exc}; dropping lines")
        self._dropped += dropped
        self._retry_at = time.monotonic() + self.retry_interval
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _rotate(self) -> bool:
        """Shift the backups and start a new file; False (reported once) if that failed.

        Nothing is renamed unless PATH is still the open file, and the first rename is the
        one most likely to fail, so a failed rotation never loses a backup.
        """
        if self.shared:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)  # one sibling rotates; the rest reopen
        try:
            if self._moved():
                self._reopen()
                return True
            self._shift()
        except OSError as exc:
            # Keep writing to the current file; try again after another max_bytes.
            if self._rotate_error is None:
                self._rotate_error = exc.strerror or str(exc)
                stderr(f"cannot rotate log file {self.path}: {self._rotate_error}")
            self._size = 0
            return False
        finally:
            if self.shared and self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        if self._rotate_error is not None:
            self._rotate_error = None
            stderr(f"rotating log file {self.path} again")
        self._reopen()
        return True

    def _shift(self) -> None:
        path = self.path
        if self.backups:
            # If the directory is read-only the first rename fails: nothing has moved yet.
            for n in range(self.backups - 1, 0, -1):
                if os.path.lexists(f"{path}.{n}"):
                    os.replace(f"{path}.{n}", f"{path}.{n + 1}")
            os.replace(path, f"{path}.1")
        else:
            os.unlink(path)

    def reopen(self) -> None:
        """Open PATH afresh (logrotate moved the file away): SIGUSR1's job."""
        with self._lock:
            if self._fd is None and self._error is None:  # closed
                return
            try:
                self._reopen()
            except (OSError, LogError) as exc:
                self._failed(exc, 0)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
