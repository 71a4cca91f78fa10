"""rpcd's own log: a twisted.logger observer on a size-rotated file, the stdlib `logging`
bridge, the per-call access line, and the tail reader and follower behind `getlog`.

Lines are `TIME LEVEL [NAMESPACE] MESSAGE` (UTC ISO-8601 with milliseconds), or one JSON
object per line with `--log-format json`. A message of several lines (a traceback) goes on
continuation lines that begin with a tab, so an entry is always the line with the time plus
the tab-led lines after it. Lines are buffered and written in batches (at most 0.1 s late);
`getlog` flushes first, so it reads everything logged so far.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import gevent
import gevent.monkey
import orjson
from gevent.event import Event
from twisted.logger import Logger, LogLevel, eventAsText, globalLogPublisher

LEVELS = ("debug", "info", "warn", "error", "critical")
_RANK = {LogLevel.levelWithName(name): rank for rank, name in enumerate(LEVELS)}
_RANK_BY_NAME = {name.encode(): rank for rank, name in enumerate(LEVELS)}
_INFO = _RANK[LogLevel.info]
_STDLIB_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)

ACCESS_NAMESPACE = "rpcd.access"
# Lines wait at most this long to be written, so a busy daemon writes many per system call.
# Access lines reach twistd's own observer (the terminal under `twistd -n`) in the same
# batches: its formatting costs ~30 us a line, more than a whole ping call.
FLUSH_INTERVAL = 0.1
# ... or until this many wait.
FLUSH_LINES = 1024
BLOCK = 65536
_FRACTION = [f".{n:03d}" for n in range(1000)]

# Real thread identity and locks even under monkey-patching: only another OS thread
# (Twisted's thread pool, a method's own thread) must take the locked, unbuffered path.
_get_ident = gevent.monkey.get_original("_thread", "get_ident")
_allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")

log = Logger()


class LogError(Exception):
    """The log file cannot be used; the message is one line naming the file and the reason."""


def _stderr(message: str) -> None:
    # fd 2 directly: twistd points sys.stderr at the log, which is what failed.
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
            log.warn("{count} log lines were lost while the log could not be written ({error})",
                     count=lost[0], error=lost[1])

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
            _stderr(f"writing log file {self.path} again")
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
            _stderr(f"cannot write log file {self.path}: {exc.strerror}; dropping lines")
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
            _stderr(f"cannot rotate log file {path}: {exc.strerror}")
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


class _StdlibBridge(logging.Handler):
    """Sends stdlib `logging` records into twisted.logger under the logger's name."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = LogLevel.critical
            for limit, candidate in zip(_STDLIB_LEVELS[1:], LEVELS, strict=False):
                if record.levelno < limit:
                    level = LogLevel.levelWithName(candidate)
                    break
            globalLogPublisher({
                "log_level": level, "log_namespace": record.name, "log_format": "{text}",
                "log_time": record.created, "log_source": None, "text": self.format(record),
            })
        except Exception:
            self.handleError(record)


