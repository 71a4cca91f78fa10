"""rpcd.logs.access: access lines in text and JSON, noted per call and echoed per flush."""

from __future__ import annotations

import orjson

from rpcd.logs import AccessLog, LogFile
from rpcd.wire import Request, Response, RPCError


class _Sink:
    peer = "10.0.0.1:4242"


class _Call:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.sink = _Sink()


def test_access_lines_text_and_json(tmp_path):
    from twisted.logger import globalLogPublisher

    echoed: list[dict] = []
    globalLogPublisher.addObserver(echoed.append)
    text = LogFile(str(tmp_path / "text.log"))
    js = LogFile(str(tmp_path / "json.log"), fmt="json")
    try:
        text.start()  # observes the echo event too: it must not write the lines twice
        for out in (text, js):
            log = AccessLog(out)
            ok = Request("math.add", (1, 2), 7)
            log.access(_Call(ok), Response(ok, 3), 0.0012345)
            odd = Request("evil\n2026 info [x] forged", (), "a b")
            log.access(_Call(odd), Response(odd, error=RPCError(-32603, "x")), 0.5)
            legacy = Request("ping", (), None, legacy=True)
            log.refused(legacy, _Sink(), RPCError(-32000, "busy"))
            out.flush()
    finally:
        text.close()
        js.close()
        globalLogPublisher.removeObserver(echoed.append)
    lines = [line.split(" ", 1)[1] for line in (tmp_path / "text.log").read_text().splitlines()]
    assert lines == [
        "info [rpcd.access] 10.0.0.1:4242 math.add id=7 1.234 ms ok",
        'info [rpcd.access] 10.0.0.1:4242 "evil\\n2026 info [x] forged" id="a b" 500.000 ms -32603',
        "info [rpcd.access] 10.0.0.1:4242 ping id=- 0.000 ms -32000",
    ]
    objs = [orjson.loads(line) for line in (tmp_path / "json.log").read_bytes().splitlines()]
    assert [(o["method"], o["id"], o["ms"], o["outcome"]) for o in objs] == [
        ("math.add", 7, 1.234, "ok"),
        ("evil\n2026 info [x] forged", "a b", 500.0, "-32603"),
        ("ping", None, 0.0, "-32000"),
    ]
    batches = [e for e in echoed if e.get("log_namespace") == "rpcd.access"]
    assert len(batches) == 2 and batches[0]["calls"].count("\n") == 2  # one event per flush
