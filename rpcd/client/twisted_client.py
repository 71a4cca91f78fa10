"""Twisted client: `connect(reactor, endpoint)` gives a connection whose calls return Deferreds.

Replies fail with the blocking client's exception classes (`RemoteError` and its
subclasses, `ConnectionLost`, `ConnectFailed`). Cancelling a call's Deferred sends
`rpc.cancel` for it, so the server stops the work too. With a shared key the connection
answers the server's `rpc.auth` challenge (mutually, as the blocking client does) before
`connect` hands it out.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import error as netError
from twisted.internet import ssl as tls
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd import auth
from rpcd.client.endpoint import Endpoint, ca_files
from rpcd.client.errors import AuthenticationFailed, ConnectFailed, ConnectionLost, RemoteError
from rpcd.client.routing import (
    MAX_REPLY_BYTES,
    NOTHING,
    BadReply,
    MessageReader,
    encode_call,
    encode_cancel,
    make_params,
    route,
)
from rpcd.wire import encode_frame


class _Call:
    """A call waiting for its reply: its Deferred, and where its stream items go."""

    __slots__ = ("deferred", "item")

    def __init__(self, deferred: Deferred, item: Callable[[Any], None] | None) -> None:
        self.deferred = deferred
        self.item = item

    def on_item(self, item: Any) -> None:
        if self.item is not None:
            self.item(item)

    def on_result(self, result: Any) -> None:
        self.deferred.callback(result)

    def on_error(self, error: RemoteError) -> None:
        self.deferred.errback(error)


log = Logger()


@implementer(IHandshakeListener)
class RPCConnection(Protocol):
    """One connection to rpcd; calls are multiplexed on it by id."""

    MAX_LENGTH = MAX_REPLY_BYTES

    def __init__(self, byteorder: str = "big", auth_key: auth.Key | bytes | None = None) -> None:
        if byteorder not in ("big", "little"):
            raise ValueError("byteorder must be 'big' or 'little'")
        self.byteorder = byteorder
        self._reader = MessageReader(self.MAX_LENGTH, byteorder)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._closed: Deferred = Deferred()
        self._lost: Failure | None = None
        self._bad_reply: str | None = None  # why we closed: the server sent no rpcd frame
        self._key = auth.Key(auth_key) if isinstance(auth_key, bytes) else auth_key
        # Fires with self once authenticated (at once without a key), or fails.
        self._ready: Deferred | None = None
        self._handshake: auth.ClientHandshake | None = None  # once the challenge is answered
        # Over TLS, `connect` waits for the TLS handshake (certificate checked) on this.
        self._tls: Deferred | None = None

    def handshakeCompleted(self) -> None:
        if self._tls is not None and not self._tls.called:
            self._tls.callback(self)

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)  # TCP, or TLS over it
        if no_delay is not None:
            no_delay(True)  # a call's frame leaves now, not once the last one is acknowledged
        if self._key is None:
            self._ready = succeed(self)
        else:  # cancelling the wait for the handshake drops the connection
            self._reader.decoder.max_frame_bytes = auth.PREAUTH_MAX_FRAME
            self._ready = Deferred(lambda _: self.transport.loseConnection())

    def _authenticated(self, reactor: Any, timeout: float | None) -> Deferred:
        """Fires with this connection once the handshake is done (at once without a key);
        fails with NotAuthenticated, AuthenticationFailed or ConnectionLost, closing it."""
        ready = self._ready
        if timeout is not None and not ready.called:
            timer = reactor.callLater(timeout, self._no_challenge, timeout)

            def stop_timer(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            ready.addBoth(stop_timer)
        return ready

    def _no_challenge(self, timeout: float) -> None:
        if self._handshake is None:
            reason = f"the server did not ask for authentication within {timeout:g} s"
            self._auth_failed(AuthenticationFailed(reason))
        else:
            self._auth_failed(TimeoutError(f"no answer to {auth.METHOD} within {timeout:g} s"))

    def _auth_failed(self, error: Exception) -> None:
        if not self._ready.called:
            self._ready.errback(error)
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()

    def _challenged(self, params: Any) -> None:
        if self._ready.called or self._handshake is not None:
            return  # not waiting for a challenge (no key, or one answered already)
        self._handshake = auth.ClientHandshake(self._key)
        try:
            answer = self._handshake.answer(params)
        except auth.AuthFailed as exc:
            self._auth_failed(AuthenticationFailed(str(exc)))
            return
        self._call(auth.METHOD, answer, None).addCallbacks(self._answered, self._refused)

    def _answered(self, result: Any) -> None:
        try:
            self._handshake.check(result)
        except auth.AuthFailed as exc:
            self._auth_failed(AuthenticationFailed(str(exc)))
            return
        self._reader.decoder.max_frame_bytes = self.MAX_LENGTH
        if not self._ready.called:
            self._ready.callback(self)

    def _refused(self, failure: Failure) -> None:
        self._auth_failed(failure.value)

    # -- calls -------------------------------------------------------------------------------

    def callRemote(self, method: str, /, *args: Any, **kwargs: Any) -> Deferred:
        """Call `method`; the Deferred fires with its result or fails with a RemoteError."""
        return self._call(method, make_params(args, kwargs), None)

    def streamRemote(
        self, on_item: Callable[[Any], None], method: str, /, *args: Any, **kwargs: Any
    ) -> Deferred:
        """Call a streaming method: `on_item(item)` for each item, then the Deferred fires
        with the final result. Cancel the Deferred to stop the stream."""
        return self._call(method, make_params(args, kwargs), on_item)

    def notifyRemote(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no reply)."""
        self._send(encode_call(method, make_params(args, kwargs)))

    def close(self) -> Deferred:
        """Close the connection; the Deferred fires once it is closed."""
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
        return self.whenClosed()

    def whenClosed(self) -> Deferred:
        """A Deferred that fires (with None) when the connection closes."""
        d: Deferred = Deferred()
        if self._lost is not None:
            d.callback(None)
        else:
            self._closed.addBoth(lambda _: d.callback(None))
        return d

    def _call(self, method: str, params: Any, on_item: Callable[[Any], None] | None) -> Deferred:
        if self._lost is not None:
            return fail(ConnectionLost(f"connection lost: {self._lost_reason()}"))
        call_id = next(self._ids)
        d = Deferred(lambda _: self._cancel(call_id))
        self._pending[call_id] = _Call(d, on_item)
        self._send(encode_call(method, params, call_id))
        return d

    def _cancel(self, call_id: int) -> None:
        # The Deferred fails with CancelledError; the server's -32006 reply is dropped.
        if self._pending.pop(call_id, None) is not None and self._lost is None:
            self._send(encode_cancel(call_id))

    def _send(self, body: bytes) -> None:
        self.transport.write(encode_frame(body, self.byteorder))

    # -- replies -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        reader.receive(data)
        while self._bad_reply is None:
            try:
                message = reader.next_message()
            except BadReply as exc:
                self._bad_reply = str(exc)
                self.transport.loseConnection()
                return
            if message is NOTHING:
                return
            if type(message) is dict and message.get("method") == auth.METHOD:
                if self._key is not None:
                    self._challenged(message.get("params"))
                continue
            error = route(self._pending, message)
            if error is not None:
                # Answers no call (refused connection, frame too large): fail them all.
                self._fail_all(Failure(error))

    def connectionLost(self, reason: Failure = None) -> None:
        self._lost = reason
        if self._tls is not None and not self._tls.called:
            self._tls.errback(reason)  # `connect` turns it into ConnectFailed
        self._fail_all(Failure(ConnectionLost(f"connection lost: {self._lost_reason()}")))
        closed, self._closed = self._closed, Deferred()
        closed.callback(None)

    def _lost_reason(self) -> str:
        if self._bad_reply is not None:
            return self._bad_reply
        reason = self._lost
        if reason is None:
            return "closed"
        if reason.check(netError.ConnectionDone):
            return "closed by the server"
        return reason.getErrorMessage()

    def _fail_all(self, failure: Failure) -> None:
        if self._ready is not None and not self._ready.called:
            self._ready.errback(failure)
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.deferred.errback(failure)


