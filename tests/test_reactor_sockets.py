"""rpcd/reactor.py: the reactor's own sockets are the unpatched kind; methods keep gevent's.

Run in a subprocess patched as the daemon is, so this test process stays unpatched.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import os, sys, tempfile
from rpcd import reactor as rr
r = rr.install()
import gevent, gevent.socket, socket
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ServerEndpoint

assert socket.socket is gevent.socket.socket, "the process is not patched"
seen = {}

class Echo(protocol.Protocol):
    def connectionMade(self):
        seen.setdefault(self.factory.name, type(self.transport.socket))
    def dataReceived(self, data):
        self.transport.write(data)

def factory(name):
    f = protocol.Factory.forProtocol(Echo)
    f.name = name
    return f

tcp = r.listenTCP(0, factory("accepted tcp"), interface="127.0.0.1")
seen["listening tcp"] = type(tcp.socket)
path = os.path.join(tempfile.mkdtemp(), "s")
unix = r.listenUNIX(path, factory("accepted unix"))
seen["listening unix"] = type(unix.socket)
# An adopted listener (the systemd: path): a descriptor handed over by someone else.
handed = rr.ReactorSocket(socket.AF_INET, socket.SOCK_STREAM)
handed.bind(("127.0.0.1", 0)); handed.listen(5); handed.setblocking(False)
adopted = r.adoptStreamPort(handed.fileno(), socket.AF_INET, factory("accepted adopted"))
handed.close()
seen["adopted"] = type(adopted.socket)

class Client(protocol.Protocol):
    def connectionMade(self):
        seen["connected tcp"] = type(self.transport.socket)

r.connectTCP("127.0.0.1", tcp.getHost().port, protocol.ClientFactory.forProtocol(Client))

def method_like():
    # What a method does: the patched socket module, cooperative, served by the reactor.
    replies = []
    for port in (tcp.getHost().port, adopted.getHost().port):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert isinstance(s, gevent.socket.socket), type(s)
        s.sendall(b"ping"); replies.append(s.recv(4)); s.close()
    u = socket.socket(socket.AF_UNIX); u.settimeout(10); u.connect(path)
    u.sendall(b"ping"); replies.append(u.recv(4)); u.close()
    seen["method replies"] = replies
    r.callLater(0.05, r.stop)

r.callWhenRunning(gevent.spawn, method_like)
r.callLater(20, r.stop)
r.run(installSignalHandlers=False)
assert seen.pop("method replies") == [b"ping"] * 3, seen
names = ["listening tcp", "accepted tcp", "listening unix", "accepted unix", "adopted",
         "accepted adopted", "connected tcp"]
assert sorted(seen) == sorted(names), seen
wrong = {k: v for k, v in seen.items() if v is not rr.ReactorSocket}
assert not wrong, wrong
print("ok")
"""


def test_reactor_sockets_are_unpatched_and_methods_sockets_are_gevents():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
