"""rpcd.logs.rotating: the size-rotated file, its write errors and its concurrency."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
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


def _full_disk(monkeypatch, log_file):
    """Every write to the log file fails with ENOSPC until the returned callable is called."""
    real = os.write

    def write(fd, data):
        if fd == log_file._fd:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return lambda: monkeypatch.setattr(os, "write", real)


def test_write_error_is_reported_once_and_logging_resumes(tmp_path, capfd, monkeypatch):
    # (A symbolic link to /dev/full was the full disk here: such a log file is now refused.)
    path = tmp_path / "rpcd.log"
    log = LogFile(str(path))
    log.file.retry_interval = 0
    space_again = _full_disk(monkeypatch, log.file)
    log.start()
    try:
        emit = Logger(namespace="t").info
        for n in range(5):
            emit("lost {n}", n=n)
            log.flush()
        err = capfd.readouterr().err
        assert err.count("No space left on device") == 1 and err.count("\n") == 1
        space_again()
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


# -- what the file must be, and who may write it (issue 10, points 18, 21-24) -------------------


def test_a_symbolic_link_or_a_non_regular_file_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    os.symlink(secret, tmp_path / "link.log")
    with pytest.raises(LogError, match="link.log: it is a symbolic link"):
        RotatingFile(str(tmp_path / "link.log"), 1024, 1)
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(LogError, match="fifo.log: not a regular file"):
        RotatingFile(str(tmp_path / "fifo.log"), 1024, 1)
    assert secret.read_text() == "root only\n"


def test_a_torn_last_line_is_ended_before_the_next_start_writes(tmp_path):
    path = tmp_path / "rpcd.log"
    path.write_bytes(b"whole line\ntorn by a cra")
    f = RotatingFile(str(path), 1024, 1)
    f.write(b"first line of this start\n")
    f.close()
    assert path.read_bytes() == b"whole line\ntorn by a cra\nfirst line of this start\n"


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_deleted_or_moved_log_is_reopened_at_the_next_write(tmp_path, how):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), 1024, 3)
    f.write(b"before\n")
    if how == "deleted":
        path.unlink()
    else:
        path.rename(tmp_path / "elsewhere")
    f.write(b"after\n")
    f.close()
    assert path.read_bytes() == b"after\n"


def test_rotation_of_a_deleted_log_destroys_no_backup(tmp_path):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), 64, 2)
    for name, text in [("rpcd.log.1", b"newest backup\n"), ("rpcd.log.2", b"oldest backup\n")]:
        (tmp_path / name).write_bytes(text)
    f.write(b"x" * 40 + b"\n")
    path.unlink()
    f.write(b"y" * 40 + b"\n")  # would rotate: the deleted file is reopened instead
    f.close()
    assert (tmp_path / "rpcd.log.1").read_bytes() == b"newest backup\n"
    assert (tmp_path / "rpcd.log.2").read_bytes() == b"oldest backup\n"
    assert path.read_bytes() == b"y" * 40 + b"\n"


def test_cannot_rotate_is_said_once_then_once_when_it_clears(tmp_path, capfd, monkeypatch):
    path = tmp_path / "rpcd.log"
    f = RotatingFile(str(path), 64, 3)
    (tmp_path / "rpcd.log.1").write_bytes(b"backup\n")
    real = os.replace

    def read_only(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src)

    monkeypatch.setattr(os, "replace", read_only)  # a read-only directory (the tests run as root)
    for n in range(20):
        f.write(b"line %02d %s\n" % (n, b"z" * 30))
    err = capfd.readouterr().err
    assert err.count("cannot rotate log file") == 1, err
    assert (tmp_path / "rpcd.log.1").read_bytes() == b"backup\n"
    monkeypatch.setattr(os, "replace", real)
    for n in range(20):
        f.write(b"line %02d %s\n" % (n, b"z" * 30))
    f.close()
    err = capfd.readouterr().err
    assert err.count("rotating log file") == 1 and "cannot rotate" not in err, err
    assert (tmp_path / "rpcd.log.2").exists()


HOLD = """
import sys, time
from rpcd.logs import RotatingFile
f = RotatingFile(sys.argv[1], 1024, 1)
f.write(b"held\\n")
print("ready", flush=True)
time.sleep(60)
"""


def test_a_second_writer_of_the_same_file_is_refused_naming_the_pid(tmp_path):
    path = tmp_path / "rpcd.log"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(LogError) as refused:
            RotatingFile(str(path), 1024, 1)
        assert str(refused.value) == (
            f"log file {path} is in use by pid {holder.pid}: give each daemon its own log_file"
        )
        with pytest.raises(LogError, match="in use by pid"):
            RotatingFile(str(path), 1024, 1, shared=True)
    finally:
        holder.kill()
        holder.wait(10)
    RotatingFile(str(path), 1024, 1).close()  # free again once its holder is gone


def test_shared_writers_take_turns_and_notice_each_other_rotating(tmp_path):
    path = tmp_path / "rpcd.log"
    writers = [RotatingFile(str(path), 256, 50, shared=True) for _ in range(3)]
    with pytest.raises(LogError, match="in use"):
        RotatingFile(str(path), 256, 50)  # an exclusive daemon is refused while they write
    for n in range(60):
        writers[n % 3].write(b"writer %d line %02d %s\n" % (n % 3, n, b"w" * 20))
    for w in writers:
        w.close()
    files = sorted(tmp_path.iterdir())
    lines = [line for p in files for line in p.read_bytes().splitlines()]
    assert len(lines) == 60 and len(set(lines)) == 60
    assert all(p.stat().st_size <= 256 + 40 for p in files)


def test_a_link_planted_at_the_log_path_while_running_is_not_written_through(tmp_path, capfd):
    path = tmp_path / "rpcd.log"
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    f = RotatingFile(str(path), 1024, 1)
    f.write(b"before\n")
    path.unlink()
    os.symlink(secret, path)
    f.write(b"planted\n")  # the path no longer names the open file: reopened, refused
    f.reopen()  # SIGUSR1 refuses it the same way
    f.close()
    assert secret.read_text() == "root only\n"
    err = capfd.readouterr().err
    assert err.count("it is a symbolic link") == 1, err
