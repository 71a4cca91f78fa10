"""The twisted.logger observer that writes rpcd's log file: level filter, text and JSON
line formats, the batching buffer, and the bridge from the standard `logging` module.

Lines are `TIME LEVEL [NAMESPACE] MESSAGE` (UTC ISO-8601 with milliseconds), or one JSON
object per line with `--log-format json`. A message of several lines (a traceback) goes on
continuation lines that begin with a tab, so an entry is always the line with the time plus
the tab-led lines after it. Lines are buffered and written in batches (at most 0.1 s late,
one write each); access lines wait as facts and become text only then. `getlog` flushes
first, so it reads everything logged so far.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.monkey
import orjson
from gevent.event import Event
from twisted.logger import (
    ILogObserver,
    LogLevel,
    eventAsText,
    globalLogPublisher,
    textFileLogObserver,
)
from zope.interface import implementer

from rpcd.logs.rotating import RotatingFile

LEVELS = ("debug", "info", "warn", "error", "critical")
_RANK = {LogLevel.levelWithName(name): rank for rank, name in enumerate(LEVELS)}
INFO = _RANK[LogLevel.info]
_STDLIB_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)

# Lines wait at most this long to be written, so a busy daemon writes many per system call.
FLUSH_INTERVAL = 0.1
# ... or until this many wait.
FLUSH_LINES = 1024

# Real thread identity even under monkey-patching: only another OS thread (Twisted's thread
# pool, a method's own thread) must take the locked, unbuffered path.
_get_ident = gevent.monkey.get_original("_thread", "get_ident")


class _StdlibBridge(logging.Handler):
    """Sends stdlib `logging` records into twisted.logger under the logger's name."""

    def createLock(self) -> None:
        # No handler lock: `emit` is safe from any thread, and under monkey-patching the
        # default one is a gevent lock, which real OS threads deadlock on.
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = LogLevel.critical
            for limit, candidate in zip(_STDLIB_LEVELS[1:], LEVELS, strict=False):
                if record.levelno < limit:
                    level = LogLevel.levelWithName(candidate)
                    break
            globalLogPublisher(
                {
                    "log_level": level,
                    "log_namespace": record.name,
                    "log_format": "{text}",
                    "log_time": record.created,
                    "log_source": None,
                    "text": self.format(record),
                }
            )
        except Exception:
            self.handleError(record)


