"""`rpcd-call` run as a subprocess against the real daemon: output, exit codes, getlog shortcuts."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from rpcd.client import Client
from tests.conftest import free_port, wait_for
from tests.integration.conftest import ROOT

RPCD_CALL = str(Path(sys.executable).with_name("rpcd-call"))


@pytest.fixture
def daemon(shared_daemon):
    """Every test here only needs a daemon with the default settings."""
    return shared_daemon


def read_line(stream, timeout: float = 20) -> str:
    """One line from a child's pipe, failing the test if none comes within `timeout`."""
    # A thread, not select(): the pipe's buffer may already hold the line select would wait for.
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert line, f"no output within {timeout} s"
    return line[0]


def run(*args: str, endpoint: str | None = None, env: dict | None = None, timeout: float = 20):
    argv = [RPCD_CALL, *(("-c", endpoint) if endpoint else ()), *args]
    environ = {
        k: v for k, v in os.environ.items() if k not in ("RPCD_ENDPOINT", "RPCD_AUTH_KEY_FILE")
    }
    environ.update(env or {})
    return subprocess.run(
        argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout
    )


def endpoint_of(daemon) -> str:
    return f"tcp:127.0.0.1:{daemon.port}"


def test_call_prints_compact_json_when_piped(daemon):
    ep = endpoint_of(daemon)
    out = run("add", "2", "3", endpoint=ep)
    assert (out.returncode, out.stdout, out.stderr) == (0, "5\n", "")
    out = run("echo", '{"a": [1, 2]}', endpoint=ep)
    assert out.stdout == '{"a":[1,2]}\n'  # valid JSON is parsed, and printed compact
    out = run("echo", "hello world", endpoint=ep)
    assert out.stdout == '"hello world"\n'  # not JSON: taken as a string
    out = run("add", "-k", "a=1", "-k", "b=-4", endpoint=ep)
    assert out.stdout == "-3\n"
    out = run("add", "-1", "-2", endpoint=ep)
    assert out.stdout == "-3\n"  # negative numbers are arguments, not options


def test_endpoint_from_environment(daemon):
    out = run("ping", env={"RPCD_ENDPOINT": endpoint_of(daemon)})
    assert (out.returncode, out.stdout) == (0, '"pong"\n')


