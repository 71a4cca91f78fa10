"""asyncio client: `client = await rpcd.aio.connect(endpoint)`, then `await client.call(...)`.

One connection carries every call, multiplexed by id, so any number of tasks may call at
once. It is built from the pieces every rpcd client shares (`rpcd.client.routing` for the
frame decoder, request encoder and reply routing, `rpcd.auth.ClientHandshake`,
`rpcd.client.endpoint` for endpoint strings and TLS) and raises the blocking client's
exceptions: `RemoteError` and its subclasses, `ConnectFailed`, `ConnectionLost`,
`AuthenticationFailed`, and `TimeoutError` when a reply does not come in time.

Cancelling the task awaiting a call (or leaving a stream early) sends `rpc.cancel`, so
the server stops the work too. A connection that breaks stays broken: connect again.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections import deque
from typing import Any

from rpcd import auth
from rpcd.client.endpoint import DEFAULT_ENDPOINT, Endpoint, os_reason, ssl_context
from rpcd.client.errors import AuthenticationFailed, ConnectFailed, ConnectionLost
from rpcd.client.routing import (
    MAX_REPLY_BYTES,
    BadReply,
    MessageReader,
    encode_call,
    encode_cancel,
    make_params,
    route,
)
from rpcd.wire import encode_frame

__all__ = ["Batch", "BatchCall", "Client", "Stream", "connect"]

_DEFAULT: Any = object()  # "the client's timeout", as opposed to None (wait for ever)


class _Call:
    """A call waiting for its reply: its future and, for a stream, its items so far."""

    __slots__ = ("future", "items", "wake")

    def __init__(self, future: asyncio.Future, stream: bool = False) -> None:
        self.future = future
        self.items: deque | None = deque() if stream else None
        self.wake: asyncio.Event | None = asyncio.Event() if stream else None

    def on_item(self, item: Any) -> None:
        if self.items is not None:
            self.items.append(item)
            self.wake.set()

    def on_result(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)
        if self.wake is not None:
            self.wake.set()

    def on_error(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
        if self.wake is not None:
            self.wake.set()


class Client(asyncio.Protocol):
    """One connection to rpcd. Make it with `await connect(...)`; see the module docstring."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float | None,
        byteorder: str,
        key: auth.Key | None,
        max_frame_bytes: int,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.byteorder = byteorder
        self.max_frame_bytes = max_frame_bytes
        self._loop = asyncio.get_running_loop()
        self._reader = MessageReader(max_frame_bytes, byteorder)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._transport: asyncio.Transport | None = None
        self._lost: str | None = None  # why the connection is gone, once it is
        self._closed = self._loop.create_future()
        self._key = key
        self._handshake: auth.ClientHandshake | None = None
        # Done once the connection may carry calls: at once without a key, else after the
        # handshake; fails with the reason it never will.
        self.ready = self._loop.create_future()
        self.ready.add_done_callback(_observed)  # connect() may have stopped waiting for it

    def __repr__(self) -> str:
        return f"<rpcd.aio.Client {self.endpoint.text}>"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- the public calls --------------------------------------------------------------------

    async def call(
        self, method: str, /, *args: Any, _timeout: Any = _DEFAULT, **kwargs: Any
    ) -> Any:
        """Call `method` with positional or named arguments and return its result.

        `_timeout` (default: the client's) bounds the wait; past it the call is cancelled on
        the server and TimeoutError raised. Cancelling the awaiting task cancels it too.
        """
        timeout = self.timeout if _timeout is _DEFAULT else _timeout
        call_id, call = self._start(method, make_params(args, kwargs))
        return await self._wait([call_id], call.future, timeout, method)

    async def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the server runs it and sends no reply."""
        self._check_open()
        self._send(encode_call(method, make_params(args, kwargs)))

    def batch(self, timeout: Any = _DEFAULT) -> Batch:
        """Calls and notifications sent as one JSON-RPC batch: `async with client.batch() as
        b: x = b.call(...)`, then `x.result()` once the block has ended."""
        return Batch(self, self.timeout if timeout is _DEFAULT else timeout)

    def stream(self, method: str, /, *args: Any, _timeout: float | None = None, **kwargs: Any):
        """Call a streaming method: `async for item in client.stream(...)`; `.result` holds
        the final value once it ends. `_timeout` bounds the wait for each item (default:
        none). Leaving early (`aclose()`, `async with`) cancels the call on the server."""
        call_id, call = self._start(method, make_params(args, kwargs), stream=True)
        return Stream(self, call_id, call, method, _timeout)

    async def close(self) -> None:
        """Close the connection; pending calls raise ConnectionLost."""
        if self._transport is not None and self._lost is None:
            self._transport.close()
        await asyncio.shield(self._closed)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    # -- calls in flight ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._lost is not None:
            raise ConnectionLost(f"connection to {self.endpoint.text} lost: {self._lost}")

    def _start(self, method: str, params: Any, stream: bool = False) -> tuple[int, _Call]:
        self._check_open()
        call_id = next(self._ids)
        call = self._pending[call_id] = _Call(self._loop.create_future(), stream)
        self._send(encode_call(method, params, call_id))
        return call_id, call

    async def _wait(
        self, call_ids: list[int], waited: Any, timeout: float | None, what: str
    ) -> Any:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waited)
        except TimeoutError:
            self._cancel(call_ids)
            raise TimeoutError(f"no reply to {what} within {timeout:g} s") from None
        except asyncio.CancelledError:
            self._cancel(call_ids)
            raise

    def _cancel(self, call_ids: list[int]) -> None:
        """Forget the calls and tell the server to stop those still pending; their late
        replies (-32006) are dropped."""
        for call_id in call_ids:
            call = self._pending.pop(call_id, None)
            if call is not None:
                call.future.cancel()
                if self._lost is None:
                    self._send(encode_cancel(call_id))

    def _send(self, body: bytes) -> None:
        self._transport.write(encode_frame(body, self.byteorder))

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._key is None:
            self.ready.set_result(self)
        else:
            self._reader.decoder.max_frame_bytes = auth.PREAUTH_MAX_FRAME

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except BadReply as exc:
            self._lose(str(exc))
            return
        for message in messages:
            if type(message) is dict and message.get("method") == auth.METHOD:
                self._challenged(message.get("params"))
                continue
            error = route(self._pending, message)
            if error is not None:
                # Answers no call (a refused connection, a frame too large): it concerns all.
                self._fail_all(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            if exc is None:
                self._lost = "closed"
            elif isinstance(exc, OSError):
                self._lost = os_reason(exc)
            else:
                self._lost = str(exc) or type(exc).__name__
        self._fail_all(ConnectionLost(f"connection to {self.endpoint.text} lost: {self._lost}"))
        if not self._closed.done():
            self._closed.set_result(None)

    def _lose(self, reason: str) -> None:
        self._lost = reason
        self._transport.abort()

    def _fail_all(self, error: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.on_error(error)

    # -- the auth handshake (rpcd.auth has the message shapes) -------------------------------

    def _challenged(self, params: Any) -> None:
        if self._key is None or self._handshake is not None or self.ready.done():
            return  # not waiting for a challenge
        self._handshake = auth.ClientHandshake(self._key)
        try:
            answer = self._handshake.answer(params)
        except auth.AuthFailed as exc:
            self._auth_failed(AuthenticationFailed(str(exc)))
            return
        _, call = self._start(auth.METHOD, answer)
        call.future.add_done_callback(self._answered)

    def _answered(self, future: asyncio.Future) -> None:
        if future.cancelled() or self.ready.done():
            return
        error = future.exception()
        if error is not None:
            self._auth_failed(error)  # NotAuthenticated: the server rejects our key
            return
        try:
            self._handshake.check(future.result())
        except auth.AuthFailed as exc:
            self._auth_failed(AuthenticationFailed(str(exc)))
            return
        self._reader.decoder.max_frame_bytes = self.max_frame_bytes
        self.ready.set_result(self)

    def _auth_failed(self, error: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
        if self._lost is None:
            self._lost = f"authentication failed: {error}"
            self._transport.close()


def _observed(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class BatchCall:
    """One call of a batch; its result is there once the batch has been answered."""

    __slots__ = ("method", "_future")

    def __init__(self, method: str, future: asyncio.Future) -> None:
        self.method = method
        self._future = future

    @property
    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        """The call's result; raises its RemoteError (or ConnectionLost)."""
        if not self._future.done():
            raise RuntimeError(f"the batch holding {self.method} has not been answered yet")
        return self._future.result()


