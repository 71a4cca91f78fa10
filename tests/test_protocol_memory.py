"""What an idle connection holds: RPCProtocol and RPCFactory over StringTransport and Clock.

Each test pins one thing a connection that has sent nothing no longer keeps (bench/run.py's
scenario d measures the sum).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ILoggingContext, IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd.protocol import ConnectionLimits, RPCFactory
from tests.conftest import RecordingDispatcher


class TickingClock(Clock):
    """A clock that moves on a microsecond at every reading, as a real one does between two
    readings, and counts the timers made."""

    def __init__(self) -> None:
        super().__init__()
        self.made = 0

    def seconds(self) -> float:
        self.rightNow += 1e-6
        return self.rightNow

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        self.made += 1
        return super().callLater(delay, callable, *args, **kw)


def make_factory(clock: Clock, **limits: Any) -> RPCFactory:
    return RPCFactory(RecordingDispatcher(), ConnectionLimits(**limits), clock)


def connect(factory: RPCFactory, port: int = 40000) -> tuple[Any, StringTransport]:
    peer = IPv4Address("TCP", "10.0.0.1", port)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def test_new_connections_share_the_idle_timer_of_the_first():
    clock = TickingClock()
    factory = make_factory(clock, idle_timeout=300)
    for i in range(50):
        connect(factory, 40000 + i)
    # The first connection is due first: every later one is due after the timer fires.
    assert clock.made == 1
    assert len(clock.getDelayedCalls()) == 1


def test_a_connection_has_no_instance_dict():
    # Twisted's Protocol base would give it one beside its slots.
    protocol, _ = connect(make_factory(Clock()))
    assert not hasattr(protocol, "__dict__")
    assert IProtocol.providedBy(protocol) and ILoggingContext.providedBy(protocol)
    assert protocol.logPrefix() == "RPCProtocol"
