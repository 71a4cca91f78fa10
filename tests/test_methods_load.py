"""Loading methods modules: the working directory is importable, as with `python -m`."""

from __future__ import annotations

import sys

import pytest

from rpcd.methods import LoadError, Registry


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory holding a methods file, and a sys.path without it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("ops_cwd_")]:
        del sys.modules[name]


def test_a_module_in_the_working_directory_loads(elsewhere):
    (elsewhere / "ops_cwd_methods.py").write_text(
        "from rpcd import method\n\n@method\ndef hello(name):\n    return 'hello ' + name\n"
    )
    registry = Registry()
    assert registry.load("ops_cwd_methods") == 1
    assert registry.get("hello").func("you") == "hello you"
    assert sys.path[0] == str(elsewhere)


def test_the_working_directory_is_put_first_once(elsewhere):
    for name in ("one", "two"):
        source = f"from rpcd import method\n\n@method\ndef {name}():\n    pass\n"
        (elsewhere / f"ops_cwd_{name}.py").write_text(source)
    registry = Registry()
    registry.load("ops_cwd_one")
    registry.load("ops_cwd_two")
    assert sys.path.count(str(elsewhere)) == 1 and sys.path[0] == str(elsewhere)


def test_rpc_cancel_is_listed_with_its_signature():
    registry = Registry()
    described = registry.get("rpc.cancel").describe()
    assert described["signature"] == "rpc.cancel(id: str | int) -> bool"
    assert "-32006" in described["doc"]
    assert [m.name for m in registry] == ["rpc.cancel"]


ASYNC_METHODS = """
import asyncio
from asyncio import sleep as nap

from twisted.internet import defer

from rpcd import method


@method
async def waits_on_asyncio():
    await asyncio.sleep(0.01)


@method
async def naps():
    await nap(0.01)


@method
async def nested():
    async def inner():
        await asyncio.sleep(0)
    await inner()


@method
async def waits_on_a_deferred(value):
    return await defer.succeed(value)
"""


@pytest.mark.parametrize("name", ["waits_on_asyncio", "naps", "nested"])
def test_an_async_def_using_asyncio_is_refused_at_load_saying_what_works(name):
    namespace: dict = {}
    exec(compile(ASYNC_METHODS, "ops_async_methods", "exec"), namespace)
    with pytest.raises(LoadError, match="may await Deferreds") as refused:
        Registry().add(name, namespace[name])
    assert name in str(refused.value) and "\n" not in str(refused.value)


def test_an_async_def_awaiting_deferreds_still_loads():
    namespace: dict = {}
    exec(compile(ASYNC_METHODS, "ops_async_methods", "exec"), namespace)
    registry = Registry()
    registry.add("waits_on_a_deferred", namespace["waits_on_a_deferred"])
    assert "waits_on_a_deferred" in registry
