"""rpcd.session.Session as h11 tests itself: bodies and responses in, bodies and decisions out.

No transport, no clock, no gevent: a recording dispatcher takes the calls and the test decides
when each is answered.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcd import auth, wire
from rpcd.session import (
    AUTHENTICATED,
    CARRY_ON,
    CLOSE,
    DRAINED,
    PAUSE,
    RESUME,
    Session,
)
from rpcd.wire import CANCELLED, FrameTooLarge, Response, RPCError
from tests.conftest import RecordingDispatcher


class Handshake:
    """A stand-in for rpcd.auth.ServerHandshake: accepts the digest "right" only."""

    challenge_params = {"mechanism": "hmac-sha256", "nonce": "n" * 64}

    def verify(self, params: Any) -> dict:
        if params not in ({"digest": "right"}, ({"digest": "right"},)):
            raise auth.AuthFailed("wrong digest")
        return {"authenticated": True}


class Peer:
    """A session, the dispatcher it submits to, and what it sent and decided."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[bytes] = []
        self.dispatcher = RecordingDispatcher()
        self.decided: list[int | None] = []  # what each finished() answered
        self.session = Session(self.dispatcher, self, self.sent.append, **options)

    def deliver(self, call: Any, response: Response) -> None:  # the dispatcher's sink
        self.decided.append(self.session.finished(call, response))

    def receive(self, obj: Any) -> int | None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return self.session.receive(body)

    def out(self) -> list[Any]:
        bodies, self.sent[:] = list(self.sent), []
        return [json.loads(body) for body in bodies]

    def call(self, i: int = 0):
        return self.dispatcher.submitted[i]


def call(method: str, *params: Any, id: Any = 1) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


# -- direct, legacy and batch routes ----------------------------------------------------------


def test_jsonrpc_replies_go_out_as_calls_finish():
    peer = Peer()
    assert peer.receive(call("a", id=1)) is None and peer.receive(call("b", id=2)) is None
    assert [c.request.id for c in peer.dispatcher.submitted] == [1, 2] and peer.out() == []
    peer.dispatcher.finish(peer.call(1), "b")
    assert peer.out() == [{"jsonrpc": "2.0", "result": "b", "id": 2}]
    peer.dispatcher.finish(peer.call(0), "a")
    assert peer.out() == [{"jsonrpc": "2.0", "result": "a", "id": 1}]
    assert peer.decided == [None, None] and not peer.session.calls


def test_notification_is_dispatched_and_its_answer_dropped():
    peer = Peer()
    peer.receive({"jsonrpc": "2.0", "method": "note"})
    peer.dispatcher.finish(peer.call(), "ignored")
    assert peer.out() == [] and not peer.session.owes_replies


def test_legacy_replies_go_out_in_request_order_errors_in_their_place():
    peer = Peer()
    peer.receive({"in": "first", "params": 1})
    peer.receive({"in": "second"})
    peer.receive({"in": 5})  # decodes to a legacy-shaped -32600, answered at once but in order
    peer.receive({"in": "third"})
    first, second, third = peer.dispatcher.submitted
    peer.dispatcher.finish(third, 3)
    peer.dispatcher.finish(second, 2)
    assert peer.out() == []  # held back by the first
    peer.dispatcher.finish(first, 1)
    assert peer.out() == [
        {"out": "first", "result": 1},
        {"out": "second", "result": 2},
        {
            "out": "error",
            "result": {"code": -32600, "message": 'invalid request: "in" must be a string'},
        },
        {"out": "third", "result": 3},
    ]


def test_legacy_ping_answers_pong_and_errors_say_error():
    peer = Peer()
    peer.receive({"in": "ping"})
    peer.receive({"in": "boom"})
    ping, boom = peer.dispatcher.submitted
    peer.dispatcher.finish(ping, "pong")
    boom.sink.deliver(boom, Response(boom.request, error=RPCError(-32603, "internal error")))
    assert peer.out() == [
        {"out": "pong", "result": "pong"},
        {"out": "error", "result": {"code": -32603, "message": "internal error"}},
    ]


def test_batch_is_one_array_with_bad_entries_under_their_ids_and_no_notifications():
    peer = Peer()
    peer.receive(
        [
            call("a", id=1),
            {"jsonrpc": "2.0", "method": "note"},
            {"jsonrpc": "2.0", "method": 5, "id": 4},
            7,
            call("b", id=2),
        ]
    )
    a, note, b = peer.dispatcher.submitted
    peer.dispatcher.finish(b, "B")
    peer.dispatcher.finish(note)
    assert peer.out() == []
    peer.dispatcher.finish(a, "A")
    [array] = peer.out()
    assert sorted(array, key=lambda r: str(r["id"])) == [
        {"jsonrpc": "2.0", "result": "A", "id": 1},
        {"jsonrpc": "2.0", "result": "B", "id": 2},
        {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": 'invalid request: "method" must be a string'},
            "id": 4,
        },
        {
            "jsonrpc": "2.0",
            "error": {"code": -32600, "message": "invalid request: batch entry is not a request"},
            "id": None,
        },
    ]


