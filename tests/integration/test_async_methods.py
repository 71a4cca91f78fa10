"""`async def` methods on the real daemon: awaiting Deferreds works; asyncio is refused at
start-up with one line saying so (rpcd runs coroutines on Twisted, not on asyncio)."""

from __future__ import annotations

import pytest

DEFERRED = """
from twisted.internet import defer, reactor

from rpcd import method


@method
async def later(value):
    d = defer.Deferred()
    reactor.callLater(0.01, d.callback, value)
    return await d
"""

ASYNCIO = """
import asyncio

from rpcd import method


@method
async def later(value):
    await asyncio.sleep(0.01)
    return value
"""


def test_an_async_def_awaiting_a_deferred_is_served(start_daemon, tmp_path):
    (tmp_path / "ops_deferred_methods.py").write_text(DEFERRED)
    daemon = start_daemon(methods="ops_deferred_methods")  # found in the working directory
    client = daemon.client()
    assert client.call("later", 42)["result"] == 42
    client.close()


def test_an_async_def_awaiting_asyncio_stops_start_up_with_one_line(start_daemon, tmp_path):
    (tmp_path / "ops_asyncio_methods.py").write_text(ASYNCIO)
    with pytest.raises(RuntimeError) as failed:
        start_daemon(methods="ops_asyncio_methods")
    [line] = [x for x in str(failed.value).splitlines() if "async def using asyncio" in x]
    assert "'later'" in line and "may await Deferreds" in line
