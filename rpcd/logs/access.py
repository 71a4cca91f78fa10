"""Access lines: one log line per finished or refused call, rendered in batches from the
dispatcher's journal (`rpcd.stats`) when the log flushes."""

from __future__ import annotations

import time
from itertools import compress
from math import floor
from operator import itemgetter
from typing import Any

import orjson
from twisted.logger import Logger, LogLevel, globalLogPublisher

from rpcd.logs.observer import LogFile
from rpcd.stats import (
    END,
    ERROR,
    ID,
    JOURNAL_VALUES,
    LOG_WIDTH,
    NAME,
    NO_ANSWER,
    PEER,
    RAN,
    CallStats,
)
from rpcd.wire import METHOD_NOT_FOUND, log_text

ACCESS_NAMESPACE = "rpcd.access"
# Calls journaled before the log flushes at once (else it flushes at its interval): this
# bounds the memory held, the lines a crash can lose, and the time one flush holds the loop
# up (~0.3 ms for 1024 lines). Fewer, larger flushes cost less: each write, lstat and lock
# of the file is a system call, and on a busy disk those cost more than the formatting.
FLUSH_CALLS = 1024
MAX_KEPT = 4096  # texts kept per peer, per method and per duration, each
# A text line is made of texts joined: "2026-12-02T04:45:35", ".123Z info [rpcd.access] ",
# "PEER ", "METHOD id=" (or "PEER METHOD id=" when a batch has one method), the id and
# " MS ms OUTCOME\n".
_FRACTION = [f".{n:03d}" for n in range(1000)]
_MILLISECOND_HEAD = [f".{n:03d}Z info [{ACCESS_NAMESPACE}] " for n in range(1000)] * 2
_INT_JSON = b"0123456789,-"  # all a JSON array of ints is made of, brackets aside
_JOURNAL = JOURNAL_VALUES // LOG_WIDTH * LOG_WIDTH  # the journal's bound, with this log
_time = time.time
_clock = time.perf_counter  # the dispatcher's clock: what a call's end was read from

log = Logger(namespace="rpcd.logs")


