"""rpcd's clients: the blocking `Client` (also gevent-friendly), the Twisted client and `rpcd-call`.

The blocking client and its exceptions are importable from here (`from rpcd.client import
Client, RemoteError`); the Twisted client is `rpcd.client.twisted_client` (also
`rpcd.twisted_client`), so importing this package never imports Twisted.

Every client shares the same pieces, none of them a server module: `rpcd.wire` (frames,
the request encoder), `rpcd.auth` (the handshake), `rpcd.endpoint_syntax` (the endpoint
tokenizer), and here `errors`, `endpoint` and `routing` (reply routing).
"""

from rpcd.client.blocking import Batch, BatchCall, Client, Proxy, Stream
from rpcd.client.endpoint import DEFAULT_ENDPOINT, Endpoint
from rpcd.client.errors import (
    ERRORS,
    AuthenticationFailed,
    CallCancelled,
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    FrameTooLarge,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotAuthenticated,
    ParseError,
    RemoteError,
    ServerBusy,
    ShuttingDown,
    TooManyConnections,
)
from rpcd.client.routing import CANCEL_METHOD, make_params

__all__ = [
    "CANCEL_METHOD",
    "DEFAULT_ENDPOINT",
    "ERRORS",
    "AuthenticationFailed",
    "Batch",
    "BatchCall",
    "CallCancelled",
    "CallTimeout",
    "Client",
    "ConnectFailed",
    "ConnectionLost",
    "Endpoint",
    "FrameTooLarge",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "NotAuthenticated",
    "ParseError",
    "Proxy",
    "RemoteError",
    "ServerBusy",
    "ShuttingDown",
    "Stream",
    "TooManyConnections",
    "make_params",
]
