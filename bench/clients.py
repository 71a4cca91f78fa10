"""Load generators: one client process per invocation, its result as JSON on the last line.

    python bench/clients.py '{"mode": ..., ...}'

bench/loadgen.c drives every server that speaks JSON-RPC or msgpack-rpc; these are the
Python clients kept for what it cannot measure, and for a machine without a C compiler.
Modes: `rate` (calls completed in a time window: a peer through its own client library, or
the raw-socket fallback with 1 or N calls in flight), `latency` and `concurrent` (fallbacks
for f and c), `idle` (hold connections open until stdin closes), and the rpcd client's own
figures: `raw-serial` (a minimal raw-socket client, one call at a time), `client-serial`
(`rpcd.client.Client`, one caller) and `client-greenlets` (N greenlets sharing one Client).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and '"client-greenlets"' in sys.argv[1]:
    from gevent import monkey

    monkey.patch_all()  # before anything imports socket: greenlets share the client

import json  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

PAYLOAD = "0123456789abcdef"  # the 16-byte echo argument
_PREFIX = struct.Struct(">I")
# The call the raw-socket clients make: a 16-byte echo, or `ping` without arguments.
_TEMPLATES = {
    "echo": (
        b'{"jsonrpc":"2.0","method":"echo","params":["' + PAYLOAD.encode() + b'"],"id":%d}',
        PAYLOAD,
    ),
    "ping": (b'{"jsonrpc":"2.0","method":"ping","id":%d}', "pong"),
}
_TEMPLATE, _EXPECTED = _TEMPLATES["echo"]


def _frame(body: bytes) -> bytes:
    return _PREFIX.pack(len(body)) + body


def _echo_frame(call_id: int) -> bytes:
    return _frame(_TEMPLATE % call_id)


def _connect(port: int, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _split(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete frame bodies at the front of `buffer`, and what is left over."""
    bodies = []
    pos = 0
    end = len(buffer)
    while end - pos >= 4:
        size = _PREFIX.unpack_from(buffer, pos)[0]
        if end - pos - 4 < size:
            break
        bodies.append(buffer[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return bodies, buffer[pos:]


def _check_echo(sock: socket.socket) -> None:
    """One call before the clock starts: the server answers echo correctly."""
    sock.sendall(_echo_frame(0))
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        bodies, buffer = _split(buffer + chunk)
        if bodies:
            reply = json.loads(bodies[0])
            if reply.get("result") != _EXPECTED:
                raise RuntimeError(f"unexpected reply: {reply}")
            return


def _ready() -> None:
    """Tell the harness this client is connected, and wait for its go (so all start at once)."""
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()


def raw_rate(port: int, duration: float, inflight: int) -> int:
    """Calls completed in `duration` seconds with `inflight` calls kept outstanding."""
    sock = _connect(port)
    _check_echo(sock)
    _ready()
    end = time.monotonic() + duration
    next_id = inflight + 1
    sock.sendall(b"".join(_echo_frame(i) for i in range(1, next_id)))
    buffer = b""
    done = 0
    recv, sendall, split, frame, now = sock.recv, sock.sendall, _split, _echo_frame, time.monotonic
    while now() < end:
        chunk = recv(262144)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        bodies, buffer = split(buffer + chunk)
        n = len(bodies)
        if n:
            done += n
            sendall(b"".join([frame(i) for i in range(next_id, next_id + n)]))
            next_id += n
    sock.close()
    return done


def peer_caller(kind: str, port: int) -> Any:
    """A function that makes one blocking echo call through the peer's own client library."""
    if kind == "rpyc":
        import rpyc

        conn = rpyc.connect("127.0.0.1", port)
        return lambda: conn.root.echo(PAYLOAD)
    if kind == "zerorpc":
        import zerorpc

        client = zerorpc.Client(timeout=30)
        client.connect(f"tcp://127.0.0.1:{port}")
        return lambda: client.echo(PAYLOAD)
    if kind == "grpc":
        import grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = channel.unary_unary("/bench.Bench/Echo")
        payload = PAYLOAD.encode()
        return lambda: stub(payload)
    if kind == "xmlrpc":
        import xmlrpc.client

        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/")
        return lambda: proxy.echo(PAYLOAD)
    raise ValueError(kind)


def peer_rate(kind: str, port: int, duration: float) -> int:
    call = peer_caller(kind, port)
    result = call()
    if result not in (PAYLOAD, PAYLOAD.encode()):
        raise RuntimeError(f"unexpected reply: {result!r}")
    _ready()
    end = time.monotonic() + duration
    done = 0
    now = time.monotonic
    while now() < end:
        call()
        done += 1
    return done


def raw_latency(port: int, rate: float, duration: float) -> list[float]:
    """Send echo calls on a fixed schedule; each latency counts from the scheduled send time,
    so a server that falls behind is charged for it (no coordinated omission)."""
    sock = _connect(port)
    _check_echo(sock)
    sock.setblocking(False)
    interval = 1.0 / rate
    _ready()
    clock = time.perf_counter
    start = clock()
    end = start + duration
    next_send = start
    next_id = 1
    sent: dict[int, float] = {}
    latencies: list[float] = []
    buffer = b""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    while True:
        now = clock()
        if now >= end and not sent or now >= end + 10:
            break
        frames = []
        while next_send <= now and next_send < end:
            frames.append(_echo_frame(next_id))
            sent[next_id] = next_send
            next_id += 1
            next_send += interval
        if frames:
            sock.setblocking(True)
            sock.sendall(b"".join(frames))
            sock.setblocking(False)
        wait = max(0.0, min(next_send, end + 10) - clock()) if next_send < end else 0.05
        if selector.select(wait):
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            bodies, buffer = _split(buffer + chunk)
            arrived = clock()
            for body in bodies:
                latencies.append(arrived - sent.pop(json.loads(body)["id"]))
    sock.close()
    return latencies


def concurrent(port: int, calls: int, connections: int, seconds: float) -> float:
    """Send `calls` sleep(seconds) calls spread over `connections`; wall time to the last reply."""
    socks = [_connect(port) for _ in range(connections)]
    per = [calls // connections + (1 if i < calls % connections else 0) for i in range(connections)]
    body = b'{"jsonrpc":"2.0","method":"sleep","params":[%r],"id":%d}'
    selector = selectors.DefaultSelector()
    _ready()
    started = time.perf_counter()
    for sock, n in zip(socks, per, strict=True):
        sock.sendall(b"".join(_frame(body % (seconds, i)) for i in range(n)))
    waiting = {sock.fileno(): [sock, n, b""] for sock, n in zip(socks, per, strict=True)}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + 120
    while waiting:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(w[1] for w in waiting.values())} replies missing")
        for key, _ in selector.select(1.0):
            entry = waiting[key.fd]
            chunk = entry[0].recv(262144)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            bodies, entry[2] = _split(entry[2] + chunk)
            for reply in bodies:
                if b'"result"' not in reply:
                    raise RuntimeError(f"a sleep call failed: {reply[:200]!r}")
            entry[1] -= len(bodies)
            if entry[1] == 0:
                selector.unregister(entry[0])
                del waiting[key.fd]
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    return elapsed


def idle(port: int, connections: int) -> int:
    """Open `connections` and hold them until stdin closes."""
    socks = []
    for _ in range(connections):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
    _ready()
    sys.stdin.read()
    for sock in socks:
        sock.close()
    return len(socks)


def raw_serial(port: int, duration: float) -> int:
    """A minimal raw-socket client: one blocking call at a time, orjson as rpcd's client uses."""
    import orjson

    sock = _connect(port)
    _check_echo(sock)
    _ready()
    sendall, recv, loads, unpack = sock.sendall, sock.recv, orjson.loads, _PREFIX.unpack
    done = 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        sendall(_echo_frame(done + 1))
        buffer = recv(65536)
        while len(buffer) < 4 or len(buffer) < 4 + unpack(buffer[:4])[0]:
            buffer += recv(65536)
        if loads(buffer[4:])["result"] != _EXPECTED:
            raise RuntimeError("unexpected reply")
        done += 1
    sock.close()
    return done


def client_rate(port: int, duration: float, callers: int) -> int:
    """rpcd.client.Client: `callers` greenlets (1: the calling thread itself) share one client."""
    from rpcd.client import Client

    method, args = ("echo", (PAYLOAD,)) if _EXPECTED == PAYLOAD else ("ping", ())
    client = Client(f"tcp:127.0.0.1:{port}")
    if client.call(method, *args) != _EXPECTED:
        raise RuntimeError("unexpected reply")
    _ready()
    end = time.monotonic() + duration
    counts = [0] * callers

    def caller(slot: int) -> None:
        n = 0
        call, now = client.call, time.monotonic
        while now() < end:
            call(method, *args)
            n += 1
        counts[slot] = n

    if callers == 1:
        caller(0)
    else:
        import gevent

        gevent.joinall([gevent.spawn(caller, i) for i in range(callers)], raise_error=True)
    client.close()
    return sum(counts)


def main(spec: dict) -> Any:
    global _TEMPLATE, _EXPECTED
    _TEMPLATE, _EXPECTED = _TEMPLATES[spec.get("method", "echo")]
    mode = spec["mode"]
    if mode == "rate":
        if spec["kind"] in ("rpcd", "twisted", "gevent", "uvloop"):
            return raw_rate(spec["port"], spec["duration"], spec["inflight"])
        return peer_rate(spec["kind"], spec["port"], spec["duration"])
    if mode == "latency":
        return raw_latency(spec["port"], spec["rate"], spec["duration"])
    if mode == "concurrent":
        return concurrent(spec["port"], spec["calls"], spec["connections"], spec["seconds"])
    if mode == "idle":
        return idle(spec["port"], spec["connections"])
    if mode == "raw-serial":
        return raw_serial(spec["port"], spec["duration"])
    if mode == "client-serial":
        return client_rate(spec["port"], spec["duration"], 1)
    if mode == "client-greenlets":
        return client_rate(spec["port"], spec["duration"], spec["greenlets"])
    raise ValueError(mode)


if __name__ == "__main__":
    print(json.dumps({"result": main(json.loads(sys.argv[1]))}), flush=True)