def test_batch_of_notifications_sends_nothing():
    peer = Peer()
    peer.receive([{"jsonrpc": "2.0", "method": "note"}] * 3)
    for c in list(peer.dispatcher.submitted):
        peer.dispatcher.finish(c)
    assert len(peer.dispatcher.submitted) == 3 and peer.out() == []


def test_a_refused_submit_is_answered_and_not_counted():
    class Busy(RecordingDispatcher):
        def submit(self, request, sink):
            raise RPCError(-32000, "server busy")

    peer = Peer(max_inflight=1)
    peer.session._dispatcher = Busy()
    assert peer.receive(call("a", id=1)) is None  # not counted: no PAUSE
    assert peer.out() == [
        {"jsonrpc": "2.0", "error": {"code": -32000, "message": "server busy"}, "id": 1}
    ]
    assert not peer.session.calls


def test_undecodable_frame_is_answered_at_once_with_a_null_id():
    peer = Peer()
    peer.receive(call("slow", id=1))
    assert peer.receive(b"{not json") is None
    [error] = peer.out()
    assert error["id"] is None and error["error"]["code"] == -32700


# -- a chunk's frames in one call -------------------------------------------------------------


def chunk(*objs: Any) -> wire.FrameDecoder:
    """A decoder holding one frame per object, as one received chunk."""
    pack = wire.frame_prefix().pack
    data = b""
    for obj in objs:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        data += pack(len(body)) + body
    decoder = wire.FrameDecoder(1 << 20)
    decoder.receive(data)
    return decoder


def test_receive_frames_takes_every_usual_call_of_a_chunk_at_once():
    peer = Peer()
    peer.receive(call("first", id=0))  # the first call's hook and checks are behind it
    frames = chunk(*(call("a", i, id=i) for i in range(1, 4)))
    assert peer.session.receive_frames(frames) == DRAINED
    assert [c.request.id for c in peer.dispatcher.submitted] == [0, 1, 2, 3]
    assert peer.session.receive_frames(frames) is None  # nothing left: nothing taken
    partial = wire.FrameDecoder(1 << 20)
    partial.receive(b"\x00\x00\x00\x09{")
    assert peer.session.receive_frames(partial) is None and len(peer.dispatcher.submitted) == 4


def test_receive_frames_stops_at_the_cap_and_leaves_the_rest_in_the_decoder():
    peer = Peer(max_inflight=2)
    peer.receive(call("first", id=0))
    frames = chunk(call("a", id=1), call("b", id=2), call("c", id=3))
    assert peer.session.receive_frames(frames) == PAUSE
    assert [c.request.id for c in peer.dispatcher.submitted] == [0, 1]
    peer.dispatcher.finish(peer.call(0))
    assert peer.decided == [RESUME]
    assert peer.session.receive_frames(frames) == PAUSE  # b takes the freed slot
    assert [c.request.id for c in peer.dispatcher.submitted] == [0, 1, 2]
    assert frames.next_frame() == json.dumps(call("c", id=3)).encode()


def test_receive_frames_hands_back_after_a_frame_the_glue_must_see():
    peer = Peer()
    peer.receive(call("first", id=0))
    frames = chunk(b"{not json", {"in": "ping"}, call("a", id=1))
    assert peer.session.receive_frames(frames) == CARRY_ON  # a parse error, answered
    assert peer.out()[0]["error"]["code"] == -32700
    assert peer.session.receive_frames(frames) == CARRY_ON  # a legacy call, in its order
    assert peer.session.receive_frames(frames) == DRAINED
    assert [c.request.method for c in peer.dispatcher.submitted] == ["first", "ping", "a"]


def test_receive_frames_before_authentication_takes_one_frame_at_a_time():
    peer = Peer(handshake=Handshake())
    frames = chunk(call("rpc.auth", {"digest": "right"}), call("a", id=2))
    assert peer.session.receive_frames(frames) == AUTHENTICATED
    assert peer.session.receive_frames(frames) == DRAINED  # authenticated: the usual path
    assert [c.request.method for c in peer.dispatcher.submitted] == ["a"]


# -- the in-flight cap ------------------------------------------------------------------------


