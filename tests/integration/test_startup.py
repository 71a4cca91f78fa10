"""Starting the real daemon: --config FILE, `twistd -r gevent`, a broken methods module, a
port another process holds. (SIGTERM while calls run: test_faults.py.)"""

import os
import socket
import subprocess

import pytest

from tests.integration.conftest import METHODS, ROOT, TWISTD, Daemon, free_port


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


def test_port_held_by_another_process_stops_start_up(tmp_path):
    # The test harness once took a connection to whatever listened on the port for "rpcd is
    # ready": here that would be the other listener, and the failed start-up went unseen.
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--methods", METHODS]
        daemon = Daemon(tmp_path, args, port)
        try:
            with pytest.raises(RuntimeError, match="rpcd exited with 1"):
                daemon.wait_ready()
        finally:
            daemon.terminate()
    assert (
        f"rpcd: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
        in daemon.log()
    )
