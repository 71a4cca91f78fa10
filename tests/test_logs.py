"""rpcd.logs: the tail reader, the follower, the rotating file and the log observer."""

from __future__ import annotations

import logging
import os
import threading

import gevent
import orjson
import pytest
from twisted.logger import Logger

from rpcd import logs
from rpcd.logs import Filter, LogError, LogFile, RotatingFile, tail
from rpcd.wire import Request, Response, RPCError


def entry(n: int, level: str = "info", text: str = "", second: int = 0) -> str:
    return f"2026-01-01T00:00:{second:02d}.{n % 1000:03d}Z {level} [test] line {n}{text}"


def write(path, lines: list[str], end: str = "\n") -> None:
    path.write_bytes(("\n".join(lines) + end).encode())


@pytest.fixture(params=[3, 7, logs.BLOCK], ids=lambda b: f"block{b}")
def block(request, monkeypatch):
    """Run a reader test with tiny blocks too, so lines and characters straddle them."""
    monkeypatch.setattr(logs, "BLOCK", request.param)
    return request.param


# -- the tail reader -------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["\n", ""], ids=["newline", "no-newline"])
def test_tail_with_and_without_trailing_newline(tmp_path, block, end):
    path = tmp_path / "rpcd.log"
    write(path, [entry(n) for n in range(10)], end)
    assert tail(str(path), 0, 3) == ([entry(7), entry(8), entry(9)], True)
    assert tail(str(path), 0, 10) == ([entry(n) for n in range(10)], False)
    assert tail(str(path), 0, 50) == ([entry(n) for n in range(10)], False)


def test_tail_line_longer_than_a_block(tmp_path, block):
    path = tmp_path / "rpcd.log"
    long = entry(1, text="x" * (3 * logs.BLOCK + 5))
    write(path, [entry(0), long, entry(2)])
    assert tail(str(path), 0, 2)[0] == [long, entry(2)]
    assert tail(str(path), 0, 3)[0] == [entry(0), long, entry(2)]


def test_tail_multibyte_utf8_split_across_blocks(tmp_path, block):
    path = tmp_path / "rpcd.log"
    # 2-, 3- and 4-byte characters at every offset against the block size.
    lines = [entry(n, text=" " + "é€😀" * n) for n in range(12)]
    write(path, lines)
    assert tail(str(path), 0, 12)[0] == lines


def test_tail_keeps_a_traceback_with_its_entry(tmp_path, block):
    path = tmp_path / "rpcd.log"
    failure = entry(1, "error") + "\n\tTraceback (most recent call last):\n\tKeyError: 'k'"
    write(path, [entry(0), failure, entry(2)])
    assert tail(str(path), 0, 2)[0] == [failure, entry(2)]
    assert tail(str(path), 0, 5, Filter(level="error"))[0] == [failure]
    assert tail(str(path), 0, 5, Filter(grep="KeyError"))[0] == [failure]


def test_tail_level_grep_and_since_filters(tmp_path, block):
    path = tmp_path / "rpcd.log"
    levels = ["debug", "info", "warn", "error", "critical"]
    lines = [entry(n, levels[n % 5], " Apple" if n % 2 else " apple", second=n) for n in range(20)]
    write(path, lines)
    p = str(path)
    serious = [x for x in lines if " error " in x or " critical " in x]
    assert tail(p, 0, 100, Filter(level="error"))[0] == serious
    assert tail(p, 0, 100, Filter(grep="Apple"))[0] == lines[1::2]  # case-sensitive
    assert tail(p, 0, 2, Filter(level="warn", grep="apple")) == ([lines[14], lines[18]], True)
    assert tail(p, 0, 100, Filter(since="2026-01-01T00:00:17Z"))[0] == lines[17:]
    # a since with a zone is compared in UTC; a naive one is UTC
    assert tail(p, 0, 100, Filter(since="2026-01-01T01:00:18+01:00"))[0] == lines[18:]
    assert tail(p, 0, 100, Filter(since="2026-01-01T00:00:19"))[0] == lines[19:]
    assert tail(p, 0, 100, Filter(grep="nowhere")) == ([], False)


def test_tail_reads_json_lines(tmp_path):
    path = tmp_path / "rpcd.log"
    lines = [
        orjson.dumps({"time": f"2026-01-01T00:00:0{n}.000Z", "level": level, "namespace": "t",
                      "message": f"m{n}"}).decode()
        for n, level in enumerate(["info", "error", "info"])
    ]
    write(path, lines)
    assert tail(str(path), 0, 10, Filter(level="error"))[0] == [lines[1]]
    assert tail(str(path), 0, 10, Filter(since="2026-01-01T00:00:02Z"))[0] == [lines[2]]


