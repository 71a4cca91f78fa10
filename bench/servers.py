"""The servers rpcd is compared with: the stock-Twisted baseline and the peers, one per process.

    python bench/servers.py KIND PORT

KIND is `twisted` (the baseline: Twisted's default reactor, Int32StringReceiver, rpcd's own
codec for the same JSON-RPC envelope, the method called inline in the reactor), `rpyc`,
`zerorpc`, `grpc` (a generic handler, no code generation) or `xmlrpc` (the standard
library's server with ThreadingMixIn). Each serves `echo` and, where the scenario needs it,
`sleep`; it listens on 127.0.0.1:PORT until it is terminated.
"""

from __future__ import annotations

import sys


def twisted_baseline(port: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory
    from twisted.internet.task import deferLater
    from twisted.protocols.basic import Int32StringReceiver

    from rpcd import wire

    def ping(value="pong"):
        return value

    def echo(value):
        return value

    def sleep(seconds):
        # A Twisted server cannot block; the non-blocking equivalent of time.sleep.
        return deferLater(reactor, seconds, lambda: seconds)

    methods = {"ping": ping, "echo": echo, "sleep": sleep}

    class Baseline(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024

        def stringReceived(self, body: bytes) -> None:
            try:
                request = wire.decode(body)
                func = methods.get(request.method)
                if func is None:
                    message = f"method not found: {request.method}"
                    raise wire.RPCError(wire.METHOD_NOT_FOUND, message)
                result = func(*request.params)
            except wire.RPCError as error:
                self.sendString(wire.encode_error(error))
                return
            if isinstance(result, Deferred):
                result.addCallback(self._reply, request)
            else:
                self._reply(result, request)

        def _reply(self, result, request) -> None:
            if not request.notification:
                self.sendString(wire.encode(wire.Response(request, result)))

    factory = Factory.forProtocol(Baseline)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()


def rpyc_server(port: int) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class Bench(rpyc.Service):
        def exposed_echo(self, value):
            return value

    ThreadedServer(Bench, hostname="127.0.0.1", port=port,
                   protocol_config={"allow_public_attrs": False}).start()


def zerorpc_server(port: int) -> None:
    import zerorpc

    class Bench:
        def echo(self, value):
            return value

    server = zerorpc.Server(Bench())
    server.bind(f"tcp://127.0.0.1:{port}")
    server.run()


def grpc_server(port: int) -> None:
    from concurrent import futures

    import grpc

    def echo(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def xmlrpc_server(port: int) -> None:
    from socketserver import ThreadingMixIn
    from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

    class Handler(SimpleXMLRPCRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per client, as the others

    class Server(ThreadingMixIn, SimpleXMLRPCServer):
        daemon_threads = True

    server = Server(("127.0.0.1", port), requestHandler=Handler, logRequests=False)
    server.register_function(lambda value: value, "echo")
    server.serve_forever()


SERVERS = {
    "twisted": twisted_baseline,
    "rpyc": rpyc_server,
    "zerorpc": zerorpc_server,
    "grpc": grpc_server,
    "xmlrpc": xmlrpc_server,
}

if __name__ == "__main__":
    SERVERS[sys.argv[1]](int(sys.argv[2]))
