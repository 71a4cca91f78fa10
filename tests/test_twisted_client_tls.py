"""The Twisted client verifies TLS certificates and host names by default (issue 10, point 20),
against a TLS listener on 127.0.0.1 with a self-signed certificate for "localhost"."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import twisted.test
from twisted.internet import defer, reactor, ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from rpcd import wire
from rpcd.client import ConnectFailed
from rpcd.twisted_client import connect

PEM = Path(twisted.test.__file__).with_name("server.pem")


class Pong(Protocol):
    """Answers every request "pong": enough of rpcd to see a call through."""

    def connectionMade(self) -> None:
        self.decoder = wire.FrameDecoder(4096)

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive(data)
        while (body := self.decoder.next_frame()) is not None:
            request = wire.decode(body)
            self.transport.write(wire.encode_frame(wire.encode(wire.Response(request, "pong"))))


class TwistedClientTLSTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        context = ssl.DefaultOpenSSLContextFactory(str(PEM), str(PEM))
        self.port = reactor.listenSSL(0, Factory.forProtocol(Pong), context, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.address = f"ssl:127.0.0.1:{self.port.getHost().port}"
        self.ca = Path(tempfile.mkdtemp(prefix="rpcd-ca-"))
        self.addCleanup(shutil.rmtree, self.ca, True)

    @defer.inlineCallbacks
    def _ping(self, endpoint: str, **kwargs):
        conn = yield connect(reactor, endpoint, **kwargs)
        try:
            return (yield conn.callRemote("ping"))
        finally:
            yield conn.close()

    @defer.inlineCallbacks
    def test_an_unknown_certificate_is_refused_by_default(self):
        with self.assertRaises(ConnectFailed) as caught:
            yield self._ping(self.address)
        self.assertIn("certificate", str(caught.exception))
        self.assertIn("caCertsDir=", caught.exception.hint)

    @defer.inlineCallbacks
    def test_the_given_ca_and_host_name_are_trusted(self):
        (self.ca / "server.pem").write_bytes(PEM.read_bytes())
        pong = yield self._ping(f"{self.address}:caCertsDir={self.ca}:hostname=localhost")
        self.assertEqual(pong, "pong")

    @defer.inlineCallbacks
    def test_a_crt_file_counts_as_a_ca_as_in_the_blocking_client(self):
        (self.ca / "server.crt").write_bytes(PEM.read_bytes())
        pong = yield self._ping(f"{self.address}:caCertsDir={self.ca}:hostname=localhost")
        self.assertEqual(pong, "pong")

    @defer.inlineCallbacks
    def test_a_host_name_the_certificate_does_not_carry_is_refused(self):
        (self.ca / "server.pem").write_bytes(PEM.read_bytes())
        with self.assertRaises(ConnectFailed) as caught:
            yield self._ping(f"{self.address}:caCertsDir={self.ca}")  # it names localhost
        self.assertIn("127.0.0.1", str(caught.exception))

    @defer.inlineCallbacks
    def test_insecure_only_on_an_explicit_opt_in_that_says_so(self):
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual((yield self._ping(self.address, insecure_tls=True)), "pong")
        warnings = [e for e in events if "NOT verified" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
