"""The clients' exceptions: the server's JSON-RPC errors by code, and the connection's failures."""

from __future__ import annotations

from typing import Any

from rpcd.wire import (
    CALL_TIMEOUT,
    CANCELLED,
    FRAME_TOO_LARGE,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_AUTHENTICATED,
    PARSE_ERROR,
    SERVER_BUSY,
    SHUTTING_DOWN,
    TOO_MANY_CONNECTIONS,
)


class RemoteError(Exception):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"

    @staticmethod
    def from_object(error: Any) -> RemoteError:
        """The exception for a JSON-RPC error object, of the subclass its code names."""
        if not isinstance(error, dict):
            return RemoteError(INTERNAL_ERROR, f"malformed error from the server: {error!r}")
        code = error.get("code")
        cls = ERRORS.get(code, RemoteError) if type(code) is int else RemoteError
        return cls(code, str(error.get("message", "")), error.get("data"))


class ParseError(RemoteError):
    """-32700: the server could not parse what it received."""


class InvalidRequest(RemoteError):
    """-32600: not a valid JSON-RPC request (e.g. a batch larger than the server's max_batch)."""


class MethodNotFound(RemoteError):
    """-32601: no method of that name."""


class InvalidParams(RemoteError):
    """-32602: the arguments do not fit the method's signature."""


class InternalError(RemoteError):
    """-32603: the method raised; `data["type"]` names the exception class."""


class ServerBusy(RemoteError):
    """-32000: the server's task queue is full; try again later."""


class CallTimeout(RemoteError):
    """-32001: the call ran past the server's call_timeout and was stopped."""


class TooManyConnections(RemoteError):
    """-32002: the server refused the connection (its connection limit is reached)."""


class NotAuthenticated(RemoteError):
    """-32003: the connection must authenticate first."""


class FrameTooLarge(RemoteError):
    """-32004: a request exceeded the server's max_frame_bytes; the server closed the connection."""


class ShuttingDown(RemoteError):
    """-32005: the server is stopping and takes no new calls (or the call outlived the grace)."""


class CallCancelled(RemoteError):
    """-32006: the call was cancelled (by `rpc.cancel`)."""


ERRORS: dict[int, type[RemoteError]] = {
    PARSE_ERROR: ParseError,
    INVALID_REQUEST: InvalidRequest,
    METHOD_NOT_FOUND: MethodNotFound,
    INVALID_PARAMS: InvalidParams,
    INTERNAL_ERROR: InternalError,
    SERVER_BUSY: ServerBusy,
    CALL_TIMEOUT: CallTimeout,
    TOO_MANY_CONNECTIONS: TooManyConnections,
    NOT_AUTHENTICATED: NotAuthenticated,
    FRAME_TOO_LARGE: FrameTooLarge,
    SHUTTING_DOWN: ShuttingDown,
    CANCELLED: CallCancelled,
}


class ConnectFailed(ConnectionError):
    """The client could not connect; `reason` says why in a few words ("connection refused"),
    `hint` the likely cause and its fix ("" when there is no better guess)."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot connect to {endpoint}: {reason}")
        self.endpoint = endpoint
        self.reason = reason

    @property
    def hint(self) -> str:
        reason = self.reason.lower().replace("_", " ")  # OpenSSL says WRONG_VERSION_NUMBER
        if "certificate" in reason or "hostname mismatch" in reason:
            return (
                "the server's certificate is not trusted for this name: give its CA with "
                "caCertsDir=DIR (*.pem and *.crt files) and, if the certificate names another "
                "host, hostname=NAME"
            )
        if "tls" in reason or "ssl" in reason:
            if any(s in reason for s in ("wrong version", "record", "eof", "unexpected")):
                return "the server does not speak TLS there: use tcp: for a plain listener"
            return "check the server's ssl: listener and the client's certKey/privateKey"
        if "timed out" in reason:
            return "is the host reachable (no firewall dropping packets) and rpcd listening there?"
        if "refused" in reason or "no such file" in reason:
            return "is rpcd running?"
        return ""


class ConnectionLost(ConnectionError):
    """The connection broke while calls were pending; the next call reconnects."""


class AuthenticationFailed(ConnectionError):
    """The client has a key but the server did not prove it holds it too: it sent no
    `rpc.auth` challenge in time (a server without `--auth-key-file`, or something else
    listening there), a malformed one, or a wrong proof. The connection is closed.

    A wrong key on the client's side is the server's -32003 instead, `NotAuthenticated`;
    catch both for "the keys do not match". Retrying helps with neither.
    """