class LogFile:
    """The observer that writes rpcd's log file: level filter, line format, buffer, rotation."""

    def __init__(
        self, path: str, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5,
        level: str = "info", fmt: str = "text",
    ) -> None:
        self.file = RotatingFile(path, max_bytes, backups)
        self.path = self.file.path
        self.backups = backups
        self.min_rank = LEVELS.index(level)
        self.json = fmt == "json"
        self._buffer: list[str | tuple] = []  # lines, and the facts of access lines
        self._timer: Any = None  # the pending flush
        self._changed: Event | None = None
        self._main = _get_ident()
        self._loop = gevent.get_hub().loop
        self._stamp: tuple[int, str] = (0, "")
        self._tick = 0
        self._tick_text = ""
        self._bridge = _StdlibBridge()
        self._root_level = logging.NOTSET
        self._started = False

    @property
    def logs_access(self) -> bool:
        """Whether access lines (info) pass the level filter at all."""
        return self.min_rank <= _INFO

    # -- starting and stopping -----------------------------------------------------------

    def start(self) -> None:
        """Observe every log event from now on (twistd's own observer stays), and stdlib logging."""
        global _current
        if self._started:
            return
        self._started = True
        globalLogPublisher.addObserver(self)
        root = logging.getLogger()
        self._root_level = root.level
        root.setLevel(_STDLIB_LEVELS[self.min_rank])
        root.addHandler(self._bridge)
        _current = self
        atexit.register(self.close)

    def close(self) -> None:
        """Stop observing and write out what is buffered."""
        global _current
        if self._started:
            self._started = False
            globalLogPublisher.removeObserver(self)
            root = logging.getLogger()
            root.removeHandler(self._bridge)
            root.setLevel(self._root_level)
            atexit.unregister(self.close)
        if _current is self:
            _current = None
        self.flush()
        self.file.close()

    # -- writing -------------------------------------------------------------------------

    def _time(self, when: float) -> str:
        second = int(when)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{stamp[1]}.{int((when - second) * 1000):03d}Z"

    def __call__(self, event: dict) -> None:
        try:
            if _RANK.get(event.get("log_level"), _INFO) < self.min_rank or "rpcd_written" in event:
                return
            line = self._format(event)
        except Exception as exc:  # an observer must never raise into the publisher
            line = f"{self._time(time.time())} error [rpcd.logs] unformattable event: {exc!r}\n"
        self._add(line)

    def _format(self, event: dict) -> str:
        fmt = event.get("log_format")
        text = None
        if fmt is not None and "log_failure" not in event:
            try:
                text = fmt.format_map(event)
            except Exception:
                text = None  # Twisted's own formatting knows more: {callable()}, bad keys
        if text is None:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False).rstrip("\n")
        level = event.get("log_level") or LogLevel.info
        return self._line(event.get("log_time") or time.time(), level.name,
                          event.get("log_namespace") or "-", text)

    def _line(
        self, when: float, level: str, namespace: str, text: str, extra: dict | None = None
    ) -> str:
        if self.json:
            obj = {"time": self._time(when), "level": level, "namespace": namespace,
                   "message": text}
            if extra:
                obj.update(extra)
            try:
                return orjson.dumps(obj).decode() + "\n"
            except TypeError:  # a lone surrogate: orjson refuses it
                obj["message"] = text.encode("utf-8", "backslashreplace").decode()
                return orjson.dumps(obj).decode() + "\n"
        if "\n" in text or "\r" in text:
            text = "\n\t".join(text.splitlines())
        return f"{self._time(when)} {level} [{namespace}] {text}\n"

    def _add(self, line: str) -> None:
        if _get_ident() != self._main:
            self.file.write(line.encode("utf-8", "backslashreplace"))
            return
        buffer = self._buffer
        buffer.append(line)
        if self._timer is None:
            self._flush_soon()
        elif len(buffer) >= FLUSH_LINES:
            self.flush()

    def _flush_soon(self) -> None:
        self._timer = self._loop.timer(FLUSH_INTERVAL)
        self._timer.start(self.flush)

    def flush(self) -> None:
        """Write the buffered lines, echo the access lines, wake whoever follows the log."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        if self._buffer:
            lines, self._buffer = self._buffer, []
            access = []
            access_line = self._access_line
            for i, line in enumerate(lines):
                if type(line) is tuple:
                    lines[i] = line = access_line(line)
                    access.append(line)
            self.file.write("".join(lines).encode("utf-8", "backslashreplace"))
            if access:
                self._echo("".join(access))
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def changed(self) -> Event:
        """An event set at the next write: take it before reading, then wait on it."""
        if self._changed is None:
            self._changed = Event()
        return self._changed

    # -- the access line (the dispatcher's on_complete hook) ------------------------------

    def access(self, call: Any, response: Any, duration: float) -> None:
        """One line per finished call: peer, method, id, duration in ms, outcome.

        The hot path: it only notes the facts; `flush` formats them, in a batch. Calls run
        in the main thread's greenlets, so this is `_add` without the thread check.
        """
        try:
            request = call.request
            error = response.error
            buffer = self._buffer
            buffer.append((time.time(), getattr(call.sink, "peer", "-"), request.method,
                           request.id, duration, "ok" if error is None else error.code))
            if self._timer is None:
                self._flush_soon()
            elif len(buffer) >= FLUSH_LINES:
                self.flush()
        except Exception:  # a log line must never fail a call
            log.failure("cannot write an access line")

    def refused(self, request: Any, sink: Any, error: Any) -> None:
        """The access line of a call refused before it ran (no such method, server busy)."""
        try:
            self._add((time.time(), getattr(sink, "peer", "-"), request.method, request.id,
                       0.0, error.code))
        except Exception:
            log.failure("cannot write an access line")

    def _access_line(self, facts: tuple) -> str:
        now, peer, method, rid, duration, outcome = facts
        try:
            if not method.isprintable() or " " in method:
                method = orjson.dumps(method).decode()  # a client's name must not forge a line
            if type(rid) is not int:
                rid = "-" if rid is None else orjson.dumps(rid).decode()
            us = int(duration * 1e6)
            if self.json:
                extra = {"peer": peer, "method": facts[2], "id": facts[3], "ms": us / 1000,
                         "outcome": str(outcome)}
                text = f"{peer} {method} id={rid} {us // 1000}{_FRACTION[us % 1000]} ms {outcome}"
                return self._line(now, "info", ACCESS_NAMESPACE, text, extra)
            tick = int(now * 1000)
            if tick != self._tick:  # one time string per millisecond
                self._tick = tick
                self._tick_text = self._time(now)
            return (f"{self._tick_text} info [rpcd.access] {peer} {method} id={rid} "
                    f"{us // 1000}{_FRACTION[us % 1000]} ms {outcome}\n")
        except Exception as exc:
            return f"{self._time(now)} error [rpcd.logs] bad access line: {exc!r}\n"

    def _echo(self, lines: str) -> None:
        """Hand the access lines of this flush to the other observers, as one event."""
        globalLogPublisher({
            "log_level": LogLevel.info, "log_namespace": ACCESS_NAMESPACE,
            "log_format": "{calls}", "log_time": time.time(), "log_source": None,
            "calls": lines.rstrip("\n"),
            "rpcd_written": True,  # already in the file, line by line
        })


_current: LogFile | None = None


def current() -> LogFile | None:
    """The log file this process is writing, if any."""
    return _current


# -- reading -------------------------------------------------------------------------------


def parse_since(value: str) -> str:
    """An ISO-8601 time as the log writes times (UTC, milliseconds); naive times are UTC."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _open_files(path: str, backups: int) -> list[tuple[int, int]]:
    """Open the log and its backups, newest first: (fd, size). Never any other file."""
    opened: list[tuple[int, int]] = []
    seen = set()
    for name in [path, *(f"{path}.{n}" for n in range(1, backups + 1))]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in seen:  # renamed under us: already opened by its old name
            os.close(fd)
            continue
        seen.add((st.st_dev, st.st_ino))
        opened.append((fd, st.st_size))
    return opened


