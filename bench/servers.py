"""The servers rpcd is compared with, one per process: the stock-Twisted ceiling and the peers.

    python bench/servers.py KIND PORT

KIND is `twisted` (the ceiling every ratio is to: Twisted's default reactor,
Int32StringReceiver, orjson on plain dicts, the method called inline in the reactor),
`gevent` (a pure gevent StreamServer, a greenlet per connection, orjson, inline), `uvloop`
(an asyncio Protocol on uvloop answering inline, orjson), `mprpc` (msgpack-rpc on gevent,
bench/install_mprpc.sh installs it), `rpyc`, `zerorpc`, `grpc` (a generic handler, no code
generation) or `xmlrpc` (the standard library's server with ThreadingMixIn). The JSON-RPC
servers speak rpcd's framing (4-byte big-endian length, then the body) and serve `echo`,
`ping` and a non-blocking `sleep`; each listens on 127.0.0.1:PORT until terminated.
"""

from __future__ import annotations

import struct
import sys

_PREFIX = struct.Struct(">I")


def _inline_methods():
    def ping(value="pong"):
        return value

    def echo(value):
        return value

    return {"ping": ping, "echo": echo}


def _answer(body: bytes, methods: dict, loads, dumps) -> bytes | None:
    """The framed reply to one JSON-RPC request, the method called inline; None: no reply."""
    request = loads(body)
    try:
        result = methods[request["method"]](*request.get("params", ()))
        reply = {"jsonrpc": "2.0", "result": result, "id": request.get("id")}
    except Exception as exc:  # a bad request or a failing method: an error reply, as a server
        error = {"code": -32603, "message": f"{type(exc).__name__}: {exc}"}
        reply = {"jsonrpc": "2.0", "error": error, "id": request.get("id")}
    if "id" not in request:
        return None
    out = dumps(reply)
    return _PREFIX.pack(len(out)) + out


def _answer_all(buffer: bytes, methods: dict, loads, dumps) -> tuple[bytes, bytes]:
    """Answer every whole frame in `buffer`: the replies as one write, and what is left."""
    unpack = _PREFIX.unpack_from
    replies, pos, end = [], 0, len(buffer)
    while end - pos >= 4:
        size = unpack(buffer, pos)[0]
        if end - pos - 4 < size:
            break
        reply = _answer(buffer[pos + 4 : pos + 4 + size], methods, loads, dumps)
        if reply is not None:
            replies.append(reply)
        pos += 4 + size
    return b"".join(replies), buffer[pos:]


def twisted_ceiling(port: int) -> None:
    import orjson
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.internet.task import deferLater
    from twisted.protocols.basic import Int32StringReceiver

    loads, dumps = orjson.loads, orjson.dumps
    methods = _inline_methods()

    class Ceiling(Int32StringReceiver):
        MAX_LENGTH = 4 * 1024 * 1024

        def stringReceived(self, body: bytes) -> None:
            request = loads(body)
            if request.get("method") == "sleep":
                # A Twisted server cannot block: the non-blocking equivalent of time.sleep.
                (seconds,) = request["params"]
                later = deferLater(reactor, seconds, lambda: seconds)
                later.addCallback(self._reply, request.get("id"))
                return
            try:
                result = methods[request["method"]](*request.get("params", ()))
            except Exception as exc:
                error = {"code": -32603, "message": f"{type(exc).__name__}: {exc}"}
                reply = {"jsonrpc": "2.0", "error": error, "id": request.get("id")}
                self.sendString(dumps(reply))
                return
            if "id" in request:
                self._reply(result, request["id"])

        def _reply(self, result, call_id) -> None:
            self.sendString(dumps({"jsonrpc": "2.0", "result": result, "id": call_id}))

    factory = Factory.forProtocol(Ceiling)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()


def gevent_server(port: int) -> None:
    import orjson
    from gevent.server import StreamServer

    loads, dumps = orjson.loads, orjson.dumps
    methods = _inline_methods()

    def serve(sock, _address) -> None:
        buffer = b""
        recv, sendall = sock.recv, sock.sendall
        while True:
            chunk = recv(262144)
            if not chunk:
                return
            replies, buffer = _answer_all(
                buffer + chunk if buffer else chunk, methods, loads, dumps
            )
            if replies:
                sendall(replies)

    StreamServer(("127.0.0.1", port), serve, backlog=1024).serve_forever()


def uvloop_server(port: int) -> None:
    import asyncio

    import orjson
    import uvloop

    loads, dumps = orjson.loads, orjson.dumps
    methods = _inline_methods()

    class Inline(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            buffer = self.buffer + data if self.buffer else data
            replies, self.buffer = _answer_all(buffer, methods, loads, dumps)
            if replies:
                self.transport.write(replies)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Inline, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(main())


def mprpc_server(port: int) -> None:
    from gevent.server import StreamServer
    from mprpc import RPCServer

    class Bench(RPCServer):
        def echo(self, value):
            return value

        def ping(self, value="pong"):
            return value

    StreamServer(("127.0.0.1", port), Bench(tcp_no_delay=True), backlog=1024).serve_forever()


def rpyc_server(port: int) -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class Bench(rpyc.Service):
        def exposed_echo(self, value):
            return value

    ThreadedServer(
        Bench, hostname="127.0.0.1", port=port, protocol_config={"allow_public_attrs": False}
    ).start()


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
    "twisted": twisted_ceiling,
    "gevent": gevent_server,
    "uvloop": uvloop_server,
    "mprpc": mprpc_server,
    "rpyc": rpyc_server,
    "zerorpc": zerorpc_server,
    "grpc": grpc_server,
    "xmlrpc": xmlrpc_server,
}

if __name__ == "__main__":
    SERVERS[sys.argv[1]](int(sys.argv[2]))
