"""Client endpoint strings (`tcp:HOST:PORT`, `unix:PATH`, `ssl:HOST:PORT`) and their TLS context."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass, field

from rpcd.endpoint_syntax import tokenize

DEFAULT_ENDPOINT = "tcp:127.0.0.1:5354"
# The CA files read from a `caCertsDir=` directory (Twisted's own ssl: reads only *.pem).
CA_SUFFIXES = (".pem", ".crt")


@dataclass(frozen=True)
class Endpoint:
    """A parsed client endpoint string: `tcp:HOST:PORT`, `unix:PATH` or `ssl:HOST:PORT`.

    The syntax is Twisted's (`rpcd.endpoint_syntax`): colon-separated, positional or
    `key=value`, `\\:` for a literal colon (`tcp:\\:\\:1:5354`); `[::1]` is also accepted
    as a host.
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    _KEYS = {
        "tcp": ("host", "port"),
        "unix": ("path",),
        "ssl": ("host", "port"),
    }
    _OPTIONS = {
        "tcp": {"timeout", "bindAddress"},
        "unix": {"timeout", "checkPID"},
        "ssl": {"timeout", "bindAddress", "caCertsDir", "certKey", "privateKey", "hostname"},
    }

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        kind, fields = tokenize(text, brackets=True)
        if kind not in cls._KEYS or not text.partition(":")[2]:
            raise ValueError(
                f"bad endpoint {text!r}: expected tcp:HOST:PORT, unix:PATH or ssl:HOST:PORT"
            )
        names = cls._KEYS[kind]
        values: dict[str, str] = {}
        options: dict[str, str] = {}
        positional = 0
        for key, value in fields:
            if key is not None and (key in names or key in cls._OPTIONS[kind]):
                (values if key in names else options)[key] = value
            elif key is not None and kind != "unix":
                raise ValueError(f"bad endpoint {text!r}: unknown option {key!r}")
            elif positional < len(names):
                # A unix path may hold a '=' of its own: then the field is all path.
                values[names[positional]] = value if key is None else f"{key}={value}"
                positional += 1
            else:
                raise ValueError(f"bad endpoint {text!r}: too many fields")
        if kind == "unix":
            if not values.get("path"):
                raise ValueError(f"bad endpoint {text!r}: no path")
            return cls(kind, path=values["path"], options=options, text=text)
        host = values.get("host", "")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(values.get("port", ""))
        except ValueError:
            raise ValueError(f"bad endpoint {text!r}: the port must be a number") from None
        if not host:
            raise ValueError(f"bad endpoint {text!r}: no host")
        return cls(kind, host=host, port=port, options=options, text=text)

    @property
    def server_hostname(self) -> str:
        """The name a TLS server's certificate must carry: `hostname=`, else the host."""
        return self.options.get("hostname", self.host)


def ca_files(ca_dir: str) -> list[str]:
    """The CA certificate files of a `caCertsDir=` directory, in name order."""
    return [
        os.path.join(ca_dir, name)
        for name in sorted(os.listdir(ca_dir))
        if name.endswith(CA_SUFFIXES)
    ]


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    """Verify the server against the system's CAs, or only the CA files in caCertsDir."""
    options = endpoint.options
    context = ssl.create_default_context()
    ca_dir = options.get("caCertsDir")
    if ca_dir:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for path in ca_files(ca_dir):
            context.load_verify_locations(cafile=path)
    if options.get("certKey"):
        context.load_cert_chain(options["certKey"], options.get("privateKey") or None)
    return context


def os_reason(exc: OSError) -> str:
    """An OSError in a few lower-case words ("connection refused", "timed out")."""
    # BlockingIOError: a blocking socket's wait ended by its SO_SNDTIMEO or SO_RCVTIMEO.
    if isinstance(exc, (socket.timeout, BlockingIOError)):
        return "timed out"
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