def test_reaching_the_cap_pauses_and_a_freed_slot_resumes():
    peer = Peer(max_inflight=2)
    assert peer.receive(call("a", id=1)) is None
    assert peer.receive(call("b", id=2)) == PAUSE
    peer.dispatcher.finish(peer.call(0))
    assert peer.decided == [RESUME]
    peer.dispatcher.finish(peer.call(1))
    assert peer.decided == [RESUME, None]  # it was not at the cap any more


def test_batch_entries_past_the_cap_are_held_until_slots_free():
    peer = Peer(max_inflight=3)
    assert peer.receive([call("w", i, id=i) for i in range(5)]) == PAUSE
    assert len(peer.dispatcher.submitted) == 3 and peer.session.owes_replies
    peer.dispatcher.finish(peer.call(0), 0)
    assert len(peer.dispatcher.submitted) == 4 and peer.decided == [None]  # refilled: still full
    while peer.dispatcher.running():
        c = peer.dispatcher.running()[0]
        peer.dispatcher.finish(c, c.request.id)
    assert len(peer.dispatcher.submitted) == 5 and peer.decided.count(RESUME) == 1
    [array] = peer.out()
    assert sorted(r["result"] for r in array) == [0, 1, 2, 3, 4]


# -- rpc.cancel -------------------------------------------------------------------------------


def test_cancel_finds_the_call_by_id_and_answers_both():
    peer = Peer()
    peer.receive(call("slow", id="s"))
    peer.receive(call("rpc.cancel", "s", id=2))
    [target] = peer.dispatcher.cancelled
    assert target.request.id == "s"
    assert peer.out() == [
        {
            "jsonrpc": "2.0",
            "error": {"code": CANCELLED, "message": "call cancelled by the client"},
            "id": "s",
        },
        {"jsonrpc": "2.0", "result": True, "id": 2},
    ]
    peer.receive({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "s"}, "id": 3})
    assert peer.out() == [{"jsonrpc": "2.0", "result": False, "id": 3}]  # already over


@pytest.mark.parametrize("params", [[], [1, 2], {"call": 1}])
def test_cancel_with_bad_params_is_invalid_params(params):
    peer = Peer()
    peer.receive({"jsonrpc": "2.0", "method": "rpc.cancel", "params": params, "id": 9})
    [reply] = peer.out()
    assert reply["id"] == 9 and reply["error"]["code"] == -32602


def test_legacy_calls_cannot_be_cancelled():
    peer = Peer()
    peer.receive({"in": "slow"})
    peer.receive(call("rpc.cancel", None, id=1))  # a legacy request has id None
    assert peer.dispatcher.cancelled == []
    assert peer.out() == [{"jsonrpc": "2.0", "result": False, "id": 1}]


# -- the auth phase ---------------------------------------------------------------------------


def test_handshake_challenge_refusals_then_success():
    peer = Peer(handshake=Handshake())
    assert peer.session.authenticating
    peer.session.begin()
    assert peer.out() == [
        {"jsonrpc": "2.0", "method": "rpc.auth", "params": Handshake.challenge_params}
    ]
    assert peer.receive(call("ping", id=1)) is None
    peer.receive({"in": "ping"})
    peer.receive([call("ping", id=2)])
    peer.receive({"jsonrpc": "2.0", "method": "ping"})  # a notification: refused silently
    refusals = peer.out()
    assert [r.get("error", r.get("result", {})).get("code") for r in refusals] == [-32003] * 3
    assert refusals[0]["id"] == 1 and refusals[1]["out"] == "error" and refusals[2]["id"] is None
    assert peer.dispatcher.submitted == []
    assert peer.receive(call("rpc.auth", {"digest": "right"}, id="a")) == AUTHENTICATED
    assert peer.out() == [{"jsonrpc": "2.0", "result": {"authenticated": True}, "id": "a"}]
    assert not peer.session.authenticating
    peer.receive(call("ping", id=3))
    assert [c.request.id for c in peer.dispatcher.submitted] == [3]


def test_failed_handshake_answers_and_closes_with_a_reason():
    peer = Peer(handshake=Handshake())
    assert peer.receive(call("rpc.auth", {"digest": "wrong"}, id="a")) == CLOSE
    assert peer.session.failure == "authentication failed: wrong digest"
    [reply] = peer.out()
    assert reply["id"] == "a" and reply["error"]["code"] == -32003


def test_handshake_timeout_and_oversized_frame_close():
    peer = Peer(handshake=Handshake())
    assert peer.session.handshake_timed_out(5.0) == CLOSE
    assert "timed out after 5 s" in peer.session.failure
    assert peer.out()[0]["error"]["code"] == -32003
    peer = Peer(handshake=Handshake())
    assert peer.session.frame_too_large(FrameTooLarge(5000, 4096)) == CLOSE
    assert "before authentication" in peer.session.failure
    assert peer.out()[0]["error"]["code"] == -32004