def test_tail_empty_and_missing_log(tmp_path, block):
    path = tmp_path / "rpcd.log"
    assert tail(str(path), 5, 10) == ([], False)
    path.write_bytes(b"")
    assert tail(str(path), 5, 10) == ([], False)
    path.write_bytes(b"\n\n")
    assert tail(str(path), 5, 10) == ([], False)


def test_tail_continues_into_backups(tmp_path, block):
    path = tmp_path / "rpcd.log"
    write(tmp_path / "rpcd.log.2", [entry(n) for n in range(0, 3)])
    write(tmp_path / "rpcd.log.1", [entry(n) for n in range(3, 6)])
    write(path, [entry(n) for n in range(6, 8)])
    write(tmp_path / "rpcd.log.3", [entry(99)])  # beyond the backups asked for: never read
    assert tail(str(path), 2, 6) == ([entry(n) for n in range(2, 8)], True)
    assert tail(str(path), 2, 100) == ([entry(n) for n in range(8)], False)
    assert tail(str(path), 1, 100) == ([entry(n) for n in range(3, 8)], False)


def test_tail_after_rotation_between_two_reads(tmp_path, block):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), max_bytes=200, backups=3)
    f.write("".join(entry(n) + "\n" for n in range(3)).encode())
    assert tail(str(path), 3, 2)[0] == [entry(1), entry(2)]
    f.write("".join(entry(n) + "\n" for n in range(3, 9)).encode())  # rotates
    assert os.path.exists(f"{path}.1")
    assert tail(str(path), 3, 4)[0] == [entry(n) for n in range(5, 9)]
    assert tail(str(path), 3, 100)[0] == [entry(n) for n in range(9)]
    f.close()


# -- following --------------------------------------------------------------------------------


def test_follow_yields_new_entries_across_rotation(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path), max_bytes=1024, backups=20)
    emit = Logger(namespace="t", observer=log).info
    for n in range(3):
        emit("old {n}", n=n)
    log.flush()
    stream = logs.follow(log.path, log.backups, Filter(grep="keep"), history=2,
                         changed=log.changed, poll=60)  # a missed wake-up fails the join below
    seen: list[str] = []
    reader = gevent.spawn(lambda: seen.extend(next(stream) for _ in range(60)))
    gevent.sleep(0)
    for n in range(120):  # ~60 bytes a line: a rotation every ~17 lines
        emit("keep {n}" if n % 2 else "drop {n}", n=n)
        if n % 5 == 0:
            log.flush()
            gevent.sleep(0)
    log.flush()
    reader.join(5)
    assert [line.rsplit(" ", 1)[1] for line in seen] == [str(n) for n in range(1, 120, 2)]
    assert os.path.exists(f"{path}.5")
    stream.close()
    log.close()


def test_follow_starts_with_history_without_gap_or_repeat(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path))
    emit = Logger(namespace="t", observer=log).info
    for n in range(5):
        emit("line {n}", n=n)
    log.flush()
    stream = logs.follow(log.path, log.backups, history=2, changed=log.changed)
    first = [next(stream), next(stream)]
    emit("line {n}", n=5)
    log.flush()
    assert [x.split(" ", 3)[3] for x in [*first, next(stream)]] == ["line 3", "line 4", "line 5"]
    stream.close()
    log.close()


# -- writing ----------------------------------------------------------------------------------


def test_rotation_under_concurrent_writes_loses_nothing(tmp_path):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), max_bytes=2048, backups=1000)
    threads, per_thread = 6, 800

    def writer(t: int) -> None:
        for n in range(0, per_thread, 4):
            lines = [f"thread {t} line {n + i} {'x' * (n % 37)}\n" for i in range(4)]
            f.write("".join(lines).encode())

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    f.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("rpcd.log")]
    assert len(files) > 50  # rotated many times
    seen = []
    for p in files:
        data = p.read_bytes()
        assert len(data) <= 2048 and data.endswith(b"\n")
        seen += [tuple(line.split()[1:4:2]) for line in data.decode().splitlines()]
    assert len(seen) == threads * per_thread
    assert set(seen) == {(str(t), str(n)) for t in range(threads) for n in range(per_thread)}


def test_observer_under_concurrent_greenlets_and_rotation(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path), max_bytes=4096, backups=1000)
    emit = Logger(namespace="t", observer=log).info

    def writer(g: int) -> None:
        for n in range(300):
            emit("greenlet {g} line {n}", g=g, n=n)
            if n % 50 == 0:
                gevent.sleep(0)

    gevent.joinall([gevent.spawn(writer, g) for g in range(10)])
    log.close()
    lines = [line for p in tmp_path.iterdir() for line in p.read_text().splitlines()]
    assert len(list(tmp_path.iterdir())) > 20
    assert len(lines) == 3000
    assert len({line.split(" ", 3)[3] for line in lines}) == 3000