class AccessLog:
    """The access lines of the calls a dispatcher journals, written into a `LogFile`.

    Nothing runs per call here: the dispatcher appends each call's facts to its journal
    (`rpcd.stats`, read from the objects at hand: nothing of the call is kept, not its
    params, not its result), and each batch the stats fold is handed to `noted`, which
    keeps it in the log file's facts. The log file takes the journal (`gather`) before it
    writes anything, so the lines keep their place among the other lines. A line's time is
    the dispatcher's own reading of the call's end: no clock is read per call. The flush
    turns the facts into lines a batch at a time, column by column, leaving the per-line
    work to C: a line is five or six texts joined (the second, the millisecond, the peer
    and method, the id, the duration and outcome), each one kept or fixed and looked up for
    the whole column at once, the ids turned into text by one `orjson` call; only the
    millisecond of each end is computed line by line. At most about FLUSH_CALLS calls wait:
    a flush never holds the loop up for long, and a crash loses at most those lines.

    Access lines reach twistd's own observer (the terminal under `twistd -n`) once per
    flush, as one event: its formatting costs ~30 us a line, more than a whole ping call.
    Calls to a method in `quiet` (the health checks) get no line: rpc.stats counts them.
    Nor does a call cancelled with no answer sent.
    """

    def __init__(self, out: LogFile, quiet: frozenset[str] = frozenset()) -> None:
        self.out = out
        self.quiet = quiet
        self._facts = out.facts  # the same list: the log file takes what is in it in place
        self._stats: CallStats | None = None
        self._gathering = False  # in the log file's `gather`: it writes what is noted
        # The texts lines are made of, each table bounded (emptied when full). A name a
        # client made up (no such method: a client can send many) is never kept.
        self._peers_kept: dict[str, str] = {}  # "PEER "
        self._methods_kept: dict[str, str] = {}  # "METHOD id="
        self._ends_kept: dict[int, str] = {}  # microseconds -> " 1.234 ms ok\n"
        self._stamp: tuple[int, str] = (-1, "")  # the last second's text
        out.render = self.render
        out.on_flush = self._flushed

    def follow(self, stats: CallStats) -> None:
        """Write the lines of the calls journaled in `stats` (the dispatcher's) from now on."""
        self._stats = stats
        stats.follow(self.noted)
        stats.due = LOG_WIDTH  # the first call journaled starts the flush timer
        self.out.gather = self._gather

    # -- between flushes: the journal's batches wait ----------------------------------------

    def noted(self, batch: list) -> None:
        """Calls the stats folded (LOG_WIDTH values each): they wait for the flush, which
        comes within the log's interval, or now if FLUSH_CALLS calls wait."""
        try:
            facts = self._facts
            facts += batch
            waiting = len(facts)
            if not self._gathering:  # else the log file is taking them already
                if waiting >= FLUSH_CALLS * LOG_WIDTH:
                    self.out.flush()
                    return
                self.out.schedule()
            if self._stats is not None:
                # Folded again when the calls waiting reach the bound.
                self._stats.due = max(min(FLUSH_CALLS * LOG_WIDTH - waiting, _JOURNAL), LOG_WIDTH)
        except Exception:  # a log line must never fail a call
            log.failure("cannot write access lines")

    def _gather(self) -> None:
        """The log file is about to write: what the dispatcher journaled goes first."""
        if self._stats is not None:
            self._gathering = True
            try:
                self._stats.fold()
            finally:
                self._gathering = False

    def _flushed(self, text: str) -> None:
        """After each flush: hear of the next call at once, and hand this flush's access
        lines to the other observers, as one event."""
        if self._stats is not None:
            self._stats.due = LOG_WIDTH
        if not text:
            return
        globalLogPublisher(
            {
                "log_level": LogLevel.info,
                "log_namespace": ACCESS_NAMESPACE,
                "log_format": "{calls}",
                "log_time": time.time(),
                "log_source": None,
                "calls": text.rstrip("\n"),
                "rpcd_written": True,  # already in the file, line by line
            }
        )

    # -- the flush: formatting a batch ------------------------------------------------------

    def render(self, facts: list) -> str:
        """The access lines of journaled calls (LOG_WIDTH values each, see rpcd.stats), in
        the log file's format."""
        if not facts:
            return ""
        # A line's columns, in its order (the latencies are the stats' only).
        columns = [facts[i::LOG_WIDTH] for i in (END, PEER, NAME, ID, RAN, ERROR)]
        names, errors = columns[2], columns[5]
        keep = None
        quiet = self.quiet
        if names.count(names[0]) == len(names):  # one method (a count by identity, in C)
            if names[0] in quiet:
                return ""
        elif quiet and not quiet.isdisjoint(names):
            keep = [name not in quiet for name in names]
        if any(errors):
            for i in compress(range(len(errors)), errors):
                if errors[i] is NO_ANSWER:
                    if keep is None:
                        keep = [True] * len(errors)
                    keep[i] = False
        if keep is not None:
            columns = [list(compress(column, keep)) for column in columns]
        if not columns[0]:
            return ""
        # The calls' ends are readings of the dispatcher's monotonic clock: one offset read
        # now makes them wall-clock times. The two clocks drift apart by at most NTP's slew
        # (0.5 ms a second) and a batch waits at most FLUSH_INTERVAL, so the lines keep
        # their millisecond. A step of the wall clock between a call's end and the flush
        # (at most FLUSH_INTERVAL, or FLUSH_CALLS calls) already shows in its line.
        offset = _time() - _clock()
        if not self.out.json:
            try:
                return self._text_lines(offset, *columns)
            except Exception:  # odd facts: each line on its own, a bad one reported as such
                pass
        columns[0] = _milliseconds(columns[0], offset)
        return "".join(map(self.line, *columns))

    def _text_lines(
        self,
        offset: float,
        ends: list,
        peers: list,
        names: list,
        ids: list,
        micros: list,
        errors: list,
    ) -> str:
        """The text lines of a batch, built column by column: each of a line's pieces is a
        kept text, looked up in C for the whole column (`itemgetter`); a piece not seen
        before (a new peer, method or duration) costs Python work once."""
        failed = list(compress(range(len(errors)), errors))  # the rows with an error
        columns = list(self._heads(ends, offset))
        methods = self._methods(names, errors, failed)
        if methods.count(methods[0]) == len(methods):
            # One method (a column of one text): join it to each peer's text once.
            method = methods[0]
            table = {peer: _peer_text(peer) + method for peer in set(peers)}
            columns.append(_lookup(table, peers, uniform=True))
        else:
            columns.append(_kept(self._peers_kept, peers, _peer_text, uniform=True))
            columns.append(methods)
        columns.append(_id_texts(ids))
        texts = _kept(self._ends_kept, micros, _ok_end)
        if failed:
            texts = list(texts)
            for i in failed:
                texts[i] = _end(micros[i], errors[i])
        columns.append(texts)
        step = len(columns)
        pieces: list[Any] = [None] * (step * len(ends))
        for i, column in enumerate(columns):
            pieces[i::step] = column
        return "".join(pieces)

    def _heads(self, ends: list, offset: float) -> tuple[Any, Any]:
        """Each line's second ("2026-12-02T04:45:35") and the rest of its head
        (".123Z info [rpcd.access] "), from the calls' ends: one comprehension makes each
        end a millisecond counted from the batch's first, an index into the texts of the
        batch's milliseconds."""
        # The first and last ends bound the batch's (the loop notes them in order); an end
        # outside them has no text in the batch's slice below, and it takes the slow way.
        low = floor((ends[0] + offset) * 1000.0) - 1  # a millisecond to spare each side:
        high = floor((ends[-1] + offset) * 1000.0) + 1  # the sums below round differently
        try:
            if not 0 <= high - low < 1000:  # out of order, or more than a second
                raise KeyError(high - low)
            shift = offset * 1000.0 - low
            at = [floor(end * 1000.0 + shift) for end in ends]
            if min(at) < 0:  # out of order: a list index would count from the end
                raise KeyError(min(at))
            start = low % 1000
            # A list, not a dict: it is made per batch (a slice), and indexed faster.
            fractions = _lookup(_MILLISECOND_HEAD[start : start + high - low + 1], at)
        except (KeyError, IndexError):  # IndexError: an end past the last
            ms = _milliseconds(ends, offset)
            stamps = {n: self._second_text(n) for n in {m // 1000 for m in ms}}
            return [stamps[m // 1000] for m in ms], [_MILLISECOND_HEAD[m % 1000] for m in ms]
        first, last = low // 1000, high // 1000
        if first == last:
            return [self._second_text(first)] * len(ends), fractions
        cut = last * 1000 - low  # `at` of the first millisecond of the next second
        seconds = [self._second_text(first)] * cut
        seconds += [self._second_text(last)] * (high - low + 1 - cut)
        return _lookup(seconds, at), fractions

    def _second_text(self, second: int) -> str:
        stamp = self._stamp
        if stamp[0] != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            stamp = self._stamp = (second, text)
        return stamp[1]

    def _methods(self, names: list, errors: list, failed: list) -> Any:
        """Each line's "METHOD id=". Names of calls that were not found are escaped for
        their batch only: what is kept stays the registered methods'."""
        kept = self._methods_kept
        try:
            return _lookup(kept, names, uniform=True)
        except KeyError:
            pass
        made_up = {names[i] for i in failed if errors[i].code == METHOD_NOT_FOUND}
        made_up.difference_update(kept)
        _kept(kept, [name for name in names if name not in made_up], _method_piece)
        if not made_up:
            return _lookup(kept, names)
        batch = {name: _method_piece(name) for name in made_up}
        batch.update(kept)
        return _lookup(batch, names)

    def line(self, ms: int, peer: str, name: str, rid: Any, us: int, error: Any) -> str:
        """The access line of one call's facts, on its own (JSON lines, odd facts)."""
        when = (ms + 0.5) / 1000  # within its millisecond, whatever the float's rounding
        try:
            outcome = "ok" if error is None else error.code
            text = (
                f"{peer} {_method_text(name)} id={_id_text(rid)} "
                f"{us // 1000}{_FRACTION[us % 1000]} ms {outcome}"
            )
            extra = None
            if self.out.json:
                extra = {"peer": peer, "method": name, "id": rid, "ms": us / 1000}
                extra["outcome"] = str(outcome)
            return self.out.line(when, "info", ACCESS_NAMESPACE, text, extra)
        except Exception as exc:
            return f"{self.out.time_text(when)} error [rpcd.logs] bad access line: {exc!r}\n"


def _lookup(table: Any, keys: list, uniform: bool = False) -> Any:
    """table[key] for each key, in C (KeyError if one is missing). `uniform`: the keys are
    often all one (one connection, one method), which is cheaper to see than to look up."""
    if uniform and keys[0] is keys[-1] and keys.count(keys[0]) == len(keys):
        return [table[keys[0]]] * len(keys)
    if len(keys) > 1:
        return itemgetter(*keys)(table)
    return [table[key] for key in keys]  # itemgetter of one key is no tuple; of none, an error


def _kept(table: dict, keys: list, make: Any, uniform: bool = False) -> Any:
    """table[key] for each key, `make(key)` stored first for keys not yet in the table;
    the table is emptied first if it would grow past MAX_KEPT."""
    try:
        return _lookup(table, keys, uniform)
    except KeyError:
        pass
    new = set(keys).difference(table)
    if len(table) + len(new) > MAX_KEPT:
        table.clear()
        new = set(keys)
    for key in new:
        table[key] = make(key)
    return _lookup(table, keys)


def _milliseconds(ends: list, offset: float) -> list:
    """Each end (a reading of the calls' clock) as a wall-clock time in whole ms."""
    try:
        return [floor((end + offset) * 1000.0) for end in ends]
    except Exception:  # not all numbers: the odd one is stamped now
        return [_millisecond(end, offset) for end in ends]


def _millisecond(end: Any, offset: float) -> int:
    try:
        return floor((end + offset) * 1000.0)
    except Exception:
        return floor(_time() * 1000.0)


def _peer_text(peer: str) -> str:
    return f"{peer} "


def _method_text(name: str) -> str:
    """A method name as a line shows it: a client's name must not forge a line."""
    if not name.isprintable() or " " in name:
        # JSON-quoted, and the line breaks JSON leaves raw (U+2028, U+2029, U+0085) escaped
        # too.
        return log_text(orjson.dumps(name).decode())
    return name


def _method_piece(name: str) -> str:
    return f"{_method_text(name)} id="


def _id_texts(ids: list) -> Any:
    """Each line's id: ints (the usual ids) in one `orjson` call for the whole column."""
    try:
        array = orjson.dumps(ids)[1:-1]
    except orjson.JSONEncodeError:  # an int beyond 64 bits
        return list(map(_id_text, ids))
    if array.translate(None, _INT_JSON):  # not all ints: strings, null, ...
        return list(map(_id_text, ids))
    return array.decode().split(",")


def _id_text(rid: Any) -> str:
    """A request id as a line shows it: `-` for none, else its JSON, made safe."""
    if type(rid) is int:
        return str(rid)
    if rid is None:
        return "-"
    return log_text(orjson.dumps(rid).decode())


def _ok_end(us: int) -> str:
    return f" {us // 1000}{_FRACTION[us % 1000]} ms ok\n"


def _end(us: int, error: Any) -> str:
    return f" {us // 1000}{_FRACTION[us % 1000]} ms {'ok' if error is None else error.code}\n"
