"""Starting the real daemon: --config FILE, `twistd -r gevent`, a broken methods module."""

import os
import signal
import subprocess
import time

from tests.integration.conftest import ROOT, TWISTD, free_port


def test_config_file_is_used_and_the_command_line_wins(start_daemon, tmp_path):
    port = free_port()
    config = tmp_path / "rpcd.toml"
    config.write_text(
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        'methods = ["tests.integration.methods"]\n'
        "max_connections = 1\n"
        "call_timeout = 60\n"
    )
    d = start_daemon(
        "--config", str(config), "--call-timeout", "0.3", methods=None, listen=False, port=port
    )
    c = d.accepted_client()
    assert c.call("add", 1, 2)["result"] == 3  # methods and listen came from the file
    assert c.call("stubborn", 5)["error"]["code"] == -32001  # 0.3 s from the command line
    second = d.client()
    assert second.recv()["error"]["code"] == -32002  # max_connections = 1 from the file
    assert "Warning" not in d.log()


def test_twistd_r_gevent_works(start_daemon):
    d = start_daemon(twistd_args=("-r", "gevent"))
    c = d.client()
    assert c.call("ping")["result"] == "pong"
    assert c.call("deferred_value", 7)["result"] == 7
    assert "reactor class: rpcd.reactor.GeventReactor" in d.log()
    assert "Warning" not in d.log()


def test_methods_module_that_fails_to_import_stops_start_up(tmp_path):
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "rpcd",
            "--listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--methods",
            "tests.integration.broken_methods",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).splitlines()
    assert output == [
        "rpcd: cannot import methods module 'tests.integration.broken_methods': broken on purpose"
    ]


def test_sigterm_refuses_new_calls_and_ends_the_rest_at_grace(start_daemon):
    d = start_daemon("--shutdown-grace", "0.5")
    c = d.accepted_client()
    slow = c.request("sleep", 30)
    time.sleep(0.2)  # the call is running
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    late = c.request("ping")
    replies = {}
    while len(replies) < 2:
        reply = c.recv()
        replies[reply["id"]] = reply
    assert replies[late]["error"]["code"] == -32005
    assert replies[slow]["error"]["code"] == -32005
    assert d.proc.wait(15) == 0
