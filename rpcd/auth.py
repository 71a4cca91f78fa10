"""Sans-IO shared-key authentication: the `rpc.auth` challenge-response handshake, both sides.

The shape `multiprocessing` uses for its authkey, carried as JSON-RPC messages:

1. On connect the server sends a notification
   `{"jsonrpc": "2.0", "method": "rpc.auth", "params": {"mechanism": "hmac-sha256", "nonce": N}}`
   where N is 32 random bytes in hex.
2. The client calls `rpc.auth` with `{"digest": HMAC-SHA256(key, "rpcd-auth client " + N)}`
   in hex, and may add its own `"nonce": C` to have the server prove it holds the key too.
3. The server answers `{"authenticated": true}` (plus `"digest": HMAC-SHA256(key,
   "rpcd-auth server " + C)` when C was sent), or -32003 and closes the connection.

The role label in each digest keeps one side's answer from ever being valid for the other.
Digests are compared with `hmac.compare_digest`. Nothing here touches a socket:
`ServerHandshake` and `ClientHandshake` are the two sides' state machines (messages in,
messages or a verdict out), used by the server's session and by every client.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import string
from typing import Any

METHOD = "rpc.auth"
MECHANISM = "hmac-sha256"
NONCE_BYTES = 32
# Before the handshake succeeds a peer may send frames of at most this many bytes...
PREAUTH_MAX_FRAME = 4096
# ...and must finish it within this many seconds.
HANDSHAKE_TIMEOUT = 5.0

_CLIENT = b"rpcd-auth client "
_SERVER = b"rpcd-auth server "


class AuthKeyError(Exception):
    """The key file cannot be used; the message is one line naming the file."""


class AuthFailed(Exception):
    """The peer's answer does not prove it holds the key (or is malformed)."""


class Key:
    """A shared secret that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an empty key")
        self._secret = secret

    def __repr__(self) -> str:
        return "<rpcd.auth.Key>"

    __str__ = __repr__

    def digest(self, label: bytes, nonce: str) -> str:
        return hmac.new(self._secret, label + nonce.encode("ascii"), hashlib.sha256).hexdigest()


def load_key(path: str, private: bool = True) -> Key:
    """Read a key file: its bytes, less one trailing newline. Raise AuthKeyError if unusable.

    `private` (the server's case) also refuses a file that group or others may read or
    write, as OpenSSH refuses such a private key: anyone who can read it can authenticate.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            secret = f.read()
    except OSError as exc:
        raise AuthKeyError(f"cannot read auth key file {path}: {exc.strerror}") from None
    if private and mode & 0o077:
        raise AuthKeyError(
            f"auth key file {path} is open to group or others (mode {stat.S_IMODE(mode):04o}): "
            f"anyone who reads it can authenticate; chmod 600 {path}"
        )
    secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    if not secret:
        raise AuthKeyError(f"auth key file {path} is empty")
    return Key(secret)


def _key(key: Key | bytes) -> Key:
    return key if isinstance(key, Key) else Key(key)


def new_nonce() -> str:
    """A fresh random challenge, hex-encoded."""
    return os.urandom(NONCE_BYTES).hex()


def challenge(nonce: str) -> dict:
    """The params of the server's opening `rpc.auth` notification."""
    return {"mechanism": MECHANISM, "nonce": nonce}


def _nonce(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES or not _is_hex(value):
        raise AuthFailed(f"a nonce must be {2 * NONCE_BYTES} hex digits")
    return value


def _is_hex(value: str) -> bool:
    return all(c in string.hexdigits for c in value)


def respond(key: Key | bytes, challenge_params: Any, client_nonce: str | None = None) -> dict:
    """Client side: the params of the `rpc.auth` call answering the server's challenge.

    `key` is a Key or the secret's bytes. Pass `client_nonce` (from `new_nonce()`) to ask
    the server to prove itself as well, and check its reply with `check_server`.
    """
    if not isinstance(challenge_params, dict) or challenge_params.get("mechanism") != MECHANISM:
        raise AuthFailed(f"the server offers no {MECHANISM} challenge")
    params = {"digest": _key(key).digest(_CLIENT, _nonce(challenge_params.get("nonce")))}
    if client_nonce is not None:
        params["nonce"] = _nonce(client_nonce)
    return params


def verify(key: Key, nonce: str, params: Any) -> dict:
    """Server side: check the client's `rpc.auth` params; return the result to send back."""
    if isinstance(params, tuple) and len(params) == 1:
        params = params[0]
    if not isinstance(params, dict) or not isinstance(params.get("digest"), str):
        raise AuthFailed('expected {"digest": HEX} (and optionally "nonce")')
    if not hmac.compare_digest(params["digest"].encode(), key.digest(_CLIENT, nonce).encode()):
        raise AuthFailed("wrong digest")
    result: dict = {"authenticated": True}
    if "nonce" in params:
        result["digest"] = key.digest(_SERVER, _nonce(params["nonce"]))
    return result


def check_server(key: Key | bytes, client_nonce: str, result: Any) -> bool:
    """Client side: whether the server's `rpc.auth` result proves it holds the key."""
    if not isinstance(result, dict) or not isinstance(result.get("digest"), str):
        return False
    expected = _key(key).digest(_SERVER, client_nonce)
    return hmac.compare_digest(result["digest"].encode(), expected.encode())


class ServerHandshake:
    """The server's side of one connection's handshake: its challenge, then the verdict."""

    __slots__ = ("_key", "_nonce", "challenge_params")

    def __init__(self, key: Key) -> None:
        self._key = key
        self._nonce = new_nonce()
        # The params of the `rpc.auth` notification the server sends first.
        self.challenge_params: dict = challenge(self._nonce)

    def verify(self, params: Any) -> dict:
        """The result to send back for the client's `rpc.auth` params; AuthFailed(reason)."""
        return verify(self._key, self._nonce, params)


class ClientHandshake:
    """The client's side of one connection's handshake, always mutual: it answers the
    server's challenge with a nonce of its own, then checks the server's proof."""

    __slots__ = ("_key", "_nonce")

    def __init__(self, key: Key | bytes) -> None:
        self._key = _key(key)
        self._nonce = new_nonce()

    def answer(self, challenge_params: Any) -> dict:
        """The params of the client's `rpc.auth` call; AuthFailed if the challenge is malformed."""
        return respond(self._key, challenge_params, self._nonce)

    def check(self, result: Any) -> None:
        """AuthFailed unless the server's `rpc.auth` result proves it holds the key."""
        if not check_server(self._key, self._nonce, result):
            raise AuthFailed("the server did not prove it holds the key (wrong server digest)")


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MECHANISM",
    "METHOD",
    "PREAUTH_MAX_FRAME",
    "AuthFailed",
    "AuthKeyError",
    "ClientHandshake",
    "Key",
    "ServerHandshake",
    "challenge",
    "check_server",
    "load_key",
    "new_nonce",
    "respond",
    "verify",
]
