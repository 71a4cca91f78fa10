"""rpcd.aio against the real daemon: calls, errors, 100 concurrent calls on one connection,
notifications, batches, streams, cancellation, timeouts, auth and TLS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rpcd import aio
from rpcd.client import (
    AuthenticationFailed,
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    InternalError,
    InvalidParams,
    MethodNotFound,
    NotAuthenticated,
    RemoteError,
)
from tests.integration.conftest import KEY, free_port, launch

METHODS = "tests.integration.methods"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = launch(tmp_path_factory.mktemp("rpcd"), "--call-timeout", "2", methods=METHODS)
    yield d
    d.terminate()


def run(coroutine, timeout: float = 30.0):
    """Run a test's coroutine on a fresh event loop, bounded in time."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coroutine

    return asyncio.run(bounded())


async def until(predicate, timeout: float = 5.0) -> None:
    """Await `predicate()` until it is true; fail the test if it stays false."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_calls_and_the_blocking_clients_errors(daemon):
    async def main():
        async with await aio.connect(f"tcp:127.0.0.1:{daemon.port}") as c:
            assert await c.call("add", 1, 2) == 3
            assert await c.call("add", a="x", b="y") == "xy"
            assert await c.call("deferred_value", 7) == 7
            with pytest.raises(MethodNotFound):
                await c.call("no.such")
            with pytest.raises(InvalidParams):
                await c.call("add", 1)
            with pytest.raises(InternalError) as info:
                await c.call("boom")
            assert info.value.data == {"type": "KeyError"} and isinstance(info.value, RemoteError)
            with pytest.raises(CallTimeout):  # the daemon's --call-timeout is 2 s
                await c.call("sleep", 5)
            assert await c.call("echo", "still usable") == "still usable"

    run(main())


def test_100_concurrent_calls_on_one_connection(daemon):
    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{daemon.port}")
        accepted = (await c.call("rpc.stats"))["connections"]["accepted"]
        started = time.monotonic()
        results = await asyncio.gather(*(c.call("tracked", 0.3) for _ in range(100)))
        elapsed = time.monotonic() - started
        assert results == [0.3] * 100
        assert await c.call("tracked_peak") == 100  # all ran at once, not one after another
        assert elapsed < 3.0, elapsed
        echoed = await asyncio.gather(*(c.call("echo", i) for i in range(100)))
        assert echoed == list(range(100))  # each reply found its own caller
        assert (await c.call("rpc.stats"))["connections"]["accepted"] == accepted
        await c.close()

    run(main())


def test_notify_and_batch(daemon):
    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{daemon.port}")

        async def adds() -> int:
            return (await c.call("rpc.stats"))["methods"].get("add", {"count": 0})["count"]

        before = await adds()
        await c.notify("add", 1, 2)
        await until(lambda: _at_least(adds, before + 1))

        async with c.batch() as batch:
            three = batch.call("add", 1, 2)
            missing = batch.call("no.such")
            batch.notify("add", 0, 0)
            echoed = batch.call("echo", {"k": [1]})
        assert three.result() == 3 and echoed.result() == {"k": [1]}
        with pytest.raises(MethodNotFound):
            missing.result()
        await c.close()

    run(main())


async def _at_least(read, n: int) -> bool:
    return await read() >= n


def test_stream_as_an_async_iterator(daemon):
    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{daemon.port}")
        stream = c.stream("ticker", 5)
        assert [item async for item in stream] == [0, 1, 2, 3, 4]
        assert stream.result == 5
        # Leaving early cancels the call on the server.
        async with c.stream("ticker", 1000, 0.01) as stream:
            async for item in stream:
                if item == 2:
                    break
        await until(lambda: _in_flight_is(c, 1))  # only the rpc.stats asking
        with pytest.raises(TimeoutError, match="ticker"):
            async for _ in c.stream("ticker", 2, 1.0, _timeout=0.1):
                pass
        await c.close()

    run(main())


async def _in_flight_is(client, n: int) -> bool:
    return (await client.call("rpc.stats"))["calls"]["in_flight"] == n


def test_cancelling_the_awaiting_task_cancels_the_call_on_the_server(daemon):
    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{daemon.port}")
        errors = (await c.call("rpc.stats"))["calls"]["errors"].get("-32006", 0)
        task = asyncio.create_task(c.call("sleep", 30))
        await until(lambda: _in_flight_is(c, 2))  # the sleep, and this rpc.stats
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: _in_flight_is(c, 1))
        stats = await c.call("rpc.stats")
        assert stats["calls"]["errors"].get("-32006", 0) == errors + 1
        # A client-side timeout cancels on the server the same way.
        with pytest.raises(TimeoutError, match="sleep"):
            await c.call("sleep", 30, _timeout=0.1)
        await until(lambda: _in_flight_is(c, 1))
        assert await c.call("add", 2, 2) == 4
        await c.close()

    run(main())


def test_close_fails_pending_calls_and_a_closed_port_fails_to_connect(daemon):
    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{daemon.port}")
        pending = asyncio.create_task(c.call("sleep", 1))
        await asyncio.sleep(0.05)
        await c.close()
        with pytest.raises(ConnectionLost):
            await pending
        with pytest.raises(ConnectionLost):
            await c.call("ping")
        with pytest.raises(ConnectFailed, match="refused"):
            await aio.connect(f"tcp:127.0.0.1:{free_port()}")

    run(main())


def test_auth_handshake(start_daemon, key_file, tmp_path):
    d = start_daemon("--auth-key-file", key_file)
    plain = start_daemon()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"not-the-key")

    async def main():
        c = await aio.connect(f"tcp:127.0.0.1:{d.port}", auth_key_file=key_file)
        assert await c.call("add", 20, 22) == 42
        await c.close()
        c = await aio.connect(f"tcp:127.0.0.1:{d.port}", auth_key=KEY)
        assert await c.call("ping") == "pong"
        await c.close()
        with pytest.raises(NotAuthenticated):
            await aio.connect(f"tcp:127.0.0.1:{d.port}", auth_key_file=str(wrong))
        # A server that asks for no authentication cannot prove it holds the key.
        with pytest.raises(AuthenticationFailed):
            await aio.connect(f"tcp:127.0.0.1:{plain.port}", auth_key=KEY, connect_timeout=0.5)
        # Without a key, the server refuses every call.
        c = await aio.connect(f"tcp:127.0.0.1:{d.port}")
        with pytest.raises(NotAuthenticated):
            await c.call("ping")
        await c.close()

    run(main())


def test_tls_with_verification(start_daemon, tmp_path):
    import twisted.test

    pem = Path(twisted.test.__file__).with_name("server.pem")  # self-signed, for "localhost"
    ca = tmp_path / "ca"
    ca.mkdir()
    (ca / "server.pem").write_bytes(pem.read_bytes())
    port = free_port()
    start_daemon("--listen", f"ssl:{port}:privateKey={pem}:interface=127.0.0.1")

    async def main():
        c = await aio.connect(f"ssl:127.0.0.1:{port}:caCertsDir={ca}:hostname=localhost")
        assert await c.call("add", 1, 2) == 3
        await c.close()
        with pytest.raises(ConnectFailed, match="TLS"):
            await aio.connect(f"ssl:127.0.0.1:{port}")  # the system's CAs do not know it
        with pytest.raises(ConnectFailed, match="TLS"):
            await aio.connect(f"ssl:127.0.0.1:{port}:caCertsDir={ca}:hostname=elsewhere")

    run(main())
