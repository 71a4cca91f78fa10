"""`rpc.cancel` is listed by `rpc.methods`, and the start-up line counts what is listed."""

from __future__ import annotations

import re


def test_rpc_methods_lists_rpc_cancel_and_startup_counts_it(start_daemon):
    daemon = start_daemon()
    client = daemon.client()
    listed = [m["name"] for m in client.call("rpc.methods")["result"]]
    assert "rpc.cancel" in listed
    assert client.call("rpc.describe", "rpc.cancel")["result"]["signature"].startswith(
        "rpc.cancel(id"
    )
    # Still answered by the connection: cancelling an unknown id is false, not an error.
    client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 12345}, "id": "c"})
    assert client.recv() == {"jsonrpc": "2.0", "result": False, "id": "c"}
    client.close()
    [count] = re.findall(r"rpcd serving (\d+) methods", daemon.log())
    assert int(count) == len(listed)
