"""Listeners from endpoint strings: `systemd:` adopted rpcd's way, `haproxy:` through rpcd.proxy.

Twisted's own `systemd:` parser reads the environment once, when `twisted.internet.endpoints`
is imported (before any rpcd code runs under twistd), drops every descriptor when
`LISTEN_FDNAMES` is missing, and answers a missing index with an IndexError. rpcd reads the
systemd protocol itself (fds from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`) from the
environment the process was started with, and says in one line what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, _parse

LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor
DEFAULT_NAME = "unknown"  # what systemd names a descriptor its unit gives no FileDescriptorName
_DOMAINS = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}


class ListenError(ValueError):
    """A listener cannot be set up; the message is one line naming the endpoint."""


def _start_environ() -> dict[str, str]:
    """The environment this process was exec'd with.

    Twisted deletes LISTEN_PID and LISTEN_FDS from os.environ at import, so the values are
    read from /proc/self/environ, which keeps the exec-time block (os.environ otherwise).
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return dict(os.environ)
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    # Whatever the process set itself since (a test, the supervisor's worker) wins.
    env.update({k: v for k, v in os.environ.items() if k.startswith("LISTEN_")})
    return env


def inherited(environ: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """The (descriptor, name) pairs passed to this process the systemd way, in order.

    Without LISTEN_FDNAMES (or with a count that disagrees) every descriptor is named
    "unknown", as sd_listen_fds_with_names(3) does: they stay usable by index.
    """
    env = _start_environ() if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    if len(names) != count:
        names = [DEFAULT_NAME] * count
    return [(LISTEN_FDS_START + i, names[i]) for i in range(max(count, 0))]


def _described(found: list[tuple[int, str]]) -> str:
    if not found:
        return "no socket was passed to this process (LISTEN_FDS/LISTEN_PID not set for it)"
    return "passed: " + ", ".join(f"index {i} name {n!r}" for i, (_, n) in enumerate(found))


def systemd_socket(description: str, found: list[tuple[int, str]] | None = None):
    """The passed descriptor and address family a `systemd:` endpoint string names.

    `index=N` or `name=NAME` picks one (neither: the only one passed); `domain=` (INET,
    INET6, UNIX) is optional and, when given, must match the socket.
    """
    found = inherited() if found is None else found
    args, kwargs = _parse(description)
    index, name, domain = kwargs.get("index"), kwargs.get("name"), kwargs.get("domain")
    unknown = set(kwargs) - {"index", "name", "domain"}
    if unknown or any(args[1:]):
        raise ListenError(f"{description}: systemd endpoints take domain=, index= and name= only")
    if index is not None and name is not None:
        raise ListenError(f"{description}: give index= or name=, not both")
    if index is not None:
        if not index.isdigit() or int(index) >= len(found):
            raise ListenError(
                f"{description}: no passed socket at index {index}; {_described(found)}"
            )
        fd = found[int(index)][0]
    elif name is not None:
        matches = [fd for fd, n in found if n == name]
        if len(matches) != 1:
            how = "no" if not matches else "more than one"
            raise ListenError(
                f"{description}: {how} passed socket named {name!r}; {_described(found)}"
            )
        fd = matches[0]
    elif len(found) == 1:
        fd = found[0][0]
    else:
        raise ListenError(f"{description}: say index= or name=; {_described(found)}")
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise ListenError(
            f"{description}: descriptor {fd} is not a socket: {exc.strerror}"
        ) from None
    with probe:
        family, kind = probe.family, probe.type
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if kind != socket.SOCK_STREAM or not listening:
        raise ListenError(f"{description}: descriptor {fd} is not a listening stream socket")
    if domain is not None and domain.upper() != _DOMAINS.get(family):
        raise ListenError(
            f"{description}: the passed socket is {_DOMAINS.get(family, family)}, not {domain}"
        )
    return fd, family


def systemd_public_address(description: str) -> str | None:
    """Why a `systemd:` listener is reachable from other hosts, judged by the passed socket
    itself: None for a UNIX socket or one bound to a loopback address."""
    try:
        fd, family = systemd_socket(description)
    except ListenError:
        return None  # nothing to expose: adopting it fails with that one line instead
    if family == socket.AF_UNIX:
        return None
    with socket.socket(fileno=os.dup(fd)) as probe:
        host = probe.getsockname()[0]
    address = ipaddress.ip_address(host.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    if (mapped or address).is_loopback:
        return None
    return f"a systemd-passed socket on {host}"


class _Adopted(AdoptedStreamServerEndpoint):
    # The original os.close: gevent's patched one is a Python function, which a class
    # attribute would turn into a method (rpcd.reactor.monkey_patch fixes Twisted's class too).
    _close = staticmethod(os.close)


def server_endpoint(description: str, reactor: Any) -> Any:
    """An IStreamServerEndpoint for `description`; `systemd:` ones are adopted rpcd's way."""
    kind = description.split(":", 1)[0].lower()
    if kind == "systemd":
        fd, family = systemd_socket(description)
        return _Adopted(reactor, fd, family)
    try:
        return endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as exc:
        raise ListenError(f"{description}: {exc}") from None


def listener(description: str, factory: Any, settings: Any, reactor: Any) -> Any:
    """The service listening on `description` with `factory`; `haproxy:` reads a PROXY header
    first (rpcd.proxy), so the connection sees the real client."""
    kind, _, rest = description.partition(":")
    if kind.lower() == "haproxy":
        from rpcd import proxy

        factory = proxy.ProxyFactory(
            factory,
            timeout=settings.proxy_header_timeout,
            max_header=settings.proxy_max_header_bytes,
            clock=reactor,
        )
        description = rest
    service = StreamServerEndpointService(server_endpoint(description, reactor), factory)
    service._raiseSynchronously = True  # a port we cannot bind stops start-up
    return service


__all__ = [
    "ListenError",
    "inherited",
    "listener",
    "server_endpoint",
    "systemd_public_address",
    "systemd_socket",
]