class Batch:
    """Calls and notifications sent as one JSON-RPC batch when the `async with` block ends
    (or by `await batch.send()`), which waits for every reply."""

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._requests: list[bytes] = []
        self._calls: list[tuple[int, _Call]] = []
        self._ids: list[int] = []

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> BatchCall:
        client = self._client
        call_id = next(client._ids)
        call = _Call(client._loop.create_future())
        self._requests.append(encode_call(method, make_params(args, kwargs), call_id))
        self._calls.append((call_id, call))
        return BatchCall(method, call.future)

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        self._requests.append(encode_call(method, make_params(args, kwargs)))

    async def __aenter__(self) -> Batch:
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            await self.send()

    async def send(self) -> None:
        """Send the batch and wait for every reply; errors stay in each BatchCall."""
        if not self._requests:
            return
        client = self._client
        client._check_open()
        requests, self._requests = self._requests, []
        calls, self._calls = self._calls, []
        client._pending.update(calls)
        client._send(b"[" + b",".join(requests) + b"]")
        if not calls:
            return
        futures = [call.future for _, call in calls]
        everything = asyncio.gather(*futures, return_exceptions=True)
        await client._wait([call_id for call_id, _ in calls], everything, self._timeout, "batch")


class Stream:
    """The items of a streaming call, in order, as an async iterator; `result` is the final
    value once it ends."""

    def __init__(
        self, client: Client, call_id: int, call: _Call, method: str, timeout: float | None
    ) -> None:
        self._client = client
        self._call = call
        self._method = method
        self._timeout = timeout
        self._finished = False
        self.id = call_id  # as `rpc.cancel` takes it
        self.result: Any = None

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        call = self._call
        while not self._finished:
            if call.items:
                return call.items.popleft()
            if call.future.done():
                self._finished = True
                self.result = call.future.result()  # raises the call's error
                break
            call.wake.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    await call.wake.wait()
            except TimeoutError:
                await self.aclose()
                raise TimeoutError(
                    f"nothing from {self._method} within {self._timeout:g} s"
                ) from None
            except asyncio.CancelledError:
                await self.aclose()
                raise
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream; if it is still running, cancel the call on the server."""
        if not self._finished:
            self._finished = True
            if not self._call.future.done():
                self._client._cancel([self.id])

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


async def connect(
    endpoint: str = DEFAULT_ENDPOINT,
    *,
    timeout: float | None = 60.0,
    connect_timeout: float = 10.0,
    byteorder: str = "big",
    auth_key_file: str | None = None,
    auth_key: bytes | auth.Key | None = None,
    max_frame_bytes: int = MAX_REPLY_BYTES,
) -> Client:
    """Connect to rpcd at `endpoint` (`tcp:HOST:PORT`, `unix:PATH`, `ssl:HOST:PORT`, as the
    blocking client takes them; `ssl:` verifies the server against the system's CAs or the
    endpoint's `caCertsDir=`, for `hostname=` or the host).

    `timeout` bounds each call's wait for its reply (None: for ever). `connect_timeout`
    bounds the connection, TLS and, with `auth_key_file` (or `auth_key` bytes), the
    `rpc.auth` handshake, which is mutual. Raises ConnectFailed, NotAuthenticated (the
    server rejects the key), AuthenticationFailed (it asked for none, or its proof is
    wrong), or `rpcd.auth.AuthKeyError` for a key file that cannot be read.
    """
    if auth_key_file is not None and auth_key is not None:
        raise ValueError("give auth_key_file or auth_key, not both")
    if byteorder not in ("big", "little"):
        raise ValueError("byteorder must be 'big' or 'little'")
    key = auth.load_key(auth_key_file, private=False) if auth_key_file is not None else auth_key
    if isinstance(key, bytes):
        key = auth.Key(key)
    parsed = Endpoint.parse(endpoint)
    loop = asyncio.get_running_loop()

    def protocol() -> Client:
        return Client(
            parsed, timeout=timeout, byteorder=byteorder, key=key, max_frame_bytes=max_frame_bytes
        )

    seconds = float(parsed.options.get("timeout", connect_timeout))
    try:
        async with asyncio.timeout(seconds):
            if parsed.kind == "unix":
                _, client = await loop.create_unix_connection(protocol, parsed.path)
            else:
                tls = None
                if parsed.kind == "ssl":
                    tls = {"ssl": ssl_context(parsed), "server_hostname": parsed.server_hostname}
                bind = parsed.options.get("bindAddress")
                _, client = await loop.create_connection(
                    protocol,
                    parsed.host,
                    parsed.port,
                    local_addr=(bind, 0) if bind else None,
                    **(tls or {}),
                )
    except TimeoutError:
        raise ConnectFailed(parsed.text, "timed out") from None
    except ssl.SSLError as exc:
        raise ConnectFailed(parsed.text, f"TLS handshake failed: {exc.reason or exc}") from exc
    except OSError as exc:
        raise ConnectFailed(parsed.text, os_reason(exc)) from exc
    if key is None:
        return client
    try:
        async with asyncio.timeout(seconds):
            return await asyncio.shield(client.ready)
    except TimeoutError:
        await client.close()
        if client._handshake is None:
            reason = f"the server did not ask for authentication within {seconds:g} s"
            raise AuthenticationFailed(reason) from None
        raise TimeoutError(f"no answer to {auth.METHOD} within {seconds:g} s") from None
    except BaseException:
        await client.close()
        raise
