"""Steady load for the scale-out tests: clients calling on kept connections, outcomes counted."""

from __future__ import annotations

import threading
import time

from tests.conftest import wait_for
from tests.rawclient import RawClient

SHUTTING_DOWN = -32005


def wait_value(predicate, timeout: float, what: str):
    """Poll `predicate()` until it gives a true value, and return that value; fail at the
    deadline saying `what` was awaited."""
    seen: list = []
    wait_for(lambda: seen.append(predicate()) or seen[-1], timeout, 0.05, f"waiting for {what}")
    return seen[-1]


class Load:
    """`clients` threads calling `echo` steadily, each on one connection kept until it ends.

    A call answered -32005 (refused, not run) or whose connection closed before its reply
    is sent again on a new connection, as a client does; `lost` counts the second kind
    separately (a server killed mid-call). `failed`: a wrong reply or no answer in time.
    `refused`: a connection the server side refused. Bounded: 120 s at most.
    """

    def __init__(self, port: int, clients: int = 4, method: str = "echo", pause: float = 0.001):
        self.port = port
        self.method = method
        self.pause = pause
        self.ok = self.shutting_down = self.lost = self.failed = self.refused = 0
        self.errors: list = []
        self.peers: dict[int, int] = {}  # pid -> calls answered
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def retried(self) -> int:
        return self.shutting_down + self.lost

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {self.shutting_down} answered -32005 and sent again, {self.lost} "
            f"lost with their connection and sent again, {self.failed} failed, "
            f"{self.refused} connections refused"
        )

    def _count(self, name: str, error=None) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)
            if error is not None:
                self.errors.append(error)

    def _connect(self):
        client = RawClient(self.port, timeout=10)
        pid = client.call("rpc.stats")["result"]["process"]["pid"]
        return client, pid

    def _run(self) -> None:
        client = pid = None
        deadline = time.monotonic() + 120
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if client is None:
                try:
                    client, pid = self._connect()
                except ConnectionRefusedError as exc:
                    self._count("refused", repr(exc))
                    time.sleep(0.01)
                    continue
                except (OSError, KeyError, ValueError):
                    client = None  # closed while connecting: a server going away
                    time.sleep(0.01)
                    continue
            n += 1
            try:
                rid = client.request(self.method, n)
                reply = client.recv()
            except ConnectionError:
                client = None
                self._count("lost")
                continue
            except OSError as exc:  # a timeout: no answer
                client = None
                self._count("failed", repr(exc))
                continue
            if reply.get("error", {}).get("code") == SHUTTING_DOWN:
                client.close()
                client = None
                self._count("shutting_down")
            elif reply.get("id") == rid and reply.get("result") == n:
                with self.lock:
                    self.ok += 1
                    self.peers[pid] = self.peers.get(pid, 0) + 1
            else:
                self._count("failed", reply)
            if self.pause:
                time.sleep(self.pause)
