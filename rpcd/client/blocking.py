"""Blocking client: calls, notifications, batches, proxies and streams over one shared connection.

A `Client` is safe to share between threads and, under gevent's monkey-patching, between
greenlets. Calls are multiplexed on one socket by id: a caller sends its request under a
lock, then waits for its reply. There is no reader thread: whichever waiting caller finds
nobody reading becomes the reader, hands every reply it reads to its owner, and passes the
job on when its own reply is in. Locks, sockets and `select` are looked up at call time, so
a client built after `gevent.monkey.patch_all()` is cooperative.

With a shared key (`auth_key_file=` or `auth_key=`) each new connection passes the
`rpc.auth` handshake (`rpcd.auth`) before it carries any call: the connecting caller does
it on the bare socket under the connect lock, so no other caller sees the connection early.

Nothing here imports Twisted, gevent or the server's modules: the frames, the request
encoder and the reply routing are the ones every client shares (`rpcd.client.routing` over
`rpcd.wire`), the handshake is `rpcd.auth.ClientHandshake`.
"""

from __future__ import annotations

import _socket
import collections
import copy
import itertools
import math
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from rpcd import auth
from rpcd.client.endpoint import DEFAULT_ENDPOINT, Endpoint, os_reason, ssl_context
from rpcd.client.errors import (
    AuthenticationFailed,
    ConnectFailed,
    ConnectionLost,
    RemoteError,
)
from rpcd.client.routing import (
    MAX_REPLY_BYTES,
    NOTHING,
    BadReply,
    MessageReader,
    ReplyTooLarge,
    encode_call,
    encode_cancel,
    make_params,
    route,
)
from rpcd.wire import frame_prefix


