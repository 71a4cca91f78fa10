"""Access lines: one log line per finished or refused call, noted on the hot path and
formatted in batches when the log flushes."""

from __future__ import annotations

import time
from typing import Any

import orjson
from twisted.logger import Logger, LogLevel, globalLogPublisher

from rpcd.logs.observer import FLUSH_LINES, LogFile

ACCESS_NAMESPACE = "rpcd.access"
_FRACTION = [f".{n:03d}" for n in range(1000)]

log = Logger(namespace="rpcd.logs")


class AccessLog:
    """The dispatcher's `on_complete` and `on_refused` hooks, writing into a `LogFile`.

    Access lines reach twistd's own observer (the terminal under `twistd -n`) once per
    flush, as one event: its formatting costs ~30 us a line, more than a whole ping call.
    """

    def __init__(self, out: LogFile) -> None:
        self.out = out
        self._buffer = out.buffer  # the same list: flush empties it in place
        self._tick = 0
        self._tick_text = ""
        out.render = self.line
        out.on_flush = self._echo

    def access(self, call: Any, response: Any, duration: float) -> None:
        """One line per finished call: peer, method, id, duration in ms, outcome.

        The hot path: it only notes the facts; the flush formats them, in a batch. Calls run
        in the loop's thread, so there is no thread check.
        """
        try:
            request = call.request
            error = response.error
            buffer = self._buffer
            buffer.append(
                (
                    time.time(),
                    getattr(call.sink, "peer", "-"),
                    request.method,
                    request.id,
                    duration,
                    "ok" if error is None else error.code,
                )
            )
            if self.out._timer is None or len(buffer) >= FLUSH_LINES:
                self.out.kick()
        except Exception:  # a log line must never fail a call
            log.failure("cannot write an access line")

    def refused(self, request: Any, sink: Any, error: Any) -> None:
        """The access line of a call refused before it ran (no such method, server busy)."""
        try:
            self.out.add(
                (
                    time.time(),
                    getattr(sink, "peer", "-"),
                    request.method,
                    request.id,
                    0.0,
                    error.code,
                )
            )
        except Exception:
            log.failure("cannot write an access line")

    def line(self, facts: tuple) -> str:
        """The access line of noted facts, in the log file's format."""
        now, peer, method, rid, duration, outcome = facts
        out = self.out
        try:
            if not method.isprintable() or " " in method:
                method = orjson.dumps(method).decode()  # a client's name must not forge a line
            if type(rid) is not int:
                rid = "-" if rid is None else orjson.dumps(rid).decode()
            us = int(duration * 1e6)
            if out.json:
                extra = {
                    "peer": peer,
                    "method": facts[2],
                    "id": facts[3],
                    "ms": us / 1000,
                    "outcome": str(outcome),
                }
                text = f"{peer} {method} id={rid} {us // 1000}{_FRACTION[us % 1000]} ms {outcome}"
                return out.line(now, "info", ACCESS_NAMESPACE, text, extra)
            tick = int(now * 1000)
            if tick != self._tick:  # one time string per millisecond
                self._tick = tick
                self._tick_text = out.time_text(now)
            return (
                f"{self._tick_text} info [rpcd.access] {peer} {method} id={rid} "
                f"{us // 1000}{_FRACTION[us % 1000]} ms {outcome}\n"
            )
        except Exception as exc:
            return f"{out.time_text(now)} error [rpcd.logs] bad access line: {exc!r}\n"

    def _echo(self, lines: list[str]) -> None:
        """Hand the access lines of this flush to the other observers, as one event."""
        globalLogPublisher(
            {
                "log_level": LogLevel.info,
                "log_namespace": ACCESS_NAMESPACE,
                "log_format": "{calls}",
                "log_time": time.time(),
                "log_source": None,
                "calls": "".join(lines).rstrip("\n"),
                "rpcd_written": True,  # already in the file, line by line
            }
        )