def connect(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint,
    *,
    byteorder: str = "big",
    auth_key_file: str | None = None,
    auth_key: auth.Key | bytes | None = None,
    auth_timeout: float | None = 10.0,
    insecure_tls: bool = False,
) -> Deferred:
    """Connect to rpcd; the Deferred fires with an `RPCConnection` or fails with ConnectFailed.

    `endpoint` is a Twisted client endpoint string (`tcp:127.0.0.1:5354`, `unix:PATH`,
    `ssl:HOST:PORT`, `tls:...`) or an endpoint object. With `auth_key_file` (or `auth_key`
    bytes) the Deferred fires only once the `rpc.auth` handshake is done, within
    `auth_timeout` seconds; else it fails with NotAuthenticated (the server rejects the key),
    AuthenticationFailed (the server asked for no authentication, or its proof is wrong) or
    ConnectionLost. A key file that cannot be read raises `rpcd.auth.AuthKeyError` at once.

    An `ssl:HOST:PORT` string takes the blocking client's options and, like it, verifies the
    server's certificate and host name: against the system's trust store, or only the CA
    files (*.pem and *.crt; Twisted's own ssl: reads only *.pem, and verifies nothing
    without caCertsDir) in `caCertsDir=DIR`; `hostname=NAME` when the certificate names
    another host than HOST. `insecure_tls=True` turns verification off, and logs a warning
    saying so: anyone on the path can then impersonate the server.
    """
    if auth_key_file is not None and auth_key is not None:
        raise ValueError("give auth_key_file or auth_key, not both")
    if auth_key_file is not None:
        auth_key = auth.load_key(auth_key_file, private=False)
    text = endpoint if isinstance(endpoint, str) else repr(endpoint)
    protocol = RPCConnection(byteorder, auth_key)
    if isinstance(endpoint, str):
        kind = endpoint.partition(":")[0].lower()
        if kind == "ssl":
            endpoint = _tls_endpoint(reactor, Endpoint.parse(endpoint), insecure_tls)
        else:
            endpoint = clientFromString(reactor, endpoint)
        if kind in ("ssl", "tls"):
            protocol._tls = Deferred()
    d = connectProtocol(endpoint, protocol)

    def failed(failure: Failure) -> Failure:
        value = failure.trap(netError.ConnectError) and failure.value
        if isinstance(value, netError.ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(value.osError, int):
            reason = os.strerror(value.osError).lower()
        else:
            reason = value.string or failure.getErrorMessage()
        raise ConnectFailed(text, reason)

    def tls_failed(failure: Failure) -> Failure:
        raise ConnectFailed(text, _tls_reason(failure))

    d.addErrback(failed)
    if protocol._tls is not None:
        d.addCallback(lambda conn: conn._tls.addErrback(tls_failed))
    return d.addCallback(lambda conn: conn._authenticated(reactor, auth_timeout))


def _tls_endpoint(reactor: Any, parsed: Endpoint, insecure: bool) -> IStreamClientEndpoint:
    """A TLS client endpoint for an `ssl:` string that verifies what Twisted's would not."""
    options = parsed.options
    client_cert = None
    if options.get("certKey"):
        pem = Path(options["certKey"]).read_bytes()
        if options.get("privateKey"):
            pem += b"\n" + Path(options["privateKey"]).read_bytes()
        client_cert = tls.PrivateCertificate.loadPEM(pem)
    if insecure:
        log.warn(
            "TLS certificates are NOT verified for {endpoint} (insecure_tls=True): "
            "anyone on the path can impersonate the server",
            endpoint=parsed.text,
        )
        extra = {}
        if client_cert is not None:
            extra = {
                "privateKey": client_cert.privateKey.original,
                "certificate": client_cert.original,
            }
        creator = tls.CertificateOptions(verify=False, **extra)
    else:
        ca_dir = options.get("caCertsDir")
        if ca_dir:
            certificates = [tls.Certificate.loadPEM(Path(f).read_bytes()) for f in ca_files(ca_dir)]
            trust = tls.trustRootFromCertificates(certificates)
        else:
            trust = tls.platformTrust()
        creator = tls.optionsForClientTLS(
            parsed.server_hostname, trustRoot=trust, clientCertificate=client_cert
        )
    bind = options.get("bindAddress")
    tcp = HostnameEndpoint(
        reactor,
        parsed.host,
        parsed.port,
        timeout=float(options.get("timeout", 30)),
        bindAddress=(bind, 0) if bind else None,
    )
    return wrapClientTLS(creator, tcp)


def _tls_reason(failure: Failure) -> str:
    """Why the TLS handshake failed, in the words the blocking client uses."""
    if failure.check(SSL.Error) and failure.value.args and isinstance(failure.value.args[0], list):
        words = ", ".join(str(e[-1]) for e in failure.value.args[0] if e) or "unknown error"
        if "certificate verify failed" in words:
            return f"TLS certificate verification failed: {words}"
        return f"TLS handshake failed: {words}"
    value = failure.value
    if type(value).__name__ == "VerificationError":  # service_identity: the host name
        return (
            f"TLS certificate verification failed: the certificate does not name the host ({value})"
        )
    if failure.check(netError.ConnectionDone, netError.ConnectionLost):
        return "TLS handshake failed: the server closed the connection (does it speak TLS?)"
    return f"TLS handshake failed: {failure.getErrorMessage()}"