def _open_socket(endpoint: Endpoint, timeout: float | None) -> socket.socket:
    """Connect to `endpoint`; raise ConnectFailed saying why not."""
    timeout = float(endpoint.options.get("timeout", timeout or 0)) or None
    try:
        if endpoint.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            except BaseException:
                sock.close()
                raise
            return sock
        bind = endpoint.options.get("bindAddress")
        sock = socket.create_connection(
            (endpoint.host, endpoint.port), timeout, (bind, 0) if bind else None
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.kind == "ssl":
            try:
                hostname = endpoint.server_hostname
                sock = ssl_context(endpoint).wrap_socket(sock, server_hostname=hostname)
            except BaseException:
                sock.close()
                raise
        return sock
    except ssl.SSLCertVerificationError as exc:
        reason = f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
        raise ConnectFailed(endpoint.text, reason) from exc
    except ssl.SSLError as exc:
        raise ConnectFailed(endpoint.text, f"TLS handshake failed: {exc.reason or exc}") from exc
    except OSError as exc:
        raise ConnectFailed(endpoint.text, os_reason(exc)) from exc


# How far past its deadline a wait may end when the socket's own timeout bounds it (5 ms
# and 1 % of that timeout): within this, a reader calls recv straight away (bounded by the
# socket's timeout) instead of polling first. The part relative to the timeout keeps a
# caller delayed for a few ms (a busy machine) on the straight path.
_SLACK_SECONDS = 0.005
_SLACK_FRACTION = 0.01
# Bytes asked of each recv, the size of a connection's receive buffer.
_RECV_BYTES = 65536


# Where the kernel can bound a blocking socket's waits (SO_RCVTIMEO, SO_SNDTIMEO as a struct
# timeval of two longs).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _bound_waits(sock: socket.socket, timeout: float | None) -> float | None:
    """Bound each recv and send on `sock` by `timeout`; return that bound.

    A plain socket stays blocking and the kernel ends a wait past `timeout` (EAGAIN:
    BlockingIOError): a recv or send is one system call, where a socket with a Python timeout
    polls before each. Others keep their Python timeout: TLS (the ssl module's records sit
    between our sends and the kernel's, and a write cut short by the kernel is not one it
    can resume), and gevent's sockets (their waits are the hub's, their descriptors are
    non-blocking).
    """
    if (
        _KERNEL_TIMEOUTS
        and timeout
        and isinstance(sock, _socket.socket)
        and not isinstance(sock, ssl.SSLSocket)
    ):
        seconds = int(timeout)
        # Rounded up: a timeval of zero would mean no timeout at all (a sub-microsecond one).
        timeval = struct.pack("@ll", seconds, math.ceil((timeout - seconds) * 1e6))
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        return timeout
    sock.settimeout(timeout)
    return sock.gettimeout()


def _wait_readable(conn: _Connection, timeout: float | None) -> bool:
    sock = conn.sock
    if conn.tls and sock.pending():
        return True  # decrypted bytes already buffered: the fd may never become readable for them
    try:
        poller = conn.poller
        if poller is not None:
            return bool(poller.poll(None if timeout is None else timeout * 1000))
        return bool(select.select([sock], [], [], timeout)[0])
    except (OSError, ValueError, RuntimeError):
        return True  # closed under us: the recv that follows reports it


# -- the connection ------------------------------------------------------------------------------


class _Slot:
    """A call waiting for its reply (and, for a stream, its items)."""

    __slots__ = ("id", "waiter", "done", "result", "error", "items", "conn")

    def __init__(self, call_id: int) -> None:
        self.id = call_id
        # While its caller is parked: a lock it blocks on, held until `wake` releases it.
        self.waiter: Any = None
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.items: collections.deque | None = None
        self.conn: _Connection | None = None

    def ready(self) -> bool:
        return self.done or bool(self.items)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None  # woken once: a second wake before it runs is a no-op
            waiter.release()

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    # What rpcd.client.routing.route hands a reply to (the client's lock is held).

    def on_item(self, item: Any) -> None:
        if self.items is not None:
            self.items.append(item)
            if self.waiter is not None:
                self.wake()

    def on_result(self, result: Any) -> None:
        self.result = result
        self.done = True
        if self.waiter is not None:  # parked (not the reader itself)
            self.wake()

    def on_error(self, error: RemoteError) -> None:
        self.error = error
        self.done = True
        if self.waiter is not None:
            self.wake()


class _Connection:
    """One socket and the calls pending on it. State changes happen under the client's lock."""

    __slots__ = (
        "sock",
        "reader",
        "pending",
        "waiting",
        "reading",
        "broken",
        "tls",
        "poller",
        "idle_poller",
        "sock_timeout",
        "recv_within",
        "outbox",
        "unsent",
        "flushing",
        "buffer",
        "spare",
    )

    def __init__(self, sock: socket.socket, reader: MessageReader, bound: float | None) -> None:
        self.sock = sock
        self.reader = reader
        # Every recv lands here (only the reader reads): no buffer allocated, shrunk and freed
        # per read, and a chunk that is one whole frame is decoded straight from it.
        self.buffer = bytearray(_RECV_BYTES)
        self.tls = isinstance(sock, ssl.SSLSocket)
        # One poll object for the connection's life (only its reader polls), not one per wait.
        self.poller: Any = None
        if hasattr(select, "poll"):
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN)
        # For `Client._call_alone`, the serial caller's path, on a socket of the standard
        # library's (gevent's go the general way: there the idle check's poll yields to the
        # hub, which lets the callers it woke queue their calls first, so they share a send
        # and their replies a read). Its look before it claims the connection has a poll
        # object of its own: one refuses a poll from a second thread while one is under way.
        self.idle_poller: Any = None
        if hasattr(select, "poll") and isinstance(sock, _socket.socket):
            self.idle_poller = select.poll()
            self.idle_poller.register(sock, select.POLLIN)
        # What bounds each recv and sendall (`_bound_waits`); a reader waits longer than this
        # by polling first.
        self.sock_timeout = bound
        # recv's own wait ends by sock_timeout: early enough for a deadline at least this far
        # off (None: a socket without a timeout, which a deadline must always poll before).
        self.recv_within = None if bound is None else bound * (1 - _SLACK_FRACTION) - _SLACK_SECONDS
        # Frames of calls queued while another caller is sending: it sends them with its own.
        self.outbox: list[bytes] = []
        # The notifications among them, whose callers wait to learn that their frame went out
        # (no reply will tell them): done once sent, failed with the connection otherwise.
        self.unsent: list[_Slot] = []
        self.flushing = False
        self.pending: dict[int, _Slot] = {}
        # Slots whose callers are blocked in a wait: the reader wakes one when it stops reading.
        self.waiting: dict[_Slot, None] = {}
        self.reading: Any = False  # False, or what reads: the reading caller's slot, or True
        self.broken = False
        # The slot of the last serial call, given back by its caller once it has its answer.
        self.spare: _Slot | None = None


