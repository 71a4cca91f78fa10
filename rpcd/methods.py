"""Method registry: the `@method` decorator, loading user modules, binding params, introspection."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from rpcd.wire import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, RPCError

_MARK = "__rpcd_method__"
RESERVED_PREFIX = "rpc."
CANCEL = "rpc.cancel"


def method(name_or_func: Any = None) -> Any:
    """Mark a function as an RPC method: `@method`, `@method()` or `@method("math.add")`."""

    def mark(func: Callable, name: str | None) -> Callable:
        setattr(func, _MARK, name or func.__name__)
        return func

    if callable(name_or_func):
        return mark(name_or_func, None)
    if name_or_func is not None and not isinstance(name_or_func, str):
        raise TypeError(f"@method takes a method name (a str), not {name_or_func!r}")
    return lambda func: mark(func, name_or_func)


class LoadError(Exception):
    """A methods module could not be loaded; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Method:
    """One callable method and what introspection tells about it."""

    name: str
    func: Callable
    signature: inspect.Signature | None

    def bind_error(self, params: tuple | dict) -> RPCError:
        """Explain why `params` do not fit this method (named parameter, if Python says)."""
        try:
            if isinstance(params, dict):
                self.signature.bind(**params)
            else:
                self.signature.bind(*params)
        except TypeError as exc:
            return RPCError(INVALID_PARAMS, f"invalid params for {self.name}: {exc}")
        except AttributeError:
            pass
        return RPCError(INVALID_PARAMS, f"invalid params for {self.name}")

    def describe(self) -> dict:
        doc = inspect.getdoc(self.func) or ""
        signature = format_signature(self.name, self.signature)
        return {"name": self.name, "signature": signature, "doc": doc}


def format_signature(name: str, signature: inspect.Signature | None) -> str:
    """`name(a, b=1, *rest) -> int` as a caller reads it: annotations without quotes, and a
    parameter whose default is a private sentinel shown as optional: `ping([value])`."""
    if signature is None:
        return f"{name}(...)"
    empty = inspect.Parameter.empty
    parts = []
    for param in signature.parameters.values():
        text = str(param.replace(annotation=empty, default=empty))
        annotation = _annotation(param.annotation)
        if annotation:
            text += f": {annotation}"
        if param.default is not empty:
            default = repr(param.default)
            if default.startswith("<"):
                text = f"[{text}]"
            else:
                text += f" = {default}" if annotation else f"={default}"
        parts.append(text)
    text = f"{name}({', '.join(parts)})"
    returns = _annotation(signature.return_annotation)
    return f"{text} -> {returns}" if returns else text


def _annotation(annotation: Any) -> str:
    """The annotation as text; "" when absent or `Any` (which tells a caller nothing)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return ""
    if annotation in ("Any", "typing.Any"):
        return ""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__qualname__
    return inspect.formatannotation(annotation)


def _signature(func: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _uses_asyncio(func: Callable) -> bool:
    """Whether a coroutine function names asyncio (the module, or something taken from it)
    among the globals its code reads, nested functions included.

    A coroutine that awaits asyncio fails on rpcd at its first await ("no running event
    loop"): refusing it when its module loads says so at once. Libraries built on asyncio
    are not seen through; their calls fail the same way, at run time.
    """
    func = inspect.unwrap(getattr(func, "__func__", func))
    namespace = getattr(func, "__globals__", {})
    codes = [func.__code__] if hasattr(func, "__code__") else []
    while codes:
        code = codes.pop()
        for name in code.co_names:
            value = namespace.get(name)
            module = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "")
            if module == "asyncio" or str(module).startswith("asyncio."):
                return True
        codes.extend(c for c in code.co_consts if inspect.iscode(c))
    return False


def put_cwd_on_path() -> None:
    """Put the working directory first on sys.path, so `--methods mymethods` finds the
    `mymethods.py` beside the operator, as `python -m` and gunicorn do (twistd puts only
    its own script's directory there)."""
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        if cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)


def cancel(id: str | int) -> bool:
    """Stop a call made on this connection, by its id (params {"id": CALL_ID}): the call is
    answered -32006 and a stream ends. True if the call was still pending, false if it had
    already finished or never existed."""
    # The connection answers rpc.cancel itself (only it knows its calls): never dispatched.
    raise RPCError(INVALID_REQUEST, f"{CANCEL} is answered by the connection it is sent on")


class Registry:
    """Names to methods. Built at start-up, read-only while serving.

    It starts with `rpc.cancel`, which each connection answers itself, so that
    introspection (`rpc.methods`, `rpc.describe`) lists it with the methods it can stop.
    """

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self._view = MappingProxyType(self._methods)
        self.add(CANCEL, cancel, builtin=True)

    def add(self, name: str, func: Callable, *, builtin: bool = False) -> None:
        if name.startswith(RESERVED_PREFIX) and not builtin:
            raise LoadError(
                f"method name {name!r} is reserved: names beginning with 'rpc.' are the server's"
            )
        if name in self._methods:
            raise LoadError(f"method {name!r} is defined twice")
        if not builtin and inspect.iscoroutinefunction(func) and _uses_asyncio(func):
            raise LoadError(
                f"method {name!r} is an async def using asyncio, which rpcd does not run: "
                "its coroutines run on Twisted, so they may await Deferreds; for asyncio "
                "libraries write a plain def (blocking calls yield under gevent)"
            )
        self._methods[name] = Method(name, func, _signature(func))

    @property
    def methods(self) -> Mapping[str, Method]:
        """The methods by name (read-only; the dispatcher looks each call up here)."""
        return self._view

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise self.not_found(name) from None

    @staticmethod
    def not_found(name: str) -> RPCError:
        """The error answering a call of `name`, which names no method here."""
        return RPCError(METHOD_NOT_FOUND, f"method not found: {name}", {"method": name})

    def __contains__(self, name: str) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def load(self, spec: str) -> int:
        """Add the methods of `pkg.mod` (its @method functions) or `pkg.mod:obj` (public methods).

        Returns how many methods were added.
        """
        module_name, _, attr = spec.partition(":")
        put_cwd_on_path()
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise LoadError(f"cannot import methods module {module_name!r}: {exc}") from exc
        before = len(self._methods)
        if attr:
            try:
                target = getattr(module, attr)
            except AttributeError:
                raise LoadError(
                    f"methods module {module_name!r} has no attribute {attr!r}"
                ) from None
            if inspect.isclass(target):
                try:
                    target = target()
                except Exception as exc:  # the class needs arguments, or its __init__ fails
                    raise LoadError(f"cannot instantiate {spec!r}: {exc}") from None
            for name, member in inspect.getmembers(target, callable):
                if not name.startswith("_"):
                    self.add(getattr(member, _MARK, name), member)
        else:
            for _, member in inspect.getmembers(module, callable):
                name = getattr(member, _MARK, None)
                if name is not None and getattr(member, "__module__", None) == module.__name__:
                    self.add(name, member)
        added = len(self._methods) - before
        if added == 0:
            raise LoadError(
                f"methods module {spec!r} exposes no methods (mark them with @rpcd.method)"
            )
        return added
