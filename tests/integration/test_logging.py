"""The log file and `getlog` through the real daemon: access lines, follow, errors."""

import json

from tests.integration.conftest import Daemon, free_port


def recv_until(client, predicate, limit=200):
    """Frames until one satisfies `predicate`; returns (that frame, the frames before it)."""
    before = []
    for _ in range(limit):
        frame = client.recv()
        if predicate(frame):
            return frame, before
        before.append(frame)
    raise AssertionError(f"no matching frame in {limit}: {before[-3:]}")


def test_calls_produce_access_lines_that_getlog_returns(start_daemon, tmp_path):
    d = start_daemon()
    c = d.client()
    assert c.call("add", 2, 3)["result"] == 5
    c.call("nosuch")
    c.call("boom")
    c.send({"in": "echo", "params": 1})
    c.recv()
    reply = c.call("getlog", {"lines": 4, "grep": "[rpcd.access]"})
    lines = reply["result"]["lines"]
    assert reply["result"]["truncated"] is False
    assert [line.split()[4:] for line in lines] == [
        ["add", "id=1", lines[0].split()[6], "ms", "ok"],
        ["nosuch", "id=2", "0.000", "ms", "-32601"],
        ["boom", "id=3", lines[2].split()[6], "ms", "-32603"],
        ["echo", "id=-", lines[3].split()[6], "ms", "ok"],
    ]
    peer = f"127.0.0.1:{c.sock.getsockname()[1]}"
    assert all(line.split()[1:4] == ["info", "[rpcd.access]", peer] for line in lines)
    # by position, a level filter, and the legacy envelope
    assert len(c.call("getlog", 2)["result"]["lines"]) == 2
    errors = c.call("getlog", 10, "error")["result"]["lines"]
    assert len(errors) == 1 and "method boom raised KeyError" in errors[0]
    assert "secret-detail" in errors[0]  # the traceback stays with its entry
    c.send({"in": "getlog", "params": {"lines": 1, "grep": "getlog"}})
    legacy = c.recv()
    assert legacy["out"] == "getlog" and " getlog id=" in legacy["result"]["lines"][0]
    c.send({"in": "getlog", "params": {"lines": 0, "follow": True}})  # no way to stream: refused
    assert c.recv()["result"]["code"] == -32600
    c.close()
    assert d.terminate() == 0
    text = (tmp_path / "rpcd.log").read_text()
    assert text.count("rpcd serving") == 1 and text.count(" add id=1 ") == 1
    assert "twistd" in text.splitlines()[0] and "Server Shut Down." in text.splitlines()[-1]
    assert f"connection from {peer} opened" in text and f"connection from {peer} closed" in text
    # with twistd -n the terminal shows the lines too, the access lines in batches
    assert " add id=1 " in d.log() and "rpcd serving" in d.log()


def test_follow_streams_new_lines_and_stops_on_cancel(shared_daemon):
    d = shared_daemon
    follower, other = d.client(), d.client()
    follower.send(
        {
            "jsonrpc": "2.0",
            "method": "getlog",
            "id": "f",
            "params": {"lines": 0, "follow": True, "grep": "tests.shout"},
        }
    )
    assert other.call("ping")["result"] == "pong"  # the follow is running by now
    other.call("shout", "first marker")
    item, before = recv_until(follower, lambda f: f.get("method") == "rpc.stream")
    assert before == [] and item["params"]["id"] == "f"
    assert item["params"]["item"].split(" ", 1)[1] == "warn [tests.shout] first marker"
    other.call("shout", "second marker")
    item, _ = recv_until(follower, lambda f: f.get("method") == "rpc.stream")
    assert item["params"]["item"].endswith("second marker")
    follower.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "f"}, "id": "c"})
    replies = [follower.recv(), follower.recv()]
    assert {"jsonrpc": "2.0", "result": True, "id": "c"} in replies
    final = next(r for r in replies if r.get("id") == "f")
    assert final["error"]["code"] == -32006
    other.call("shout", "third marker")
    assert follower.call("ping")["result"] == "pong"  # nothing more streamed before this reply


def test_bad_getlog_params_get_32602(shared_daemon):
    d = shared_daemon
    c = d.client()
    for params, word in [
        ([-1], "lines"),
        ([10001], "lines"),
        (["many"], "lines"),
        ({"level": "loud"}, "level"),
        ({"grep": 5}, "grep"),
        ({"since": "yesterday"}, "since"),
        ({"follow": "yes"}, "follow"),
        ({"path": "/etc/passwd"}, "path"),
        ([{"lines": {"lines": 1}}], "lines"),
    ]:
        c.send({"jsonrpc": "2.0", "method": "getlog", "params": params, "id": 1})
        error = c.recv()["error"]
        assert error["code"] == -32602 and word in error["message"], (params, error)


def test_options_rotation_json_and_no_access_log(start_daemon, tmp_path):
    (tmp_path / "logs").mkdir()
    d = start_daemon(
        "--log-file",
        "logs/x.log",
        "--log-format",
        "json",
        "--log-rotate-bytes",
        "2048",
        "--log-backups",
        "3",
        "--no-access-log",
    )
    c = d.client()
    for n in range(60):
        c.call("shout", f"message {n:02d} " + "x" * 40)
    reply = c.call("getlog", {"lines": 5, "grep": "message"})["result"]
    assert [json.loads(line)["message"][:10] for line in reply["lines"]] == [
        f"message {n:02d}" for n in range(55, 60)
    ]
    files = sorted((tmp_path / "logs").iterdir())
    assert [p.name for p in files] == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    assert all(p.stat().st_size <= 2048 for p in files)
    everything = c.call("getlog", 10000)["result"]["lines"]
    assert not any("rpcd.access" in line for line in everything)


def test_unwritable_log_location_stops_start_up(tmp_path):
    (tmp_path / "file").write_text("")
    port = free_port()
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--log-file", "file/rpcd.log"]
    d = Daemon(tmp_path, args, port)
    assert d.proc.wait(30) != 0
    expected = f"rpcd: cannot open log file {tmp_path}/file/rpcd.log: Not a directory"
    assert d.log().strip().splitlines() == [expected]