_DEFAULT: Any = object()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class Client:
    """A connection to rpcd, opened on first use and reopened on the call after it breaks.

    `timeout` bounds each call's wait for its reply (None: wait for ever); a call may pass
    its own as `_timeout=`. Past it the call raises TimeoutError and is cancelled on the server.

    `auth_key_file` (or the key itself as `auth_key` bytes) makes every new connection pass
    the server's `rpc.auth` handshake, mutually: the server must prove it holds the key too.
    The handshake is bounded by `connect_timeout` (and `timeout`, if shorter); it fails with
    `NotAuthenticated` (the server rejects our key) or `AuthenticationFailed` (the server
    asked for no authentication, or its proof is wrong).
    """

    # A reply larger than this is taken as a corrupt stream.
    max_frame_bytes = MAX_REPLY_BYTES

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        port: int | None = None,
        *,
        timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        byteorder: str = "big",
        auth_key_file: str | None = None,
        auth_key: bytes | auth.Key | None = None,
    ) -> None:
        if auth_key_file is not None and auth_key is not None:
            raise ValueError("give auth_key_file or auth_key, not both")
        if port is not None:
            host = f"[{endpoint}]" if ":" in endpoint else endpoint
            endpoint = f"tcp:host={host}:port={port}"
        if byteorder not in ("big", "little"):
            raise ValueError("byteorder must be 'big' or 'little'")
        self.endpoint = Endpoint.parse(endpoint)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        # Read once, here: a bad file fails the constructor (auth.AuthKeyError), not a call.
        self._key: auth.Key | None = (
            auth.load_key(auth_key_file, private=False)
            if auth_key_file is not None
            else None
            if auth_key is None
            else auth_key
            if isinstance(auth_key, auth.Key)
            else auth.Key(auth_key)
        )
        self.byteorder = byteorder
        self._lock = threading.Lock()  # guards connection and slot state
        self._connect_lock = threading.Lock()
        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._pack_prefix = frame_prefix(byteorder).pack

    def __repr__(self) -> str:
        return f"<rpcd.Client {self.endpoint.text}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def proxy(self) -> Proxy:
        """Attribute access to methods: `client.proxy.math.add(1, 2)` calls `math.add`."""
        return Proxy(self, "")

    # -- the public calls --------------------------------------------------------------------

    def call(self, method: str, /, *args: Any, _timeout: Any = _DEFAULT, **kwargs: Any) -> Any:
        """Call `method` with positional or named arguments and return its result."""
        timeout = self.timeout if _timeout is _DEFAULT else _timeout
        call_id = next(self._ids)
        # routing.encode_call's bytes, built here: it is every call's encoder. Positional
        # params go as the tuple (it encodes as the list make_params would make).
        params = make_params(args, kwargs) if kwargs else args
        if params:
            request = {"jsonrpc": "2.0", "method": method, "params": params, "id": call_id}
        else:
            request = {"jsonrpc": "2.0", "method": method, "id": call_id}
        try:
            body = orjson.dumps(request)  # a third faster than with an option to parse
        except TypeError:
            body = encode_call(method, params, call_id)  # dict keys that are not strings
        frame = self._pack_prefix(len(body)) + body
        slot = self._call_alone(call_id, frame, method, timeout)
        if slot is None:
            slot = _Slot(call_id)
            self._send([slot], frame)
            self._wait_done(slot, _deadline(timeout), method, timeout)
        else:
            error, result = slot.error, slot.result
            slot.conn.spare = slot  # answered, and no longer ours: the next serial call's
            if error is not None:
                raise error
            return result
        if slot.error is not None:
            raise slot.error
        return slot.result

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the server runs it and sends no reply."""
        self._send([], self._frame(encode_call(method, make_params(args, kwargs))))

    def batch(self, timeout: Any = _DEFAULT) -> Batch:
        """A context manager collecting calls and notifications, sent as one batch on exit."""
        return Batch(self, self.timeout if timeout is _DEFAULT else timeout)

    def stream(
        self, method: str, /, *args: Any, _timeout: float | None = None, **kwargs: Any
    ) -> Stream:
        """Call a streaming method; iterate the result for its items.

        `_timeout` bounds the wait for each item (default: none). Stopping early (`close()`,
        leaving a `with` block, or dropping the iterator) cancels the call on the server.
        """
        slot = self._new_slot()
        slot.items = collections.deque()
        self._send([slot], self._frame(encode_call(method, make_params(args, kwargs), slot.id)))
        return Stream(self, slot, method, _timeout)

    def close(self) -> None:
        """Close the connection; pending calls raise ConnectionLost. The client stays usable."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                lost = ConnectionLost(f"connection to {self.endpoint.text} closed by the client")
                self._break(conn, lost)

    # -- sending -----------------------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        return _Slot(next(self._ids))

    def _frame(self, body: bytes) -> bytes:
        return self._pack_prefix(len(body)) + body

    def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.broken and not self._closed_while_idle(conn):
            return conn
        with self._connect_lock:
            conn = self._conn
            if conn is None or conn.broken:
                sock = _open_socket(self.endpoint, self.connect_timeout)
                reader = MessageReader(self.max_frame_bytes, self.byteorder)
                if self._key is not None:
                    try:
                        self._authenticate(sock, reader, self._key)
                    except BaseException:
                        sock.close()
                        raise
                conn = _Connection(sock, reader, _bound_waits(sock, self.timeout))
                self._conn = conn
            return conn

    # -- the auth handshake ------------------------------------------------------------------

    def _authenticate(self, sock: socket.socket, reader: MessageReader, key: auth.Key) -> None:
        """Answer the server's challenge on `sock` (not yet shared) and check its proof.

        Whatever the server sent after its answer stays in `reader`, for the connection.
        """
        bounds = [t for t in (self.connect_timeout, self.timeout) if t]
        wait = min(bounds) if bounds else None
        deadline = _deadline(wait)
        handshake = auth.ClientHandshake(key)
        reader.decoder.max_frame_bytes = auth.PREAUTH_MAX_FRAME
        challenge = self._handshake_message(sock, reader, deadline)
        if challenge is NOTHING:
            raise AuthenticationFailed(
                f"{self.endpoint.text} did not ask for authentication within {wait:g} s "
                "(is it started with --auth-key-file?)"
            )
        if type(challenge) is not dict or challenge.get("method") != auth.METHOD:
            self._raise_if_error(challenge)
            raise AuthenticationFailed(
                f"{self.endpoint.text} did not ask for authentication: it sent {challenge!r:.80}"
            )
        try:
            params = handshake.answer(challenge.get("params"))
        except auth.AuthFailed as exc:
            raise AuthenticationFailed(f"{self.endpoint.text}: {exc}") from None
        call_id = next(self._ids)
        try:
            sock.sendall(self._frame(encode_call(auth.METHOD, params, call_id)))
        except OSError as exc:
            raise self._handshake_lost(os_reason(exc)) from exc
        while True:
            reply = self._handshake_message(sock, reader, deadline)
            if reply is NOTHING:
                raise TimeoutError(f"no answer to {auth.METHOD} within {wait:g} s")
            if type(reply) is dict and reply.get("id") == call_id:
                break
            self._raise_if_error(reply)  # e.g. the refusal of a connection over the limit
        if "error" in reply:
            raise RemoteError.from_object(reply["error"])
        try:
            handshake.check(reply.get("result"))
        except auth.AuthFailed as exc:
            raise AuthenticationFailed(
                f"{self.endpoint.text} did not prove it holds the key (wrong server digest)"
            ) from exc
        reader.decoder.max_frame_bytes = self.max_frame_bytes

    def _handshake_message(
        self, sock: socket.socket, reader: MessageReader, deadline: float | None
    ) -> Any:
        """The next message from `sock`, through `reader`; NOTHING past `deadline`."""
        while True:
            try:
                message = reader.next_message()
            except ReplyTooLarge as exc:
                text = (
                    f"{self.endpoint.text} sent a {exc.length}-byte frame during the auth handshake"
                )
                raise AuthenticationFailed(f"{text}: {exc.cause}" if exc.cause else text) from None
            except BadReply as exc:
                raise AuthenticationFailed(f"{self.endpoint.text}: {exc}") from None
            if message is not NOTHING:
                return message
            remaining = _remaining(deadline)
            if remaining == 0:
                return NOTHING
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return NOTHING
            except OSError as exc:
                raise self._handshake_lost(os_reason(exc)) from exc
            if not data:
                raise self._handshake_lost("closed by the server")
            reader.receive(data)

    def _handshake_lost(self, reason: str) -> ConnectionLost:
        return ConnectionLost(
            f"connection to {self.endpoint.text} lost during the auth handshake: {reason}"
        )

    @staticmethod
    def _raise_if_error(message: Any) -> None:
        if type(message) is dict and "error" in message:
            raise RemoteError.from_object(message["error"])

    def _closed_while_idle(self, conn: _Connection) -> bool:
        """With nothing pending, read what the server sent meanwhile: has it closed (idle
        timeout, restart)? Then the next request goes on a fresh connection, not into the void."""
        with self._lock:
            if conn.pending or conn.reading:
                return False
            conn.reading = True
        try:
            if _wait_readable(conn, 0):
                self._read(conn)
        finally:
            with self._lock:
                conn.reading = False
                self._wake_next_reader(conn)
        return conn.broken

    def _call_alone(
        self, call_id: int, frame: bytes, method: str, timeout: float | None
    ) -> _Slot | None:
        """Make the call `call_id` (sending `frame`) on an idle connection, as its only caller,
        and return its answered slot; None (nothing done) if another call is in flight or the
        connection is not open and quiet.

        The serial caller's path: one lock round trip claims both the send and the reading,
        then it sends, reads its own reply and gives both back, with no outbox, no parking
        and no connection check beyond one poll. Anyone arriving meanwhile takes the general
        path (`_send`, `_wait`) and finds what it expects: a flusher that sends the outbox
        before it reads, a reader that wakes the next one when its reply is in.
        """
        conn = self._conn
        # A first look without the lock (the look under it decides): with other calls in
        # flight, as under many greenlets, go straight to the general path, without the poll.
        if conn is None or conn.pending or conn.reading or conn.flushing or conn.broken:
            return None
        if conn.idle_poller is None:
            return None
        try:
            # Bytes on an idle connection (the server closed it, or a late reply): the
            # general path reads them first (`_closed_while_idle`). Not idle (another caller
            # reads, or polls here at the same time: RuntimeError): the general path too.
            if conn.idle_poller.poll(0) or (conn.tls and conn.sock.pending()):
                return None
        except (OSError, ValueError, RuntimeError):
            return None
        # Plain acquire and release, not `with`: this runs on every call, and a `with` costs
        # a special-method lookup and a bound method for each of enter and exit.
        lock = self._lock
        lock.acquire()
        if conn.pending or conn.reading or conn.flushing or conn.broken:
            lock.release()
            return None
        # The slot the last serial call gave back, if it did (a slot made per call costs more
        # than the rest of this critical section): nobody else holds it.
        slot = conn.spare
        if slot is None:
            slot = _Slot(call_id)
            slot.conn = conn
        else:
            conn.spare = None
            slot.id = call_id
            slot.done = False
            slot.result = slot.error = None
        conn.pending[call_id] = slot
        conn.reading = slot
        conn.flushing = True
        lock.release()
        handed_on = False  # the reading passed on with our reply, by _read
        answered = True
        try:
            try:
                conn.sock.sendall(frame)
            except OSError as exc:
                raise self._send_failed(conn, exc) from exc
            except BaseException:
                self._lose(conn, "a send was interrupted")
                raise
            lock.acquire()
            queued = bool(conn.outbox)
            if not queued:
                conn.flushing = False
            lock.release()
            if queued:  # calls that came while we sent: send them before we wait
                self._flush(conn, None, False)
            within = conn.recv_within
            deadline = None if timeout is None else time.monotonic() + timeout
            if timeout is None or (within is not None and timeout >= within):
                # The socket's timeout ends recv's wait before our deadline: read at once.
                handed_on = self._read(conn, slot)
            if not handed_on:
                answered = self._read_until(conn, slot, deadline)
        finally:
            if not handed_on:
                lock.acquire()
                if conn.reading is slot:
                    conn.reading = False
                    if conn.waiting:
                        self._wake_next_reader(conn)
                lock.release()
        if not answered:
            self._cancel(slot)
            raise TimeoutError(f"no reply to {method} within {timeout:g} s")
        return slot

    def _send(self, slots: list[_Slot], frame: bytes) -> None:
        """Send a request's frame (for the calls of `slots`, or a notification); it may ride
        in another caller's send.

        One caller sends at a time (`flushing`: the send is its until the outbox is empty). A
        frame queued behind it goes out in its next `sendall`, so concurrent callers pipeline
        on the socket in few system calls; if that send fails, the connection breaks and a
        call's wait raises ConnectionLost. A notification has no reply to wait for: queued,
        its caller waits for that send instead, and raises ConnectionLost if it failed.
        """
        unsent = None
        while True:
            conn = self._connection()
            with self._lock:
                # Broken since we looked (the reader met EOF)? Nothing was sent: use a new one.
                if conn.broken:
                    continue
                for slot in slots:
                    slot.conn = conn
                    conn.pending[slot.id] = slot
                if conn.flushing:
                    conn.outbox.append(frame)
                    if slots:
                        return
                    unsent = _Slot(0)
                    unsent.waiter = waiter = threading.Lock()  # a gevent lock once patched
                    waiter.acquire()
                    conn.unsent.append(unsent)
                    break
                conn.flushing = True
                # Other calls in flight: their callers may be about to send too.
                contended = len(conn.pending) > len(slots)
                break
        if unsent is not None:
            # Released by the flusher once its send is done, or by _break: bounded by that
            # send's own timeout, as sending it ourselves would be.
            waiter.acquire()
            if unsent.error is not None:
                raise unsent.error
            return
        self._flush(conn, frame, contended)

    def _flush(self, conn: _Connection, frame: bytes | None, contended: bool) -> None:
        """Send `frame`, then what other callers queued meanwhile, until the outbox is empty."""
        try:
            if contended:
                # Let the callers that are ready queue their frames first: one send for all.
                time.sleep(0)
            while True:
                sending = None  # the notifications this send carries
                with self._lock:
                    queued = conn.outbox
                    if queued:
                        conn.outbox = []
                        sending, conn.unsent = conn.unsent, []
                    elif frame is None:
                        conn.flushing = False
                        return
                if queued:
                    frame = b"".join([frame, *queued] if frame is not None else queued)
                try:
                    conn.sock.sendall(frame)
                except BaseException:
                    if sending:
                        # Its notifications fail with the connection (_break, next, fails
                        # conn.unsent; if it ran already, they are failed here).
                        with self._lock:
                            conn.unsent[:0] = sending
                            if conn.broken:
                                lost = ConnectionLost(f"connection to {self.endpoint.text} lost")
                                self._fail_unsent(conn, lost)
                    raise
                frame = None
                if sending:
                    for unsent in sending:
                        unsent.done = True
                        unsent.wake()
        except OSError as exc:
            raise self._send_failed(conn, exc) from exc
        except BaseException:
            # Interrupted mid-frame (a greenlet killed, ^C): the stream cannot be trusted.
            self._lose(conn, "a send was interrupted")
            raise

    def _send_failed(self, conn: _Connection, exc: OSError) -> ConnectionLost:
        lost = ConnectionLost(f"connection to {self.endpoint.text} lost: {os_reason(exc)}")
        with self._lock:
            self._break(conn, lost)
        return lost

    def _cancel(self, slot: _Slot, blocking: bool = True) -> None:
        """Forget `slot` and ask the server to stop its call (best effort: a notification).

        `blocking=False` (from a finalizer, which may run while this thread holds a lock)
        gives up rather than wait for a lock.
        """
        conn = slot.conn
        if not self._lock.acquire(blocking):
            return
        try:
            if conn.pending.pop(slot.id, None) is None or conn.broken:
                return
            frame = self._frame(encode_cancel(slot.id))
            if conn.flushing:
                conn.outbox.append(frame)  # whoever is sending sends it next
                return
            conn.flushing = True
        finally:
            self._lock.release()
        try:
            self._flush(conn, frame, False)
        except ConnectionLost:
            pass  # the connection is going anyway; whoever reads next finds it broken

    # -- waiting and reading -----------------------------------------------------------------

    def _wait_done(self, slot: _Slot, deadline: float | None, method: str, timeout: Any) -> None:
        while not slot.done:
            if not self._wait(slot, deadline):
                self._cancel(slot)
                raise TimeoutError(f"no reply to {method} within {timeout:g} s")

    def _wait(self, slot: _Slot, deadline: float | None) -> bool:
        """Block until `slot` is ready, reading for everyone if nobody else is. False on timeout."""
        conn = slot.conn
        with self._lock:
            while not slot.ready():
                if not conn.reading:
                    conn.reading = slot
                    break
                remaining = _remaining(deadline)
                if remaining == 0:
                    # We may have been woken to take over reading: pass that on.
                    self._wake_next_reader(conn)
                    return False
                # Park on a lock of our own (looked up now: a gevent lock once patched).
                waiter = threading.Lock()
                waiter.acquire()
                slot.waiter = waiter
                conn.waiting[slot] = None
                self._lock.release()
                try:
                    waiter.acquire(True, -1 if remaining is None else remaining)
                finally:
                    self._lock.acquire()
                    slot.waiter = None
                    del conn.waiting[slot]
            else:
                if not conn.reading:
                    self._wake_next_reader(conn)
                return True
        try:
            return self._read_until(conn, slot, deadline)
        finally:
            with self._lock:
                conn.reading = False
                self._wake_next_reader(conn)

    def _read_until(self, conn: _Connection, slot: _Slot, deadline: float | None) -> bool:
        """As the reader, read for everyone until `slot` is ready. False on timeout."""
        within = conn.recv_within
        monotonic = time.monotonic
        while not (slot.done or slot.items) and not conn.broken:
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining < 0.0:
                    remaining = 0.0
                if within is None or remaining < within:
                    # The socket's timeout would overshoot the deadline (or a socket without
                    # one would wait for ever): wait for bytes here first.
                    if not _wait_readable(conn, remaining):
                        if deadline - monotonic() <= 0.0:
                            return False
                        continue
                elif remaining == 0.0:
                    return False
            # Straight to recv: it waits (for the socket's timeout at most) itself.
            self._read(conn)
        return True

    @staticmethod
    def _wake_next_reader(conn: _Connection) -> None:
        """Wake one caller still waiting for its reply to take over reading (lock held)."""
        for other in conn.waiting:
            if not other.ready():  # a ready one was woken already and will not read
                other.wake()
                return

    def _read(self, conn: _Connection, owner: _Slot | None = None) -> bool:
        """Read once (the socket is readable) and hand out every complete frame.

        With `owner` (the reading caller's own call): True if its reply has come, and then
        the reading is passed on in the same critical section that routed the reply.
        """
        buffer = conn.buffer
        try:
            size = conn.sock.recv_into(buffer)
        except (BlockingIOError, ssl.SSLWantReadError, InterruptedError, TimeoutError):
            return False  # nothing yet (a recv bounded by the socket's timeout): wait on
        except OSError as exc:
            self._lose(conn, os_reason(exc))
            return False
        if not size:
            self._lose(conn, "closed by the server")
            return False
        try:
            messages = conn.reader.feed_from(buffer, size)
        except BadReply as exc:
            self._lose(conn, str(exc))
            return False
        if not messages:
            return False
        lock = self._lock
        lock.acquire()
        try:
            pending = conn.pending
            for message in messages:
                error = route(pending, message)
                if error is not None:
                    # An error that answers no call (connection refused, frame too large):
                    # it concerns every call on this connection, and the server closes it.
                    self._break(conn, error)
            if owner is None or not owner.done or conn.reading is not owner:
                return False
            conn.reading = False
            if conn.waiting:
                self._wake_next_reader(conn)
            return True
        finally:
            lock.release()

    def _lose(self, conn: _Connection, reason: str) -> None:
        with self._lock:
            self._break(conn, ConnectionLost(f"connection to {self.endpoint.text} lost: {reason}"))

    @staticmethod
    def _fail_unsent(conn: _Connection, error: BaseException) -> None:
        """Wake the notifiers whose frames will not be sent, with `error` (the lock is held)."""
        for slot in conn.unsent:
            slot.error = copy.copy(error)
            slot.done = True
            slot.wake()
        conn.unsent.clear()

    def _break(self, conn: _Connection, error: BaseException) -> None:
        """Fail every pending call on `conn` with `error` and close it (the lock is held)."""
        if conn.broken:
            return
        conn.broken = True
        if self._conn is conn:
            self._conn = None
        for slot in conn.pending.values():
            slot.error = copy.copy(error)  # one instance per caller: each raise sets its traceback
            slot.done = True
            slot.wake()
        conn.pending.clear()
        self._fail_unsent(conn, error)
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in poll on it
        except OSError:
            pass
        conn.sock.close()


