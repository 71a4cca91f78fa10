"""rpcd.logs.reader: the tail reader, its filters and the follower behind `getlog`."""

from __future__ import annotations

import os

import gevent
import orjson
import pytest
from twisted.logger import Logger

from rpcd.logs import Filter, LogFile, RotatingFile, follow, reader, tail


def entry(n: int, level: str = "info", text: str = "", second: int = 0) -> str:
    return f"2026-01-01T00:00:{second:02d}.{n % 1000:03d}Z {level} [test] line {n}{text}"


def write(path, lines: list[str], end: str = "\n") -> None:
    path.write_bytes(("\n".join(lines) + end).encode())


@pytest.fixture(params=[3, 7, reader.BLOCK], ids=lambda b: f"block{b}")
def block(request, monkeypatch):
    """Run a reader test with tiny blocks too, so lines and characters straddle them."""
    monkeypatch.setattr(reader, "BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("end", ["\n", ""], ids=["newline", "no-newline"])
def test_tail_with_and_without_trailing_newline(tmp_path, block, end):
    path = tmp_path / "rpcd.log"
    write(path, [entry(n) for n in range(10)], end)
    assert tail(str(path), 0, 3) == ([entry(7), entry(8), entry(9)], True)
    assert tail(str(path), 0, 10) == ([entry(n) for n in range(10)], False)
    assert tail(str(path), 0, 50) == ([entry(n) for n in range(10)], False)


def test_tail_line_longer_than_a_block(tmp_path, block):
    path = tmp_path / "rpcd.log"
    long = entry(1, text="x" * (3 * reader.BLOCK + 5))
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
        orjson.dumps(
            {
                "time": f"2026-01-01T00:00:0{n}.000Z",
                "level": level,
                "namespace": "t",
                "message": f"m{n}",
            }
        ).decode()
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


def test_follow_yields_new_entries_across_rotation(tmp_path):
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path), max_bytes=1024, backups=20)
    emit = Logger(namespace="t", observer=log).info
    for n in range(3):
        emit("old {n}", n=n)
    log.flush()
    stream = follow(
        log.path, log.backups, Filter(grep="keep"), history=2, changed=log.changed, poll=60
    )  # a missed wake-up fails the join below
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
    stream = follow(log.path, log.backups, history=2, changed=log.changed)
    first = [next(stream), next(stream)]
    emit("line {n}", n=5)
    log.flush()
    assert [x.split(" ", 3)[3] for x in [*first, next(stream)]] == ["line 3", "line 4", "line 5"]
    stream.close()
    log.close()


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_since_outside_the_calendar_in_utc_is_a_value_error(since):
    # getlog answers a ValueError with -32602; an OverflowError was a -32603 and a traceback.
    with pytest.raises(ValueError, match="out of range"):
        Filter(since=since)


def test_a_link_or_fifo_planted_at_a_backup_name_is_not_read(tmp_path):
    from twisted.logger import globalLogPublisher

    path = tmp_path / "rpcd.log"
    write(path, [entry(2)])
    write(tmp_path / "rpcd.log.1", [entry(1)])
    secret = tmp_path / "secret"
    secret.write_text("root only: the password\n")
    secret.chmod(0o600)
    os.symlink(secret, tmp_path / "rpcd.log.2")
    os.mkfifo(tmp_path / "rpcd.log.3")  # would block a reader that opened it
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert tail(str(path), 3, 100) == ([entry(1), entry(2)], False)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = sorted((e["name"].rsplit("/", 1)[1], e["why"]) for e in events if "why" in e)
    assert warned == [("rpcd.log.2", "it is a symbolic link"), ("rpcd.log.3", "not a regular file")]
