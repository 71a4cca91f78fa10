"""rpcd.logs.observer: the log observer, its formats and the stdlib `logging` bridge."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import gevent
import orjson
from twisted.logger import Logger, LogLevel

from rpcd import logs
from rpcd.logs import LogFile, tail


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


def test_events_replayed_by_twistd_are_written_once_and_only_from_the_start(tmp_path):
    from twisted.logger import globalLogPublisher

    log = LogFile(str(tmp_path / "rpcd.log"))
    before = {
        "log_level": LogLevel.info,
        "log_namespace": "t",
        "log_format": "before",
        "log_time": time.time() - 1,
    }
    log.start()
    try:
        live = {
            "log_level": LogLevel.info,
            "log_namespace": "t",
            "log_format": "live",
            "log_time": time.time(),
        }
        globalLogPublisher(live)
        for event in (before, live):  # what globalLogBeginner.beginLoggingTo replays
            globalLogPublisher(event)
    finally:
        log.close()
    assert [line.split(" ", 3)[3] for line in (tmp_path / "rpcd.log").read_text().splitlines()] == [
        "live"
    ]


THREADS = """
from gevent import monkey

monkey.patch_all()
import logging, sys, time
import gevent
from rpcd.logs import LogFile

start_thread = monkey.get_original("_thread", "start_new_thread")
allocate = monkey.get_original("_thread", "allocate_lock")
log = LogFile(sys.argv[1])
log.start()
done = []
guard = allocate()

def worker(t):
    for n in range(40):
        logging.getLogger(f"thread{t}").warning("thread %d line %d", t, n)
    with guard:
        done.append(t)

for t in range(4):  # real OS threads, as gevent's threadpool or deferToThread run them
    start_thread(worker, (t,))
deadline = time.monotonic() + 20
longest = 0.0
while len(done) < 4 and time.monotonic() < deadline:
    before = time.monotonic()
    gevent.sleep(0.005)  # the loop keeps running meanwhile
    longest = max(longest, time.monotonic() - before)
log.close()
print(len(done), round(longest, 3))
"""


def test_stdlib_logging_from_real_threads_neither_blocks_nor_loses_lines(tmp_path):
    path = tmp_path / "rpcd.log"
    result = subprocess.run(
        [sys.executable, "-c", THREADS, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    finished, longest = result.stdout.split()
    assert finished == "4" and float(longest) < 1.0, result.stdout
    lines = path.read_text().splitlines()
    assert len(lines) == 160
    assert {line.split(" ", 3)[3] for line in lines} == {
        f"thread {t} line {n}" for t in range(4) for n in range(40)
    }


def test_twisted_legacy_lines_are_tagged_twisted_not_log_legacy(tmp_path):
    from twisted.python import log as legacy

    out = LogFile(str(tmp_path / "rpcd.log"))
    out.start()
    try:
        legacy.msg("Server Shut Down.")
        legacy.msg("connection made", system="RPCProtocol,0,127.0.0.1")
    finally:
        out.close()
    lines = [line.split(" ", 1)[1] for line in (tmp_path / "rpcd.log").read_text().splitlines()]
    assert lines == [
        "info [twisted] Server Shut Down.",
        "info [RPCProtocol,0,127.0.0.1] connection made",
    ]
