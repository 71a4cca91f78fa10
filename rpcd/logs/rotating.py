"""The log file on disk: append-only, rotated by size into numbered backups."""

from __future__ import annotations

import os
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


class RotatingFile:
    """An append-only file rotated by size: PATH, PATH.1 (newest backup) ... PATH.N.

    Thread-safe. A failing write never raises: the error is reported on stderr once, lines
    are dropped (and counted) until a retry succeeds, then a line in the log says how many.
    """

    retry_interval = 1.0

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = _allocate_lock()
        self._fd: int | None = None
        self._size = 0
        self._error: str | None = None  # set while writes fail
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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._size = os.fstat(fd).st_size
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

    def _write(self, data: bytes) -> tuple[int, str] | None:
        lost = None
        if self._fd is None and self._error is None:  # closed
            return None
        if self._error is not None:
            if time.monotonic() < self._retry_at:
                self._dropped += data.count(b"\n")
                return None
            try:
                self._open()
            except OSError as exc:
                return self._failed(exc, data.count(b"\n"))
            if self._partial:
                data = b"\n" + data
        try:
            while len(data) > self.max_bytes - self._size:
                cut = data.rfind(b"\n", 0, self.max_bytes - self._size) + 1
                if not cut:  # not even the first line fits
                    if self._size:
                        self._rotate()
                        continue
                    cut = data.find(b"\n") + 1 or len(data)  # longer than max_bytes: on its own
                self._put(data[:cut])
                data = data[cut:]
                if data:
                    self._rotate()
            self._put(data)
        except OSError as exc:
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

    def _failed(self, exc: OSError, dropped: int) -> None:
        """Note a write error (reported once), count the dropped lines, retry later."""
        if self._error is None:
            stderr(f"cannot write log file {self.path}: {exc.strerror}; dropping lines")
            self._error = exc.strerror or str(exc)
        self._dropped += dropped
        self._retry_at = time.monotonic() + self.retry_interval
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _rotate(self) -> None:
        path = self.path
        try:
            for n in range(self.backups - 1, 0, -1):
                if os.path.exists(f"{path}.{n}"):
                    os.replace(f"{path}.{n}", f"{path}.{n + 1}")
            if self.backups:
                os.replace(path, f"{path}.1")
            else:
                os.unlink(path)
        except OSError as exc:
            # Keep writing to the current file; try again after another max_bytes.
            stderr(f"cannot rotate log file {path}: {exc.strerror}")
            self._size = 0
            return
        old, self._fd = self._fd, None
        os.close(old)
        self._open()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
