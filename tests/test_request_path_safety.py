"""No pickle, marshal or eval on the request path: rpcd's own source imports and calls none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).resolve().parents[1] / "rpcd").glob("*.py"))
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def _violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.module and node.module.split(".")[0] in BANNED_MODULES:
                found.append(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            unpickle = name in ("loads", "load") and _module_of(func) in BANNED_MODULES
            if name in BANNED_CALLS or unpickle:
                found.append(f"{name}() at line {node.lineno}")
    return found


def _module_of(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id
    return None


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"wire.py", "protocol.py", "dispatch.py", "methods.py", "auth.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_pickle_marshal_or_eval(path):
    assert _violations(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import marshal as m",
        "from pickle import loads",
        "from _pickle import Unpickler",
        "eval(x)",
        "builtins.exec(x)",
        "compile(src, 'f', 'exec')",
        "pickle.loads(b)",
    ],
)
def test_the_scan_catches(snippet):
    assert _violations(snippet)
