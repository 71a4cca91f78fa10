"""rpcd.logs.access: access lines in text and JSON, rendered from the dispatcher's journal
and echoed per flush."""

from __future__ import annotations

from math import floor
from time import perf_counter

import orjson

from rpcd.logs import AccessLog, LogFile
from rpcd.stats import CallStats
from rpcd.wire import Request, RPCError


class _Sink:
    peer = "10.0.0.1:4242"


def _access(out: LogFile, quiet: frozenset[str] = frozenset()) -> AccessLog:
    """An access log following a dispatcher's stats (`log.stats`)."""
    log = AccessLog(out, quiet)
    log.stats = CallStats()
    log.follow(log.stats)
    return log


def _journal(stats: CallStats, facts: tuple) -> None:
    stats.journal += facts  # as the dispatcher journals a call, in line
    if len(stats.journal) >= stats.due:
        stats.fold()


def _answered(log: AccessLog, request: Request, error, seconds: float, end: float) -> None:
    """A call answered (error None: ok) after `seconds`, at `end` (perf_counter)."""
    us = floor(seconds * 1e6)  # the run time as the dispatcher journals it
    facts = (request.method, seconds, error, end, _Sink.peer, request.id, us)
    _journal(log.stats, facts)


def _refused(log: AccessLog, request: Request, error) -> None:
    """A request refused before it was queued."""
    _journal(log.stats, (request.method, None, error, perf_counter(), _Sink.peer, request.id, 0))


def test_access_lines_text_and_json(tmp_path):
    from twisted.logger import globalLogPublisher

    echoed: list[dict] = []
    globalLogPublisher.addObserver(echoed.append)
    text = LogFile(str(tmp_path / "text.log"))
    js = LogFile(str(tmp_path / "json.log"), fmt="json")
    try:
        text.start()  # observes the echo event too: it must not write the lines twice
        for out in (text, js):
            log = _access(out)
            ok = Request("math.add", (1, 2), 7)
            _answered(log, ok, None, 0.0012345, perf_counter())
            odd = Request("evil\n2026 info [x] forged", (), "a b")
            _answered(log, odd, RPCError(-32603, "x"), 0.5, perf_counter())
            legacy = Request("ping", (), None, legacy=True)
            _refused(log, legacy, RPCError(-32000, "busy"))
            out.flush()
    finally:
        text.close()
        js.close()
        globalLogPublisher.removeObserver(echoed.append)
    lines = [line.split(" ", 1)[1] for line in (tmp_path / "text.log").read_text().splitlines()]
    assert lines == [
        "info [rpcd.access] 10.0.0.1:4242 math.add id=7 1.234 ms ok",
        'info [rpcd.access] 10.0.0.1:4242 "evil\\n2026 info [x] forged" id="a b" 500.000 ms -32603',
        "info [rpcd.access] 10.0.0.1:4242 ping id=- 0.000 ms -32000",
    ]
    objs = [orjson.loads(line) for line in (tmp_path / "json.log").read_bytes().splitlines()]
    assert [(o["method"], o["id"], o["ms"], o["outcome"]) for o in objs] == [
        ("math.add", 7, 1.234, "ok"),
        ("evil\n2026 info [x] forged", "a b", 500.0, "-32603"),
        ("ping", None, 0.0, "-32000"),
    ]
    batches = [e for e in echoed if e.get("log_namespace") == "rpcd.access"]
    assert len(batches) == 2 and batches[0]["calls"].count("\n") == 2  # one event per flush


def test_method_texts_kept_are_bounded_and_never_unknown_names(tmp_path):
    from rpcd.logs import access

    out = LogFile(str(tmp_path / "a.log"))
    log = _access(out)
    for i in range(access.MAX_KEPT + 50):
        request = Request(f"m{i}", (), 1)
        _answered(log, request, None, 0.0, perf_counter())
    unknown = Request("no such\nthing", (), 2)
    _refused(log, unknown, RPCError(-32601, "method not found"))
    out.flush()
    kept = log._methods_kept
    assert 0 < len(kept) <= access.MAX_KEPT and "no such\nthing" not in kept
    again = Request("m3", (), 3)  # from the kept text
    _answered(log, again, None, 0.0, perf_counter())
    out.close()
    lines = (tmp_path / "a.log").read_text().splitlines()
    assert len(lines) == access.MAX_KEPT + 52
    assert lines[-3].endswith(f" {_Sink.peer} m{access.MAX_KEPT + 49} id=1 0.000 ms ok")
    assert lines[-2].endswith(f' {_Sink.peer} "no such\\nthing" id=2 0.000 ms -32601')
    assert lines[-1].endswith(f" {_Sink.peer} m3 id=3 0.000 ms ok")


def test_health_checks_get_no_access_line(tmp_path):
    out = LogFile(str(tmp_path / "q.log"))
    log = _access(out, quiet=frozenset({"rpc.health"}))
    check, call = Request("rpc.health", (), 1), Request("ping", (), 2)
    _answered(log, check, None, 0.001, perf_counter())
    _answered(log, call, None, 0.001, perf_counter())
    out.flush()
    out.close()
    text = (tmp_path / "q.log").read_text()
    assert "rpc.health" not in text and " ping id=2 " in text


