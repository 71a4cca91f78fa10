"""twistd plugins: the `rpcd` service and the `gevent` reactor. Pointers only; see rpcd.tap."""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

rpcd = ServiceMaker("rpcd", "rpcd.tap", "JSON-RPC service daemon running calls in gevent", "rpcd")
gevent = Reactor("gevent", "rpcd.reactor", "Twisted's reactor running in gevent's hub loop")