# -- frame limit, half-close, the connection gone ---------------------------------------------


def test_frame_too_large_is_answered_then_closed():
    peer = Peer()
    assert peer.session.frame_too_large(FrameTooLarge(101, 100)) == CLOSE
    [error] = peer.out()
    assert error["id"] is None and error["error"]["code"] == -32004
    assert "101 bytes exceeds max_frame_bytes 100" in error["error"]["message"]


def test_half_close_closes_when_the_last_reply_owed_is_out():
    peer = Peer(max_inflight=1)
    assert peer.session.read_closed() == CLOSE  # nothing owed
    peer = Peer(max_inflight=1)
    peer.receive(call("a", id=1))
    peer.receive(call("b", id=2))  # past the cap: held
    assert peer.session.read_closed() is None
    peer.dispatcher.finish(peer.call(0), "A")
    assert peer.decided == [None]  # b was submitted: still owed
    peer.dispatcher.finish(peer.call(1), "B")
    assert peer.decided == [None, CLOSE] and peer.session.failure is None
    assert [r["result"] for r in peer.out()] == ["A", "B"]


def test_abandon_cancels_everything_and_drops_what_was_held():
    peer = Peer(max_inflight=2)
    peer.receive([call("w", i, id=i) for i in range(4)])
    peer.session.abandon()
    assert (
        set(peer.dispatcher.cancelled) == set(peer.dispatcher.submitted)
        and len(peer.dispatcher.submitted) == 2
    )
    assert not peer.session.owes_replies and peer.out() == []


# -- issue 10 ---------------------------------------------------------------------------------


def test_a_parse_error_on_a_legacy_connection_takes_its_place_in_legacy_shape():
    peer = Peer()
    peer.receive({"in": "first"})
    peer.receive(b"{not json")
    peer.receive({"in": "second"})
    assert peer.out() == []  # the error waits for the reply before it
    first, second = peer.dispatcher.submitted
    peer.dispatcher.finish(second, 2)
    peer.dispatcher.finish(first, 1)
    replies = peer.out()
    assert replies[0] == {"out": "first", "result": 1}
    assert replies[1]["out"] == "error" and replies[1]["result"]["code"] == -32700
    assert replies[2] == {"out": "second", "result": 2}


def test_a_parse_error_on_a_jsonrpc_connection_stays_jsonrpc():
    peer = Peer()
    peer.receive({"in": "first"})
    peer.receive(call("now", id=1))  # the connection speaks JSON-RPC again
    peer.receive(b"{not json")
    [error] = peer.out()
    assert error["jsonrpc"] == "2.0" and error["id"] is None and error["error"]["code"] == -32700


# -- the usual reply handed back (Session.answered) ---------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()  # NaN and the infinities included: JSON has neither
    | st.text()
)
_results = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(deadline=None)
@given(_results, st.integers(-(2**63), 2**64 - 1) | st.text(), st.sampled_from([None, 40, 10**6]))
def test_the_usual_reply_comes_back_as_the_body_wire_encode_writes(result, rid, limit):
    peer = Peer(max_reply_bytes=limit)
    peer.receive(call("echo", id=rid))
    [submitted] = peer.dispatcher.submitted
    submitted.done = True
    body = peer.session.answered(submitted, Response(submitted.request, result))
    # Whatever the result (NaN, too large, not JSON): the frame encode makes of it, nothing sent.
    assert body == wire.encode(Response(submitted.request, result), limit)
    assert peer.sent == [] and not peer.session.calls


def test_answered_hands_back_no_body_for_a_notification_or_a_route_of_its_own():
    peer = Peer()
    peer.receive({"jsonrpc": "2.0", "method": "note"})
    peer.receive({"in": "old"})
    note, legacy = peer.dispatcher.submitted
    assert peer.session.answered(note, Response(note.request, 1)) is None
    assert peer.session.answered(legacy, Response(legacy.request, 2)) is None
    assert peer.out() == [{"out": "old", "result": 2}]  # the legacy route sent its own


def test_answered_sends_itself_and_decides_when_a_slot_was_awaited():
    peer = Peer(max_inflight=1)
    assert peer.receive(call("a", id=1)) == PAUSE
    [first] = peer.dispatcher.submitted
    assert peer.session.answered(first, Response(first.request, "A")) == RESUME
    assert peer.out() == [{"jsonrpc": "2.0", "result": "A", "id": 1}]