def test_unicode_line_breaks_in_client_text_cannot_forge_a_line(tmp_path):
    # orjson leaves U+2028, U+2029 and U+0085 raw: str.splitlines() would split there.
    out = LogFile(str(tmp_path / "a.log"))
    try:
        log = _access(out)
        for brk in ("\u2028", "\u2029", "\u0085", "\v", "\f"):
            odd = Request(f"m{brk}2026 info [x] forged", (), f"i{brk}d")
            _answered(log, odd, RPCError(-32601, "x"), 0.001, perf_counter())
        out.flush()
    finally:
        out.close()
    text = (tmp_path / "a.log").read_text()
    assert len(text.splitlines()) == 5 and "forged" in text


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def _ok(log: AccessLog, method: str, rid, seconds: float = 0.001) -> None:
    request = Request(method, (), rid)
    _answered(log, request, None, seconds, perf_counter())


def test_lines_keep_the_order_of_events_around_other_log_lines(tmp_path):
    from twisted.logger import Logger

    out = LogFile(str(tmp_path / "a.log"))
    log = _access(out)
    other = Logger(namespace="rpcd.protocol", observer=out)
    _ok(log, "first", 1)
    other.info("connection closed")
    _ok(log, "second", 2)
    out.close()  # a clean stop writes what waits
    messages = [line.split("] ", 1)[1] for line in (tmp_path / "a.log").read_text().splitlines()]
    assert messages == [
        f"{_Sink.peer} first id=1 1.000 ms ok",
        "connection closed",
        f"{_Sink.peer} second id=2 1.000 ms ok",
    ]


def test_each_line_has_the_time_its_call_ended(tmp_path, monkeypatch):
    # A call's end is the dispatcher's perf_counter reading; the flush makes it wall time.
    from rpcd.logs import access

    offset = 1_000_000.0
    monkeypatch.setattr(access, "_clock", lambda: 50.0)
    monkeypatch.setattr(access, "_time", lambda: 50.0 + offset)
    # Many a millisecond, across a second; few, far apart; out of order; a jump.
    dense = [0.9004 + (n // 5) * 0.001 + (n % 5) * 0.0001 for n in range(1500)]
    for ends in (
        dense,
        [100.0005, 100.9999, 101.25],
        [100.5, 99.25, 100.75],
        [100.5, 5000.0, 7.125],
    ):
        path = tmp_path / f"{len(ends)}-{ends[1]}.log"
        out = LogFile(str(path))
        log = _access(out)
        for n, end in enumerate(ends):
            request = Request("m", (), n)
            _answered(log, request, None, 0.001, end)
        out.close()
        stamps = [line.split(" ", 1)[0] for line in path.read_text().splitlines()]
        assert stamps == [out.time_text(end + offset) for end in ends]


def test_ids_of_every_kind_in_one_batch(tmp_path):
    out = LogFile(str(tmp_path / "a.log"))
    log = _access(out)
    ids = [7, -3, 2**70, "x,y", None, 1.5, True, "line\u2028break"]
    for rid in ids:
        _ok(log, "m", rid)
    out.close()
    shown = [line.split(" id=", 1)[1].split(" ")[0] for line in _lines(tmp_path / "a.log")]
    assert shown[:7] == ["7", "-3", str(2**70), '"x,y"', "-", "1.5", "true"]
    assert shown[7] == '"line\\u2028break"'


def test_calls_wait_to_be_written_in_bounded_batches(tmp_path):
    from rpcd.logs import access

    path = tmp_path / "a.log"
    out = LogFile(str(path))
    log = _access(out)
    for n in range(access.FLUSH_CALLS - 1):
        _ok(log, "m", n)
    assert path.read_text() == ""  # waiting for the flush timer
    _ok(log, "m", access.FLUSH_CALLS - 1)
    assert len(_lines(path)) == access.FLUSH_CALLS  # written at once, without the timer
    _ok(log, "m", -1)
    out.close()
    assert _lines(path)[-1].endswith(" m id=-1 1.000 ms ok")


def test_a_dispatchers_calls_get_their_lines_and_their_figures(tmp_path):
    import pytest

    from rpcd.dispatch import Dispatcher
    from rpcd.methods import Registry
    from tests.conftest import CollectingSink

    registry = Registry()
    registry.add("add", lambda a, b: a + b)
    registry.add("rpc.health", lambda: {"status": "SERVING"}, builtin=True)
    dispatcher = Dispatcher(registry, max_workers=1, queue_size=10)
    out = LogFile(str(tmp_path / "a.log"))
    log = AccessLog(out, quiet=frozenset({"rpc.health"}))
    log.follow(dispatcher.stats)
    sink = CollectingSink()
    dispatcher.submit(Request("add", (1, 2), 1), sink)
    dispatcher.submit(Request("add", (1,), 2), sink)  # -32602
    dispatcher.submit(Request("rpc.health", (), 3), sink)  # quiet: counted, no line
    sink.wait_count(3)
    with pytest.raises(RPCError):
        dispatcher.submit(Request("nosuch", (), 4), sink)  # refused: a line
    dispatcher.cancel(dispatcher.submit(Request("add", (3, 4), 5), sink))  # no answer, no line
    summary = dispatcher.stats.summary()  # read before the flush: every call counts
    assert summary["methods"]["add"]["count"] == 3 and summary["methods"]["add"]["errors"] == 2
    assert summary["methods"]["rpc.health"]["count"] == 1
    assert summary["errors"] == {"-32602": 1, "-32601": 1, "-32006": 1}
    out.close()
    lines = [line.split("] ", 1)[1] for line in _lines(tmp_path / "a.log")]
    assert [line.rsplit(" ", 3)[0] for line in lines] == [
        f"{sink.peer} add id=1",
        f"{sink.peer} add id=2",
        f"{sink.peer} nosuch id=4",
    ]
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["ok", "-32602", "-32601"]
    dispatcher.stop_workers()
