"""`--metrics`: a real daemon scraped over real HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import rpcd
from tests.integration.conftest import ROOT, TWISTD, free_port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """The metrics port may open after the RPC port the fixture waited for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listening on {port}"
            time.sleep(0.05)


def scrape(port: int) -> dict:
    """{(sample name, sorted labels): value} from one GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@pytest.fixture
def daemon(start_daemon):
    port = free_port()
    # One worker and no queue: a second call while one runs is refused as busy.
    d = start_daemon(
        "--metrics",
        f"tcp:{port}:interface=127.0.0.1",
        "--workers",
        "1",
        "--queue-size",
        "0",
        "--max-frame-bytes",
        "1024",
    )
    d.metrics_port = port
    wait_listening(port)
    return d


def test_calls_errors_refusals_and_frames_are_counted(daemon):
    c = daemon.client()
    for i in range(3):
        assert c.call("add", i, 1)["result"] == i + 1
    assert c.call("boom")["error"]["code"] == -32603
    assert c.call("no.such.method")["error"]["code"] == -32601
    c.send_bytes(b"{not json")
    assert c.recv()["error"]["code"] == -32700
    # A running call holds the only worker: the next one is refused at once (-32000).
    slow = c.request("sleep", 0.5)
    busy = c.request("add", 1, 1)
    refused = c.recv()
    assert refused["id"] == busy and refused["error"]["code"] == -32000, refused

    during = scrape(daemon.metrics_port)
    assert value(during, "rpcd_server_calls_in_flight") == 1
    assert value(during, "rpcd_server_workers_busy") == 1
    assert value(during, "rpcd_server_connections") == 1
    assert value(during, "rpcd_server_started_total", method="sleep") == 1

    assert c.recv()["id"] == slow
    c.close()
    big = daemon.client()  # a frame past --max-frame-bytes: answered -32004, then closed
    big.send_bytes(b"x" * 2000)
    assert big.recv()["error"]["code"] == -32004
    big.close()
    after = scrape(daemon.metrics_port)

    assert value(after, "rpcd_server_started_total", method="add") == 4
    assert value(after, "rpcd_server_handled_total", method="add", code="OK") == 3
    assert value(after, "rpcd_server_handled_total", method="add", code="-32000") == 1
    assert value(after, "rpcd_server_handled_total", method="sleep", code="OK") == 1
    assert value(after, "rpcd_server_started_total", method="boom") == 1
    assert value(after, "rpcd_server_handled_total", method="boom", code="OK") == 0
    # A name the client made up is counted, under "unknown", never as a label of its own.
    assert value(after, "rpcd_server_handled_total", method="unknown", code="-32601") == 1
    assert not any("no.such.method" in str(labels) for _, labels in after)

    assert value(after, "rpcd_server_refused_total", reason="server_busy") == 1
    assert value(after, "rpcd_server_refused_total", reason="method_not_found") == 1
    assert value(after, "rpcd_server_frame_errors_total", code="-32700") == 1
    assert value(after, "rpcd_server_frame_errors_total", code="-32004") == 1
    # Frames: 3 add, boom, the unknown method, the garbage, sleep, the refused add (the
    # frame too large is never received whole); sent: their 8 replies and the -32004.
    assert value(after, "rpcd_server_msg_received_total") == 8
    assert value(after, "rpcd_server_msg_sent_total") == 9
    assert value(after, "rpcd_server_calls_in_flight") == 0
    assert value(after, "rpcd_server_workers_busy") == 0
    assert value(after, "rpcd_server_connections_accepted_total") >= 1

    buckets = sorted(
        (float(dict(labels)["le"]), n)
        for (name, labels), n in after.items()
        if name == "rpcd_server_handling_seconds_bucket" and dict(labels)["method"] == "add"
    )
    counts = [n for _, n in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), 3)
    # Refused calls never ran: they are answered, not timed.
    assert value(after, "rpcd_server_handling_seconds_count", method="add") == 3
    slept = value(after, "rpcd_server_handling_seconds_sum", method="sleep")
    assert 0.4 < slept < 1.0
    assert value(after, "rpcd_build_info", version=rpcd.__version__) == 1
    assert value(after, "process_open_fds") > 0


def test_metrics_are_off_by_default_and_only_at_metrics(start_daemon):
    port = free_port()
    d = start_daemon("--metrics", f"tcp:{port}:interface=127.0.0.1")
    wait_listening(port)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert missing.value.code == 404
    assert "rpcd metrics on" in d.log()

    plain = start_daemon("--log-file", "plain.log")  # a log file of its own
    assert "rpcd metrics on" not in plain.log()


def test_a_metrics_port_in_use_stops_start_up(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        listen = f"tcp:{free_port()}:interface=127.0.0.1"
        metrics = f"tcp:{port}:interface=127.0.0.1"
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "rpcd", "--listen", listen, "--metrics", metrics],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"Couldn't listen on 127.0.0.1:{port}" in result.stdout + result.stderr