def run_on_terminal(*args: str, timeout: float = 20) -> tuple[int, str]:
    """rpcd-call ARGS with its stdout on a pseudo-terminal: (exit code, what it printed)."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen([RPCD_CALL, *args], cwd=ROOT, stdout=secondary, stderr=subprocess.PIPE)
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([main], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            proc.kill()
            raise AssertionError(f"rpcd-call did not finish within {timeout} s: {chunks!r}")
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    code = proc.wait(timeout)
    return code, b"".join(chunks).decode().replace("\r\n", "\n")


def test_indented_json_on_a_terminal(daemon):
    code, text = run_on_terminal("-c", endpoint_of(daemon), "echo", '{"a": [1]}')
    assert code == 0
    assert json.loads(text) == {"a": [1]} and text.startswith("{\n  ")


def test_json_option_prints_compact_json_on_a_terminal(daemon):
    code, text = run_on_terminal("-c", endpoint_of(daemon), "--json", "echo", '{"a": [1]}')
    assert (code, text) == (0, '{"a":[1]}\n')


def test_getlog_prints_log_lines_on_a_terminal(daemon):
    # A method that raises logs its traceback: one entry over several lines, as in the file.
    ep = endpoint_of(daemon)
    assert run("boom", endpoint=ep).returncode == 1
    c = Client(ep)
    grep = "method boom raised KeyError"
    wait_for(lambda: c.call("getlog", grep=grep)["lines"], 20, message=daemon.log)
    (entry,) = c.call("getlog", lines=1, grep=grep)["lines"]
    c.close()
    code, text = run_on_terminal("-c", ep, "getlog", "-n", "1", "--grep", grep)
    assert code == 0
    assert text == entry + "\n"  # the raw entry: no JSON, no quotes, no \n or \t escapes
    lines = text.splitlines()
    assert grep in lines[0] and lines[1] == "\tTraceback (most recent call last):"
    code, text = run_on_terminal("-c", ep, "--json", "getlog", "-n", "1", "--grep", grep)
    assert code == 0 and text.count("\n") == 1 and json.loads(text)["lines"] == [entry]


def test_getlog_shortcuts_refused_for_other_methods(daemon):
    out = run("fakelog", "-n", "5", endpoint=endpoint_of(daemon))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "rpcd-call: -n/--lines, --level, --grep and -f/--follow are getlog's;"
        " give fakelog named arguments with -k NAME=VALUE\n"
    )
    out = run("fakelog", "-k", "lines=5", endpoint=endpoint_of(daemon))
    assert (out.returncode, json.loads(out.stdout)["lines"]) == (0, 5)  # -k still reaches it


def test_exit_codes(daemon):
    ep = endpoint_of(daemon)
    out = run("nosuch", endpoint=ep)
    assert out.returncode == 1 and out.stdout == ""
    assert "-32601" in out.stderr and "method not found: nosuch" in out.stderr
    out = run("boom", endpoint=ep)
    assert out.returncode == 1 and "KeyError" in out.stderr
    out = run("sleep", "5", "-t", "0.2", endpoint=ep)
    assert out.returncode == 1 and "within 0.2 s" in out.stderr
    assert run(endpoint=ep).returncode == 2  # no METHOD
    assert run("add", "1", "-k", "b=2", endpoint=ep).returncode == 2  # both kinds of params
    assert run("add", "-k", "novalue", endpoint=ep).returncode == 2
    assert run("ping", endpoint="carrier-pigeon:coop").returncode == 2
    port = free_port()
    out = run("ping", endpoint=f"tcp:127.0.0.1:{port}")
    assert out.returncode == 3
    assert out.stderr == (
        f"rpcd-call: cannot connect to tcp:127.0.0.1:{port}: connection refused"
        " — is rpcd running?\n"
    )


def test_list_and_describe(daemon):
    ep = endpoint_of(daemon)
    out = run("--list", endpoint=ep)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    add = next(line for line in lines if line.startswith("add("))
    assert add.split() == ["add(a,", "b)", "Add", "two", "numbers."]
    assert any(line.startswith("ping([value])") for line in lines)
    assert any(line.startswith("rpc.stats()") for line in lines)
    stubborn = next(line for line in lines if line.startswith("stubborn("))
    assert stubborn.endswith("a timeout must still stop it.")  # the first line only
    out = run("--describe", "fakelog", endpoint=ep)
    assert out.returncode == 0
    assert out.stdout.splitlines()[0] == "fakelog(lines=10, level='info', grep=None, follow=False)"
    assert "Stands in for getlog" in out.stdout
    assert run("--describe", "nosuch", endpoint=ep).returncode == 1


def log_entry(daemon, ep: str) -> str:
    """A name of its own in the daemon's log: a call to a method of that name is refused,
    and the refusal logged as an access line (at info); the name is returned once getlog
    sees it (access lines are written in batches)."""
    token = f"cli-{uuid.uuid4().hex}"
    assert run(token, endpoint=ep).returncode == 1
    c = Client(ep)
    wait_for(lambda: c.call("getlog", grep=token)["lines"], 20, message=daemon.log)
    c.close()
    return token


def test_getlog_shortcuts_map_to_named_params(daemon):
    ep = endpoint_of(daemon)
    token = log_entry(daemon, ep)
    out = run("getlog", "-n", "50", "--level", "info", "--grep", token, endpoint=ep)
    assert out.returncode == 0, out.stderr
    (line,) = json.loads(out.stdout)["lines"]  # grep=token, level=info
    assert token in line and " info [rpcd.access] " in line
    out = run("getlog", "--level", "warn", "--grep", token, endpoint=ep)
    assert json.loads(out.stdout)["lines"] == []  # level=warn: the access line is info
    out = run("getlog", "-n", "0", "--grep", token, endpoint=ep)
    assert json.loads(out.stdout) == {"lines": [], "truncated": True}  # lines=0


def test_follow_streams_until_ctrl_c(start_daemon):
    daemon = start_daemon()  # its own daemon: the stats below count from zero
    ep = endpoint_of(daemon)
    token = log_entry(daemon, ep)
    proc = subprocess.Popen(
        [RPCD_CALL, "-c", ep, "getlog", "-f", "--grep", token],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(read_line(proc.stdout))  # the entry already there
        assert run(token, endpoint=ep).returncode == 1  # and one written while following
        second = json.loads(read_line(proc.stdout))
    except BaseException:
        proc.kill()
        raise
    assert token in first and token in second and first != second
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0, proc.stderr.read()
    # Ctrl-C cancelled the call on the server: it is answered -32006 and no longer runs.
    c = Client(ep)
    for _ in range(250):
        stats = c.call("rpc.stats")
        if stats["methods"].get("getlog", {}).get("errors") == 1:
            break
        time.sleep(0.02)
    assert stats["methods"]["getlog"]["errors"] == 1
    assert stats["calls"]["errors"]["-32006"] == 1
    assert stats["calls"]["in_flight"] == 1  # this stats call only
