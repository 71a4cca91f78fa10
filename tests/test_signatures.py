"""Introspection: how rpc.methods and rpc.describe present a method's signature and doc."""

from __future__ import annotations

import inspect
from typing import Any

from rpcd.builtins import add_builtins
from rpcd.methods import Registry, format_signature


def sig(func):
    return format_signature("f", inspect.signature(func))


def test_signatures_read_like_calls():
    assert sig(lambda: None) == "f()"
    assert sig(lambda a, b=1, *rest, k=False, **more: None) == "f(a, b=1, *rest, k=False, **more)"

    def typed(a: int, b: list[str] = None, c: int | None = 3) -> dict:
        pass

    assert sig(typed) == "f(a: int, b: list[str] = None, c: int | None = 3) -> dict"

    def untyped_any(value: Any) -> Any:
        pass

    assert sig(untyped_any) == "f(value)"  # Any tells a caller nothing
    evaluated = inspect.Signature(
        [inspect.Parameter("a", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int)],
        return_annotation=list[int],
    )
    assert format_signature("f", evaluated) == "f(a: int) -> list[int]"
    assert format_signature("f", None) == "f(...)"


def test_builtins_describe_themselves():
    registry = Registry()
    add_builtins(registry, dict)
    described = {m.describe()["name"]: m.describe() for m in registry}
    assert described["ping"]["signature"] == "ping([value])"
    assert described["ping"]["doc"].startswith('Answer "pong"')
    assert described["rpc.describe"]["signature"] == "rpc.describe(name: str) -> dict"
    listed = registry.get("rpc.methods").func()
    assert [m["name"] for m in listed] == sorted(described)
    assert registry.get("rpc.describe").func("ping") == described["ping"]
