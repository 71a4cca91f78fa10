"""The Twisted client against the real daemon, as trial-style tests (pytest runs them too)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from rpcd.client import (
    CallTimeout,
    ConnectFailed,
    ConnectionLost,
    InternalError,
    InvalidParams,
    MethodNotFound,
)
from rpcd.twisted_client import RPCConnection, connect
from tests.integration.conftest import Daemon, free_port


class TwistedClientTests(unittest.TestCase):
    timeout = 30

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = Path(tempfile.mkdtemp(prefix="rpcd-twisted-"))
        port = free_port()
        args = [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--methods",
            "tests.integration.methods",
            "--call-timeout",
            "1",
        ]
        cls.daemon = Daemon(cls.workdir, args, port)
        cls.daemon.wait_ready()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.daemon.terminate()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @defer.inlineCallbacks
    def setUp(self):
        self.conn = yield connect(reactor, f"tcp:127.0.0.1:{self.daemon.port}")
        self.assertIsInstance(self.conn, RPCConnection)
        self.addCleanup(self.conn.close)

    @defer.inlineCallbacks
    def test_calls(self):
        self.assertEqual((yield self.conn.callRemote("add", 2, 3)), 5)
        self.assertEqual((yield self.conn.callRemote("add", a="x", b="y")), "xy")
        self.assertEqual((yield self.conn.callRemote("deferred_value", [1])), [1])
        # Several calls in flight at once on the one connection, answered by id.
        results = yield defer.gatherResults(
            [self.conn.callRemote("sleep", 0.2) for _ in range(20)]
            + [self.conn.callRemote("add", i, i) for i in range(20)]
        )
        self.assertEqual(results, [0.2] * 20 + [2 * i for i in range(20)])

    @defer.inlineCallbacks
    def test_errors_are_the_client_exception_classes(self):
        yield self.assertFailure(self.conn.callRemote("nosuch"), MethodNotFound)
        error = yield self.assertFailure(self.conn.callRemote("add", 1), InvalidParams)
        self.assertEqual(error.code, -32602)
        error = yield self.assertFailure(self.conn.callRemote("boom"), InternalError)
        self.assertEqual(error.data, {"type": "KeyError"})
        yield self.assertFailure(self.conn.callRemote("sleep", 5), CallTimeout)

    @defer.inlineCallbacks
    def test_stream_and_notify(self):
        items = []
        result = yield self.conn.streamRemote(items.append, "ticker", 4)
        self.assertEqual((items, result), ([0, 1, 2, 3], 4))
        before = (yield self.conn.callRemote("rpc.stats"))["methods"].get("echo", {"count": 0})
        self.conn.notifyRemote("echo", "note")
        yield self._until(lambda stats: stats["methods"]["echo"]["count"] == before["count"] + 1)

    @defer.inlineCallbacks
    def test_cancelling_the_deferred_cancels_the_call(self):
        items = []
        d = self.conn.streamRemote(items.append, "ticker", 100_000, 0.01)
        yield self._until(lambda stats: items)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        # The server stopped it: the ticker is answered -32006 and nothing is left running.
        stats = yield self._until(lambda stats: stats["calls"]["in_flight"] == 1)
        self.assertGreaterEqual(stats["methods"]["ticker"]["errors"], 1)

    @defer.inlineCallbacks
    def test_connection_lost_fails_pending_calls(self):
        d = self.conn.callRemote("sleep", 0.5)
        self.conn.transport.abortConnection()
        yield self.assertFailure(d, ConnectionLost)
        yield self.assertFailure(self.conn.callRemote("ping"), ConnectionLost)

    @defer.inlineCallbacks
    def test_connect_failure(self):
        failure = yield self.assertFailure(
            connect(reactor, f"tcp:127.0.0.1:{free_port()}"), ConnectFailed
        )
        self.assertIn("connection refused", str(failure))

    @defer.inlineCallbacks
    def _until(self, predicate, timeout=5.0):
        """Poll rpc.stats until `predicate(stats)` holds; return those stats."""
        for _ in range(int(timeout / 0.02)):
            stats = yield self.conn.callRemote("rpc.stats")
            if predicate(stats):
                return stats
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail("condition not reached in time")