def test_observer_format_level_and_traceback(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path), level="warn")
    logger = Logger(namespace="rpcd.test", observer=log)
    logger.info("not written")
    logger.warn("hello {who!r} {n:.1f}", who="you", n=2)
    try:
        raise KeyError("k")
    except KeyError:
        logger.failure("it broke")
    log.close()
    text = path.read_text()
    assert "not written" not in text
    first, second = text.splitlines()[0], text.splitlines()[1:]
    assert first.endswith(" warn [rpcd.test] hello 'you' 2.0")
    assert second[0].endswith(" critical [rpcd.test] it broke")
    assert second[1].startswith("\tTraceback") and second[-1].startswith("\tbuiltins.KeyError")
    assert tail(str(path), 0, 1)[0][0].count("\n") == len(second) - 1


def test_json_format(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path), fmt="json")
    Logger(namespace="ns", observer=log).error("bad {x}", x="thing\nsecond line")
    log.close()
    obj = orjson.loads(path.read_bytes())
    assert obj["level"] == "error" and obj["namespace"] == "ns"
    assert obj["message"] == "bad thing\nsecond line" and obj["time"].endswith("Z")


def test_stdlib_logging_lands_in_the_file(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path))
    log.start()
    try:
        named = logging.getLogger("mymethods.db")
        named.debug("below the level")
        named.info("connected to %s", "db1")
        named.warning("slow query")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            named.exception("query failed")
    finally:
        log.close()
    logging.getLogger("mymethods.db").warning("after close")
    lines = path.read_text().splitlines()
    assert lines[0].endswith(" info [mymethods.db] connected to db1")
    assert lines[1].endswith(" warn [mymethods.db] slow query")
    assert lines[2].endswith(" error [mymethods.db] query failed")
    assert lines[3] == "\tTraceback (most recent call last):"
    assert lines[-1] == "\tZeroDivisionError: division by zero"
    assert logs.current() is None and "after close" not in path.read_text()


def test_unwritable_location_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LogError) as info:
        LogFile(str(tmp_path / "file" / "rpcd.log"))
    assert str(info.value) == f"cannot open log file {tmp_path}/file/rpcd.log: Not a directory"


def test_write_error_is_reported_once_and_logging_resumes(tmp_path, capfd):
    path = tmp_path / "rpcd.log"
    os.symlink("/dev/full", path)  # every write fails: "No space left on device"
    log = LogFile(str(path))
    log.file.retry_interval = 0
    log.start()
    try:
        emit = Logger(namespace="t").info
        for n in range(5):
            emit("lost {n}", n=n)
            log.flush()
        err = capfd.readouterr().err
        assert err.count("No space left on device") == 1 and err.count("\n") == 1
        os.unlink(path)  # space again: a regular file
        emit("kept")
        log.flush()
        log.flush()  # the note about the lost lines was logged by the first
    finally:
        log.close()
    lines = [line.split(" ", 3)[3] for line in path.read_text().splitlines()]
    assert lines == ["kept", "5 log lines were lost while the log could not be written "
                             "(No space left on device)"]
    assert "again" in capfd.readouterr().err


class _Sink:
    peer = "10.0.0.1:4242"


class _Call:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.sink = _Sink()


def test_access_lines_text_and_json(tmp_path):
    from twisted.logger import globalLogPublisher

    echoed: list[dict] = []
    globalLogPublisher.addObserver(echoed.append)
    text = LogFile(str(tmp_path / "text.log"))
    js = LogFile(str(tmp_path / "json.log"), fmt="json")
    try:
        text.start()  # observes the echo event too: it must not write the lines twice
        for log in (text, js):
            ok = Request("math.add", (1, 2), 7)
            log.access(_Call(ok), Response(ok, 3), 0.0012345)
            odd = Request("evil\n2026 info [x] forged", (), "a b")
            log.access(_Call(odd), Response(odd, error=RPCError(-32603, "x")), 0.5)
            legacy = Request("ping", (), None, legacy=True)
            log.refused(legacy, _Sink(), RPCError(-32000, "busy"))
            log.flush()
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
        ("math.add", 7, 1.234, "ok"), ("evil\n2026 info [x] forged", "a b", 500.0, "-32603"),
        ("ping", None, 0.0, "-32000"),
    ]
    batches = [e for e in echoed if e.get("log_namespace") == "rpcd.access"]
    assert len(batches) == 2 and batches[0]["calls"].count("\n") == 2  # one event per flush


def test_a_line_longer_than_the_rotation_size_gets_a_file_of_its_own(tmp_path):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), max_bytes=1024, backups=5)
    long = "L" * 3000 + "\n"
    f.write(("short\n" * 10 + long + "short\n" * 10).encode())
    f.close()
    assert (tmp_path / "rpcd.log.1").read_text() == long
    assert (tmp_path / "rpcd.log.2").read_text() == "short\n" * 10
    assert path.read_text() == "short\n" * 10
