"""The JSON-RPC 2.0 rules, written from the specification for the tests; independent of rpcd.

https://www.jsonrpc.org/specification, sections 4 (request), 5 (response), 5.1 (error
object) and 6 (batch). rpcd's only additions are the legacy envelope (an object with "in"
and no "jsonrpc") and its server error codes in the range the spec leaves to servers.
"""

from __future__ import annotations

import json
from typing import Any

# Section 5.1: the pre-defined codes, and the range left to implementations.
PREDEFINED = {-32700, -32600, -32601, -32602, -32603}
SERVER_RANGE = range(-32099, -32000 + 1)
RESERVED_RANGE = range(-32768, -32000 + 1)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_unicode(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # an unpaired surrogate raises UnicodeEncodeError, a ValueError
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)


def parse(body: bytes) -> Any:
    """Parse a frame body as RFC 8259 JSON; raise ValueError if it is not.

    Stricter than the json module where the RFC allows it: NaN/Infinity are not JSON, and
    strings must be valid Unicode (RFC 8259 section 8.2 leaves unpaired surrogates
    unpredictable; rejecting them is the safe reading).
    """
    value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    _check_unicode(value)
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _id_in_range(value: Any) -> bool:
    """rpcd's one rule on number ids (README, "Hostile input"): kept exact within 64 bits.

    An integral number outside -2^63..2^64-1 (written as an integer or as a float such as
    1.8446744073709552e+19: after parsing the two are the same) is refused, not echoed
    back changed; the spec leaves number range to implementations. A float of -2^63 is
    refused too: it is what -2^63-1 written as an integer reads as."""
    if type(value) is float:
        return not value.is_integer() or -(2**63) < value < 2**64
    return -(2**63) <= value < 2**64


def classify(obj: Any) -> tuple:
    """What one request entry is, by the spec:

    ("call", id, method, params) | ("notification", method, params) | ("invalid", id-or-None)
    | ("legacy", method, params). `params` is as sent (list or dict), [] when absent.
    """
    if not isinstance(obj, dict):
        return ("invalid", None)
    if "jsonrpc" not in obj and "in" in obj:  # rpcd's legacy envelope; "in" may be invalid
        return ("legacy", obj["in"], [obj["params"]] if "params" in obj else [])
    has_id = "id" in obj
    rid = obj.get("id")
    id_ok = rid is None or isinstance(rid, str) or (_is_number(rid) and _id_in_range(rid))
    echo = rid if has_id and id_ok else None
    if not id_ok or obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str):
        return ("invalid", echo)
    params = obj.get("params", [])
    if not isinstance(params, (list, dict)):
        return ("invalid", echo)
    if not has_id:
        return ("notification", obj["method"], params)
    return ("call", rid, obj["method"], params)


def check_error_object(error: Any) -> None:
    """Section 5.1: code (integer), message (string), optional data; nothing else."""
    assert isinstance(error, dict), error
    assert set(error) <= {"code", "message", "data"}, error
    assert "code" in error and "message" in error, error
    assert type(error["code"]) is int, error
    assert isinstance(error["message"], str) and error["message"], error
    code = error["code"]
    if code in RESERVED_RANGE:
        assert code in PREDEFINED or code in SERVER_RANGE, f"reserved code {code} used"


def check_response(response: Any) -> None:
    """Section 5: jsonrpc "2.0", an id, exactly one of result and error."""
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "id" in response, response
    rid = response["id"]
    assert rid is None or isinstance(rid, str) or _is_number(rid), response
    assert ("result" in response) != ("error" in response), response
    assert set(response) <= {"jsonrpc", "id", "result", "error"}, response
    if "error" in response:
        check_error_object(response["error"])


def check_reply_to(entry: Any, response: Any) -> None:
    """A response is a well-formed answer to `entry` (a request object as sent)."""
    kind = classify(entry)
    assert kind[0] not in ("notification", "legacy"), "no JSON-RPC reply is due here"
    check_response(response)
    if kind[0] == "invalid":
        assert "error" in response and response["error"]["code"] == -32600, response
        assert response["id"] in (None, kind[1]), response
    else:
        assert response["id"] == kind[1], response


def check_exchange(body: bytes, replies: list[bytes]) -> None:
    """Everything a server sent back for one JSON-RPC frame `body` (legacy excluded)."""
    try:
        sent = parse(body)
    except (ValueError, RecursionError):
        assert len(replies) == 1, replies
        response = json.loads(replies[0])
        check_response(response)
        assert "error" in response and response["id"] is None, response
        assert response["error"]["code"] == -32700, response
        return
    if isinstance(sent, list) and sent:
        due = [entry for entry in sent if classify(entry)[0] not in ("notification",)]
        if not due:
            assert replies == [], "a batch of notifications gets no reply at all"
            return
        assert len(replies) == 1, "a batch is answered with one array"
        answer = json.loads(replies[0])
        assert isinstance(answer, list) and len(answer) == len(due), answer
        # Section 6: the responses may come in any order; pair each with an entry it answers.
        for response in answer:
            check_response(response)
        assert _matching(due, answer), f"responses {answer} do not answer the batch {due}"
        return
    if isinstance(sent, list) or not isinstance(sent, dict):
        assert len(replies) == 1, replies
        response = json.loads(replies[0])
        check_response(response)
        assert "error" in response and response["id"] is None, response
        assert response["error"]["code"] == -32600, response
        return
    if classify(sent)[0] == "legacy":
        assert len(replies) == 1, replies
        reply = json.loads(replies[0])
        assert set(reply) == {"out", "result"}, reply
        if not isinstance(sent["in"], str):
            assert reply["out"] == "error" and reply["result"]["code"] == -32600, reply
        return
    if classify(sent)[0] == "notification":
        assert replies == [], "a notification gets no reply"
        return
    assert len(replies) == 1, replies
    check_reply_to(sent, json.loads(replies[0]))


def _answers(entry: Any, response: Any) -> bool:
    if classify(entry)[0] == "legacy":  # not a request inside a batch
        return "error" in response and response["error"]["code"] == -32600
    try:
        check_reply_to(entry, response)
    except AssertionError:
        return False
    return True


def _matching(entries: list, responses: list) -> bool:
    """Whether every response can be paired with a distinct entry it answers (Kuhn's algorithm)."""
    owner: dict[int, int] = {}  # entry index -> response index

    def place(r: int, seen: set[int]) -> bool:
        for e, entry in enumerate(entries):
            if e in seen or not _answers(entry, responses[r]):
                continue
            seen.add(e)
            if e not in owner or place(owner[e], seen):
                owner[e] = r
                return True
        return False

    return all(place(r, set()) for r in range(len(responses)))