def _lines_backwards(fd: int, size: int) -> Iterator[bytes]:
    """The lines of a file from its end, read in blocks; a line may span many blocks."""
    pos = size
    carry: list[bytes] = []  # the end of a line whose start lies before `pos`, pieces reversed
    blocks = 0
    while pos > 0:
        blocks += 1
        if blocks % 64 == 0:
            gevent.sleep(0)  # a long search lets other calls run; the open files stay valid
        n = min(BLOCK, pos)
        pos -= n
        block = os.pread(fd, n, pos)
        if len(block) < n:  # the file shrank under us: what is left is not this file's end
            return
        parts = block.split(b"\n")
        if len(parts) == 1:
            carry.append(block)
            continue
        carry.append(parts[-1])
        carry.reverse()
        yield b"".join(carry)
        for i in range(len(parts) - 2, 0, -1):
            yield parts[i]
        carry = [parts[0]]
    carry.reverse()
    yield b"".join(carry)


def _entries(files: list[tuple[int, int]]) -> Iterator[bytes]:
    """Whole entries, newest first: a line with its tab-led continuation lines."""
    continuation: list[bytes] = []
    for fd, size in files:
        for line in _lines_backwards(fd, size):
            if not line:
                continue
            if line[:1] == b"\t":
                continuation.append(line)
                continue
            if continuation:
                continuation.append(line)
                continuation.reverse()
                line = b"\n".join(continuation)
                continuation = []
            yield line
    if continuation:
        continuation.reverse()
        yield b"\n".join(continuation)


def _time_and_rank(entry: bytes) -> tuple[str | None, int | None]:
    if entry[:1] == b"{":
        try:
            obj = orjson.loads(entry)
            return obj.get("time"), LEVELS.index(obj.get("level"))
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            return None, None
    head = entry.split(b" ", 2)
    if len(head) < 3:
        return None, None
    return head[0].decode("ascii", "replace"), _RANK_BY_NAME.get(head[1])


