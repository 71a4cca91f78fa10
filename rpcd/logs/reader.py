"""Reading rpcd's log back for `getlog`: the tail reader, the filters, the follower."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import gevent
import orjson
from gevent.event import Event
from twisted.logger import Logger

from rpcd.logs.observer import LEVELS

_RANK_BY_NAME = {name.encode(): rank for rank, name in enumerate(LEVELS)}
BLOCK = 65536

log = Logger(namespace="rpcd.logs")


def parse_since(value: str) -> str:
    """An ISO-8601 time as the log writes times (UTC, milliseconds); naive times are UTC."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is a time before year 1 in UTC
        raise ValueError(f"{value!r} is out of range in UTC") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def open_log(name: str) -> int | None:
    """A log file opened for reading: not through a symbolic link, a regular file only.

    None if it does not exist; anything else planted at a log file's name is refused with
    a warning, so `getlog` never serves a file the log is not.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        log.warn("getlog does not read {name}: {why}", name=name, why=why)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warn("getlog does not read {name}: {why}", name=name, why="not a regular file")
        return None
    return fd


def _open_files(path: str, backups: int) -> list[tuple[int, int]]:
    """Open the log and its backups, newest first: (fd, size). Never any other file."""
    opened: list[tuple[int, int]] = []
    seen = set()
    for name in [path, *(f"{path}.{n}" for n in range(1, backups + 1))]:
        fd = open_log(name)
        if fd is None:
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
    path: str,
    backups: int,
    where: Filter | None = None,
    history: int = 0,
    changed: Callable[[], Event] | None = None,
    poll: float = 2.0,
) -> Iterator[str]:
    """Yield the last `history` matching entries, then every one written later, for ever,
    across rotations: `tail -f`.

    Waits on `changed()` (set by the writer) between reads; `poll` seconds at most, for
    writes the writer cannot signal (other OS threads).
    """
    where = where or Filter()
    # Position and history are taken together, before anything yields: no gap, no repeat.
    fd = open_log(path)
    if fd is None:
        raise FileNotFoundError(f"no log file at {path}")
    offset = os.fstat(fd).st_size
    try:
        yield from tail(path, backups, history, where)[0] if history else ()
        while True:
            wake = changed() if changed is not None else None
            data, offset = _read_to_end(fd, offset)
            try:
                st = os.lstat(path)
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
            st = os.lstat(name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == identity:
            break
        newer.append(name)
    else:
        newer = []  # the old file is gone (no backups kept, or rotated away): nothing to catch up
    data = []
    for name in reversed(newer):
        fd = open_log(name)
        if fd is None:
            continue
        try:
            data.append(_read_to_end(fd, 0)[0])
        finally:
            os.close(fd)
    fd = open_log(path)
    if fd is None:
        raise FileNotFoundError(f"no log file at {path}")
    return b"".join(data), fd
