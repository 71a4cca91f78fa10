"""`rpcd-call` (rpcd/client/cli.py) run in-process against a scripted peer on a UNIX socket:
--help, timeouts, getlog's output and shortcuts, --json."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
from collections.abc import Callable

import pytest

from rpcd.client import cli
from tests.conftest import free_port

# How long a scripted peer stays silent where the client should have stopped waiting (or must
# go on waiting): several times the short default timeout the tests set.
SHORT = 0.3
SILENCE = 3 * SHORT


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Peer:
    """A scripted rpcd on a UNIX socket: `script(peer, request)` answers each request (not
    rpc.cancel, which is only recorded); the peer hangs up after `lifetime` seconds, so a
    client that would wait for ever ends the test with exit 3 instead of hanging it."""

    def __init__(self, path: str, script: Callable, lifetime: float = 10.0) -> None:
        self.requests: list[dict] = []
        self.cancelled = threading.Event()
        self._script = script
        self._lifetime = lifetime
        self._done = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        with self._send_lock:
            self._conn.sendall(struct.pack(">I", len(body)) + body)

    def item(self, request: dict, item) -> None:
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "rpc.stream",
                "params": {"id": request["id"], "item": item},
            }
        )

    def result(self, request: dict, result) -> None:
        self.send({"jsonrpc": "2.0", "id": request["id"], "result": result})

    def pause(self, seconds: float) -> None:
        """Stay silent this long (less if the client cancelled or the test ended)."""
        self._done.wait(seconds)

    def close(self) -> None:
        self._done.set()
        self._listener.close()
        self._thread.join(5)

    def _run(self, request: dict) -> None:
        try:
            self._script(self, request)
        except OSError:  # the client went away
            pass

    def _serve(self) -> None:
        self._listener.settimeout(self._lifetime)
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._conn = conn
        conn.settimeout(self._lifetime)
        buffer = b""
        try:
            while not self._done.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while len(buffer) >= 4:
                    (length,) = struct.unpack(">I", buffer[:4])
                    if len(buffer) < 4 + length:
                        break
                    request = json.loads(buffer[4 : 4 + length])
                    buffer = buffer[4 + length :]
                    self.requests.append(request)
                    if request.get("method") == "rpc.cancel":
                        self.cancelled.set()
                    else:  # in its own thread: a script that pauses must not stop the reading
                        threading.Thread(target=self._run, args=(request,), daemon=True).start()
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture
def peer(tmp_path, monkeypatch):
    """peer(script) -> a Peer; its endpoint is in $RPCD_ENDPOINT. The default timeout is
    SHORT, so that a test sees it pass."""
    monkeypatch.setattr(cli, "DEFAULT_TIMEOUT", SHORT, raising=False)
    monkeypatch.delenv("RPCD_AUTH_KEY_FILE", raising=False)
    path = str(tmp_path / "rpcd.sock")
    monkeypatch.setenv("RPCD_ENDPOINT", f"unix:{path}")
    started: list[Peer] = []

    def start(script: Callable, lifetime: float = 10.0) -> Peer:
        started.append(Peer(path, script, lifetime))
        return started[-1]

    yield start
    for p in started:
        p.close()


def run(argv: list[str], monkeypatch, stdout: io.StringIO | None = None) -> tuple[int, str]:
    """main(argv) with stdout captured (a terminal if `stdout` is a TTY): (exit code, output)."""
    stdout = stdout if stdout is not None else io.StringIO()
    monkeypatch.setattr("sys.stdout", stdout)
    return cli.main(argv), stdout.getvalue()


# -- --help ---------------------------------------------------------------------------------


def test_help_has_examples_timeouts_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    examples = text[text.index("examples") :]
    for example in ("rpcd-call add 2 3", "rpcd-call math.mul -k a=6", "rpcd-call getlog -f"):
        assert example in examples
    codes = text[text.index("exit codes:") :]
    assert "within the timeout (-t, default 60 s)" in " ".join(codes.split())
    for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
        assert f"\n  {code}" in codes
    timeouts = " ".join(text[text.index("timeouts:") : text.index("exit codes:")].split())
    assert "no reply within 60 s fails" in timeouts
    assert "getlog -f" in timeouts and "without limit unless -t" in timeouts


# -- timeouts -------------------------------------------------------------------------------


def test_a_call_without_reply_times_out_by_default(peer, monkeypatch, capsys):
    p = peer(lambda p, request: None)  # never answers
    code, out = run(["sleep", "600"], monkeypatch)
    err = capsys.readouterr().err
    assert (code, out) == (cli.EXIT_REMOTE, "")
    assert err.startswith(f"rpcd-call: nothing from sleep within {SHORT:g} s")
    assert "-t SECONDS" in err  # says how to wait longer
    assert p.cancelled.wait(5)  # and the call was cancelled on the server


def test_default_timeout_is_the_clients(monkeypatch):
    assert cli.DEFAULT_TIMEOUT == 60.0


def test_minus_t_zero_waits_for_ever(peer, monkeypatch):
    def late(p, request):
        p.pause(SILENCE)
        p.result(request, "late")

    peer(late)
    assert run(["-t", "0", "sleep", "1"], monkeypatch) == (0, '"late"\n')


def test_a_stream_waits_for_each_item_without_limit_once_it_streams(peer, monkeypatch):
    def slow_stream(p, request):
        p.item(request, 0)
        p.pause(SILENCE)  # longer than the default timeout
        p.item(request, 1)
        p.result(request, 2)

    peer(slow_stream)
    assert run(["count", "2", "100"], monkeypatch) == (0, "0\n1\n2\n")


def test_minus_t_bounds_each_item_of_a_stream(peer, monkeypatch, capsys):
    def slow_stream(p, request):
        p.item(request, 0)
        p.pause(SILENCE)
        p.result(request, 1)

    p = peer(slow_stream)
    assert run(["-t", str(SHORT), "count", "2", "100"], monkeypatch) == (1, "0\n")
    assert capsys.readouterr().err == f"rpcd-call: nothing from count within {SHORT:g} s\n"
    assert p.cancelled.wait(5)


def test_follow_waits_for_its_first_line_without_limit(peer, monkeypatch):
    def quiet_log(p, request):
        p.pause(SILENCE)  # no entry matches for a while
        p.item(request, "a line")
        p.result(request, None)

    p = peer(quiet_log)
    assert run(["getlog", "-f", "--grep", "x"], monkeypatch) == (0, '"a line"\nnull\n')
    assert p.requests[0]["params"] == {"grep": "x", "follow": True}


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_bad_timeout_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["-t", value, "ping"])
    assert exit.value.code == cli.EXIT_USAGE
    assert "-t/--timeout" in capsys.readouterr().err


# -- getlog's output --------------------------------------------------------------------------

LOG = {
    "lines": [
        "2026-05-01T12:00:00.123Z info [rpcd.access] 127.0.0.1:50312 add id=7 0.084 ms ok",
        "2026-05-01T12:00:00.125Z error [rpcd.dispatch] method boom raised KeyError\n"
        "\tTraceback (most recent call last):\n\t...",
    ],
    "truncated": True,
}


def answer(result):
    return lambda p, request: p.result(request, result)


def test_getlog_prints_raw_lines_on_a_terminal(peer, monkeypatch):
    peer(answer(LOG))
    code, out = run(["getlog", "-n", "2"], monkeypatch, TTY())
    assert code == 0
    assert out == "\n".join(LOG["lines"]) + "\n"  # as the log file holds them


def test_getlog_prints_json_when_piped(peer, monkeypatch):
    peer(answer(LOG))
    code, out = run(["getlog"], monkeypatch)
    assert (code, json.loads(out)) == (0, LOG) and out.count("\n") == 1


def test_json_option_forces_compact_json_on_a_terminal(peer, monkeypatch):
    peer(answer(LOG))
    code, out = run(["--json", "getlog"], monkeypatch, TTY())
    assert (code, json.loads(out)) == (0, LOG) and out.count("\n") == 1


def test_json_option_for_any_method(peer, monkeypatch):
    peer(answer({"a": [1, 2]}))
    assert run(["--json", "echo", '{"a": [1, 2]}'], monkeypatch, TTY()) == (0, '{"a":[1,2]}\n')


def test_json_option_streams_items_as_json(peer, monkeypatch):
    def stream(p, request):
        p.item(request, "a line")
        p.result(request, None)

    peer(stream)
    assert run(["--json", "getlog", "-f"], monkeypatch, TTY()) == (0, '"a line"\nnull\n')


def test_json_option_with_list_and_describe(peer, monkeypatch):
    add = {"name": "add", "signature": "add(a, b)", "doc": "Add two numbers."}
    answers = {"rpc.methods": [add], "rpc.describe": add}
    peer(lambda p, request: p.result(request, answers[request["method"]]))
    code, out = run(["--json", "--list"], monkeypatch, TTY())
    assert (code, json.loads(out)) == (0, [add]) and out.count("\n") == 1


def test_json_option_with_describe(peer, monkeypatch):
    add = {"name": "add", "signature": "add(a, b)", "doc": "Add two numbers."}
    peer(answer(add))
    code, out = run(["--json", "--describe", "add"], monkeypatch, TTY())
    assert (code, json.loads(out)) == (0, add) and out.count("\n") == 1


def test_other_methods_print_indented_json_on_a_terminal(peer, monkeypatch):
    peer(answer({"lines": ["not a log"]}))
    code, out = run(["echo", "x"], monkeypatch, TTY())
    assert code == 0 and out == '{\n  "lines": [\n    "not a log"\n  ]\n}\n'


# -- getlog's shortcuts -----------------------------------------------------------------------


def test_getlog_shortcuts_become_its_named_arguments(peer, monkeypatch):
    p = peer(answer({"lines": [], "truncated": False}))
    argv = ["getlog", "-n", "50", "--level", "warn", "--grep", "some text"]
    assert run(argv, monkeypatch)[0] == 0
    assert p.requests[0]["method"] == "getlog"
    assert p.requests[0]["params"] == {"lines": 50, "level": "warn", "grep": "some text"}


@pytest.mark.parametrize(
    "shortcut", [["-n", "5"], ["--lines", "5"], ["--level", "warn"], ["--grep", "x"], ["-f"]]
)
def test_getlog_shortcuts_refused_for_other_methods(shortcut, monkeypatch, capsys):
    # Nothing listens there: a usage error must come before any attempt to connect (exit 3).
    monkeypatch.setenv("RPCD_ENDPOINT", f"tcp:127.0.0.1:{free_port()}")
    code, out = run(["count", *shortcut], monkeypatch)
    err = capsys.readouterr().err
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.count("\n") == 1 and err.startswith("rpcd-call: ")
    assert "getlog" in err and "-k NAME=VALUE" in err


# -- --list -----------------------------------------------------------------------------------


def test_list_shows_each_methods_first_sentence(peer, monkeypatch):
    methods = [
        {"name": "one", "signature": "one()", "doc": "One line. And more.\n\nDetails."},
        {
            "name": "rpc.cancel",
            "signature": "rpc.cancel(id)",
            "doc": "Stop a call by its id: the call is\nanswered -32006 and a stream ends. True"
            " if\nit was still pending.",
        },
        {"name": "count", "signature": "count(n)", "doc": "Stream 0..n-1, no full stop"},
        {"name": "bare", "signature": "bare()", "doc": ""},
    ]
    peer(answer(methods))
    code, out = run(["--list"], monkeypatch)
    assert code == 0
    assert out.splitlines() == [
        "one()           One line.",
        "rpc.cancel(id)  Stop a call by its id: the call is answered -32006 and a stream ends.",
        "count(n)        Stream 0..n-1, no full stop",
        "bare()",
    ]
