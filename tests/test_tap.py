"""`twistd rpcd` start-up as an operator meets it: --help, and bad settings refused in one line.

Each case runs twistd as a subprocess (parsing the options installs the reactor, which must
not happen inside the test process). None of them gets as far as listening.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from rpcd.config import Settings

TWISTD = str(Path(sys.executable).with_name("twistd"))


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_twistd_help_lists_rpcd(tmp_path):
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert any(line.split()[:1] == ["rpcd"] for line in result.stdout.splitlines())


def test_rpcd_help_lists_every_option_with_its_default(tmp_path):
    result = twistd("rpcd", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # help text is wrapped; join it back
    for f in fields(Settings):
        if f.metadata["flag"]:
            assert f"--{f.metadata['flag']}" in text
            continue
        if f.default is False:  # a setting that is off by default is a plain switch
            assert f"--{f.name.replace('_', '-')} " in text, f.name
            continue
        assert f"--{f.name.replace('_', '-')}=" in text, f.name
    assert "[default: 1024]" in text and "[default: tcp:5354:interface=127.0.0.1]" in text
    assert "--config=" in text


@pytest.mark.parametrize(
    ("args", "toml", "expected"),
    [
        (["--max-connections", "abc"], None, "max_connections: 'abc' (allowed: an integer >= 1)"),
        (["--byteorder", "middle"], None, "byteorder: 'middle' (allowed: one of big, little)"),
        (["--bogus", "1"], None, "option --bogus not recognized"),
        ([], "max_conections = 5\n", "unknown setting 'max_conections'"),
        ([], "idle_timeout = -1\n", "idle_timeout: -1 (allowed: a number of seconds >= 0"),
        ([], "idle_timeout = \n", "is not valid TOML"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(tmp_path, args, toml, expected):
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
        args = [*args, "--config", "bad.toml"]
    result = twistd("rpcd", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpcd: "), result.stderr
    assert expected in lines[0]


def test_command_line_wins_over_the_file_in_twistd(tmp_path):
    # A good file value overridden by a bad command-line value: the command line is what counts.
    (tmp_path / "ok.toml").write_text("max_inflight = 5\n")
    result = twistd("rpcd", "--config", "ok.toml", "--max-inflight", "0", cwd=tmp_path)
    assert result.returncode != 0 and "max_inflight: '0'" in result.stderr


@pytest.mark.parametrize("daemonize", [False, True], ids=["nodaemon", "daemon"])
def test_port_in_use_stops_start_up_with_one_line(tmp_path, daemonize):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
    twistd_args = (
        ["--pidfile=rpcd.pid", "--logfile=twistd.log"] if daemonize else ["-n", "--pidfile="]
    )
    try:
        result = subprocess.run(
            [TWISTD, *twistd_args, "rpcd", "--listen", endpoint],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr == f"rpcd: cannot listen on {endpoint}: address already in use\n"
    assert not (tmp_path / "rpcd.pid").exists()


def test_rpcd_help_gives_units_minimums_and_choices(tmp_path):
    result = twistd("rpcd", "--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    options = {}  # option -> its help text, up to the next option
    for chunk in text.split(" --")[1:]:
        name, _, rest = chunk.partition(" ")
        options[name.rstrip("=")] = rest
    for f in fields(Settings):
        option = f.name.replace("_", "-")
        if isinstance(f.default, float):
            assert "a number of seconds" in options[option], option
        elif isinstance(f.default, int) and not isinstance(f.default, bool):
            assert "an integer >= " in options[option] or "an integer from " in options[option]
    assert "one of debug, info, warn, error, critical" in options["log-level"]
    assert "an integer from 16 to 4294967295, in bytes" in options["max-frame-bytes"]
    assert "an integer >= 1024, in bytes" in options["max-outbuf"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ping(port: int) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": 1}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(struct.pack(">I", len(body)) + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = c.recv(65536)
            assert chunk, "connection closed before the reply"
            data += chunk
    return json.loads(data[4:])


def test_under_nodaemon_access_lines_reach_the_terminal_once_and_sigusr1_reopens_the_log(
    tmp_path,
):
    port = _free_port()
    out = tmp_path / "terminal.out"
    with out.open("wb") as terminal:
        daemon = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "rpcd", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path,
            stdout=terminal,
            stderr=subprocess.STDOUT,
        )
    log = tmp_path / "rpcd.log"
    try:
        _wait(lambda: log.exists() and "rpcd serving" in log.read_text(), "rpcd serving")
        assert _ping(port)["result"] == "pong"
        _wait(lambda: " ping id=1 " in log.read_text(), "the first access line")
        # logrotate's way: move the file, then signal; the new file appears at once.
        log.rename(tmp_path / "rpcd.log.moved")
        daemon.send_signal(signal.SIGUSR1)
        _wait(lambda: log.exists() and "reopened" in log.read_text(), "the reopened log")
        assert daemon.poll() is None
        assert _ping(port)["result"] == "pong"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert daemon.returncode == 0
    access = [line for line in out.read_text().splitlines() if " ping id=1 " in line]
    assert len(access) == 2, out.read_text()
    for line in access:  # rpcd's own line, not wrapped in a second timestamp and prefix
        assert line.split(" ", 3)[1:3] == ["info", "[rpcd.access]"], line
        assert line.count("Z ") == 1 and "#info]" not in line, line
    assert log.read_text().count(" ping id=1 ") == 1
    assert (tmp_path / "rpcd.log.moved").read_text().count(" ping id=1 ") == 1


def test_a_second_daemon_on_the_same_log_file_refuses_to_start_naming_the_first(tmp_path):
    first_port, second_port = _free_port(), _free_port()
    first = subprocess.run(  # daemonized: the lock must survive twistd's fork
        [
            TWISTD,
            "--pidfile=first.pid",
            "--logfile=twistd.log",
            "rpcd",
            "--listen",
            f"tcp:{first_port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "first.pid").read_text())
    log = tmp_path / "rpcd.log"
    try:
        _wait(lambda: log.exists() and "rpcd serving" in log.read_text(), "rpcd serving")
        second = twistd("rpcd", "--listen", f"tcp:{second_port}:interface=127.0.0.1", cwd=tmp_path)
        assert second.returncode == 1
        assert second.stderr == (
            f"rpcd: log file {log} is in use by pid {pid}: give each daemon its own log_file\n"
        )
        assert log.read_text().count("rpcd serving") == 1
    finally:
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: not (tmp_path / "first.pid").exists(), "the first daemon to stop")