class LogFile:
    """The observer that writes rpcd's log file: level filter, line format, buffer, rotation."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        level: str = "info",
        fmt: str = "text",
        shared: bool = False,
    ) -> None:
        self.file = RotatingFile(path, max_bytes, backups, shared=shared)
        self.path = self.file.path
        self.backups = backups
        self.min_rank = LEVELS.index(level)
        self.json = fmt == "json"
        # Lines waiting to be written, each a str, or a list of facts for `render`.
        self.buffer: list[Any] = []
        # The facts of lines not yet taken into `buffer` (the access log's, flat), and the
        # function that makes them lines at flush time.
        self.facts: list[Any] = []
        self.render: Callable[[list], str] | None = None
        # Puts facts noted elsewhere into `facts` (the access log: the dispatcher's journal),
        # first thing in `add` and `flush`, so lines keep the order of events.
        self.gather: Callable[[], None] | None = None
        # Called after each flush with the text `render` made for it ("" if none).
        self.on_flush: Callable[[str], None] | None = None
        self._timer: Any = None  # the pending flush
        self._changed: Event | None = None
        self._main = _get_ident()
        self._loop = gevent.get_hub().loop
        self._stamp: tuple[int, str] = (0, "")
        self._bridge = _StdlibBridge()
        self._root_level = logging.NOTSET
        self._started = False
        self._since = 0.0
        self._seen = f"rpcd_logged_{id(self)}"

    @property
    def logs_access(self) -> bool:
        """Whether access lines (info) pass the level filter at all."""
        return self.min_rank <= INFO

    # -- starting and stopping -----------------------------------------------------------

    def start(self) -> None:
        """Observe every log event from now on (twistd's own observer stays), and stdlib logging."""
        global _current
        if self._started:
            return
        self._started = True
        self._since = time.time()
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

    # -- formats -------------------------------------------------------------------------

    def time_text(self, when: float) -> str:
        """`when` as the log writes times: UTC ISO-8601 with milliseconds."""
        second = int(when)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{stamp[1]}.{int((when - second) * 1000):03d}Z"

    def __call__(self, event: dict) -> None:
        try:
            if _RANK.get(event.get("log_level"), INFO) < self.min_rank or "rpcd_written" in event:
                return
            # twistd replays what was logged before its logging began: events from before
            # this file started are not its own, and those it saw live are not written twice.
            if self._seen in event or event.get("log_time", self._since) < self._since:
                return
            event[self._seen] = True
            line = self._format(event)
        except Exception as exc:  # an observer must never raise into the publisher
            line = f"{self.time_text(time.time())} error [rpcd.logs] unformattable event: {exc!r}\n"
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
        namespace = event.get("log_namespace") or "-"
        if namespace == "log_legacy":  # Twisted's own lines: name their context, or Twisted
            system = event.get("log_system")
            namespace = system if system and system != "-" else "twisted"
        return self.line(event.get("log_time") or time.time(), level.name, namespace, text)

    def line(
        self, when: float, level: str, namespace: str, text: str, extra: dict | None = None
    ) -> str:
        """One entry in the file's format, ending with a newline."""
        if self.json:
            obj = {
                "time": self.time_text(when),
                "level": level,
                "namespace": namespace,
                "message": text,
            }
            if extra:
                obj.update(extra)
            try:
                return orjson.dumps(obj).decode() + "\n"
            except TypeError:  # a lone surrogate: orjson refuses it
                obj["message"] = text.encode("utf-8", "backslashreplace").decode()
                return orjson.dumps(obj).decode() + "\n"
        if "\n" in text or "\r" in text:
            text = "\n\t".join(text.splitlines())
        return f"{self.time_text(when)} {level} [{namespace}] {text}\n"

    # -- writing -------------------------------------------------------------------------

    def _add(self, line: Any) -> None:
        if _get_ident() != self._main:
            self.file.write(line.encode("utf-8", "backslashreplace"))
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Buffer a line, from the loop's thread; flush soon."""
        if self.gather is not None:
            self.gather()
        buffer = self.buffer
        if self.facts:  # the facts noted so far go first: the file keeps the order of events
            buffer.append(self.facts[:])
            self.facts.clear()
        buffer.append(line)
        if self._timer is None or len(buffer) >= FLUSH_LINES:
            self.kick()

    def kick(self) -> None:
        """After adding to `buffer`: start the flush timer, or flush now if the buffer is full."""
        if self._timer is None:
            self.schedule()
        else:
            self.flush()

    def schedule(self) -> None:
        """Flush within FLUSH_INTERVAL (after adding to `buffer` or `facts`)."""
        if self._timer is None:
            self._timer = self._loop.timer(FLUSH_INTERVAL)
            self._timer.start(self.flush)

    def flush(self) -> None:
        """Write the buffered lines, echo the access lines, wake whoever follows the log."""
        if self.gather is not None:
            self.gather()
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        buffer = self.buffer
        if self.facts:
            buffer.append(self.facts[:])
            self.facts.clear()
        rendered = ""
        if buffer:
            items = buffer[:]
            buffer.clear()
            if self.render is not None and any(type(item) is list for item in items):
                texts = []
                for i, item in enumerate(items):
                    if type(item) is list:
                        items[i] = text = self.render(item)
                        texts.append(text)
                rendered = "".join(texts)
            self.file.write("".join(items).encode("utf-8", "backslashreplace"))
        if self.on_flush is not None:
            self.on_flush(rendered)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def reopen(self) -> None:
        """Write out what is buffered, then open the file afresh (external rotation)."""
        self.flush()
        self.file.reopen()

    def changed(self) -> Event:
        """An event set at the next write: take it before reading, then wait on it."""
        if self._changed is None:
            self._changed = Event()
        return self._changed


@implementer(ILogObserver)
class TerminalObserver:
    """twistd's terminal log under `twistd -n`: Twisted's own line format for every event,
    except the access lines, which arrive already formatted once per flush and are written
    as the log file has them (one timestamp, one prefix)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._twisted = textFileLogObserver(stream)

    def __call__(self, event: dict) -> None:
        if "rpcd_written" in event:
            self.stream.write(event["calls"] + "\n")
        else:
            self._twisted(event)


_current: LogFile | None = None


def current() -> LogFile | None:
    """The log file this process is writing, if any."""
    return _current