class Filter:
    """Which entries a reader wants: minimum level, substring, not older than a time."""

    def __init__(
        self, level: str | None = None, grep: str | None = None, since: str | None = None
    ) -> None:
        self.min_rank = LEVELS.index(level) if level else 0
        self.grep = grep.encode() if grep else None
        self.since = parse_since(since) if since else None

    def match(self, entry: bytes) -> bool | None:
        """True to keep, False to skip, None when the entry (and so all before it) is too old."""
        if self.min_rank or self.since is not None:
            when, rank = _time_and_rank(entry)
            if self.since is not None and (when is None or when < self.since):
                return False if when is None else None
            if self.min_rank and (rank is None or rank < self.min_rank):
                return False
        return self.grep is None or self.grep in entry


def tail(
    path: str, backups: int, lines: int = 100, where: Filter | None = None
) -> tuple[list[str], bool]:
    """The last `lines` matching entries, oldest first, and whether older matching ones exist.

    Reads backwards from the end of PATH, then PATH.1 ..., so the cost follows the number of
    entries wanted, not the size of the files.
    """
    where = where or Filter()
    found: list[bytes] = []
    truncated = False
    files = _open_files(path, backups)
    try:
        for entry in _entries(files):
            keep = where.match(entry)
            if keep is None:
                break
            if keep:
                if len(found) == lines:
                    truncated = True
                    break
                found.append(entry)
    finally:
        for fd, _ in files:
            os.close(fd)
    found.reverse()
    return [entry.decode(errors="replace") for entry in found], truncated


def _read_to_end(fd: int, offset: int) -> tuple[bytes, int]:
    """Whole lines from `offset` to the end; returns them and the offset after them."""
    pieces = []
    pos = offset
    while True:
        piece = os.pread(fd, BLOCK * 4, pos)
        if not piece:
            break
        pieces.append(piece)
        pos += len(piece)
    data = b"".join(pieces)
    end = data.rfind(b"\n") + 1
    return data[:end], offset + end


def _split_entries(data: bytes) -> list[bytes]:
    entries: list[bytes] = []
    for line in data.split(b"\n"):
        if line[:1] == b"\t" and entries:
            entries[-1] += b"\n" + line
        elif line:
            entries.append(line)
    return entries


def follow(
    path: str, backups: int, where: Filter | None = None, history: int = 0,
    changed: Callable[[], Event] | None = None, poll: float = 2.0,
) -> Iterator[str]:
    """Yield the last `history` matching entries, then every one written later, for ever,
    across rotations: `tail -f`.

    Waits on `changed()` (set by the writer) between reads; `poll` seconds at most, for
    writes the writer cannot signal (other OS threads).
    """
    where = where or Filter()
    # Position and history are taken together, before anything yields: no gap, no repeat.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    offset = os.fstat(fd).st_size
    try:
        yield from tail(path, backups, history, where)[0] if history else ()
        while True:
            wake = changed() if changed is not None else None
            data, offset = _read_to_end(fd, offset)
            try:
                st = os.stat(path)
                rotated = (st.st_dev, st.st_ino) != _identity(fd)
            except FileNotFoundError:
                rotated = False  # between the rename and the new file; look again later
            if rotated:
                rest, offset = _read_to_end(fd, offset)  # the writer finished the old file first
                data += rest
                newer, fd = _newer_files(path, backups, fd)
                data += newer
                offset = 0
            for entry in _split_entries(data):
                if where.match(entry):
                    yield entry.decode(errors="replace")
            if rotated:
                continue  # the new file may hold lines already
            if wake is not None:
                wake.wait(poll)
            else:
                gevent.sleep(poll)
    finally:
        os.close(fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _newer_files(path: str, backups: int, old: int) -> tuple[bytes, int]:
    """After a rotation: the backups newer than the file `old` (read whole), and the new file."""
    identity = _identity(old)
    os.close(old)
    newer: list[str] = []
    for n in range(1, backups + 1):
        name = f"{path}.{n}"
        try:
            st = os.stat(name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == identity:
            break
        newer.append(name)
    else:
        newer = []  # the old file is gone (no backups kept, or rotated away): nothing to catch up
    data = []
    for name in reversed(newer):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data.append(_read_to_end(fd, 0)[0])
        finally:
            os.close(fd)
    return b"".join(data), os.open(path, os.O_RDONLY | os.O_CLOEXEC)