class Proxy:
    """`proxy.a.b(1, 2)` calls method `a.b` with params [1, 2]."""

    __slots__ = ("_client", "_name")

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, name: str) -> Proxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return Proxy(self._client, f"{self._name}.{name}" if self._name else name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._name:
            raise TypeError("call a method of the proxy: client.proxy.NAME(...)")
        return self._client.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<rpcd.Proxy {self._name or '(root)'} on {self._client.endpoint.text}>"


class BatchCall:
    """One call of a batch; its result is there once the batch has been sent and answered."""

    __slots__ = ("method", "_slot")

    def __init__(self, method: str, slot: _Slot) -> None:
        self.method = method
        self._slot = slot

    @property
    def done(self) -> bool:
        return self._slot.done

    def result(self) -> Any:
        """The call's result; raises its RemoteError (or ConnectionLost)."""
        if not self._slot.done:
            raise RuntimeError(f"the batch holding {self.method} has not been answered yet")
        return self._slot.value()


class Batch:
    """Calls and notifications sent as one JSON-RPC batch when the `with` block ends."""

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._requests: list[bytes] = []
        self._calls: list[BatchCall] = []

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> BatchCall:
        slot = self._client._new_slot()
        self._requests.append(encode_call(method, make_params(args, kwargs), slot.id))
        entry = BatchCall(method, slot)
        self._calls.append(entry)
        return entry

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        self._requests.append(encode_call(method, make_params(args, kwargs)))

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.send()

    def send(self) -> None:
        """Send the batch and wait for every reply (called by the `with` block's end)."""
        if not self._requests:
            return
        client = self._client
        requests, self._requests = self._requests, []
        slots = [entry._slot for entry in self._calls]
        client._send(slots, client._frame(b"[" + b",".join(requests) + b"]"))
        deadline = _deadline(self._timeout)
        try:
            for slot in slots:
                client._wait_done(slot, deadline, "batch", self._timeout)
        except TimeoutError:
            for slot in slots:
                client._cancel(slot)
            raise


class Stream:
    """The items of a streaming call, in order; `result` is the final value once it ends."""

    def __init__(self, client: Client, slot: _Slot, method: str, timeout: float | None) -> None:
        self._client = client
        self._slot = slot
        self._method = method
        self.timeout = timeout  # the wait for each next item; None: no limit
        self._finished = False
        self.result: Any = None

    @property
    def id(self) -> int:
        """The call's id, as `rpc.cancel` takes it."""
        return self._slot.id

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        slot = self._slot
        if self._finished:
            raise StopIteration
        if not slot.ready() and not self._client._wait(slot, _deadline(self.timeout)):
            self.close()
            raise TimeoutError(f"nothing from {self._method} within {self.timeout:g} s")
        if slot.items:
            return slot.items.popleft()
        self._finished = True
        self.result = slot.value()
        raise StopIteration

    def close(self, blocking: bool = True) -> None:
        """Stop the stream; if it is still running, cancel the call on the server."""
        if not self._finished:
            self._finished = True
            if not self._slot.done:
                self._client._cancel(self._slot, blocking)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(blocking=False)
        except Exception:
            pass
