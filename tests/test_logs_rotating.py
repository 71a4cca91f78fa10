"""rpcd.logs.rotating: the size-rotated file, its write errors and its concurrency."""

from __future__ import annotations

import os
import threading

import pytest
from twisted.logger import Logger

from rpcd.logs import LogError, LogFile, RotatingFile


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
    assert lines == [
        "kept",
        "5 log lines were lost while the log could not be written (No space left on device)",
    ]
    assert "again" in capfd.readouterr().err


def test_a_line_longer_than_the_rotation_size_gets_a_file_of_its_own(tmp_path):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), max_bytes=1024, backups=5)
    long = "L" * 3000 + "\n"
    f.write(("short\n" * 10 + long + "short\n" * 10).encode())
    f.close()
    assert (tmp_path / "rpcd.log.1").read_text() == long
    assert (tmp_path / "rpcd.log.2").read_text() == "short\n" * 10
    assert path.read_text() == "short\n" * 10
