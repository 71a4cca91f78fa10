"""rpcd.client's boundary: no client module imports a server module; the old import paths work."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rpcd.client

SERVER_MODULES = {
    "protocol", "session", "dispatch", "service", "tap", "logs", "methods", "builtins",
    "reactor", "config", "supervisor", "proxy", "process", "stats", "metrics",
}  # fmt: skip
PACKAGE = Path(rpcd.client.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "rpcd":
                names.update(f"rpcd.{alias.name}" for alias in node.names)
    return names


def test_no_client_module_imports_a_server_module():
    modules = sorted(PACKAGE.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "blocking", "errors", "routing"}
    for module in modules:
        for name in _imports(module):
            parts = name.split(".")
            if parts[0] == "rpcd" and len(parts) > 1:
                assert parts[1] not in SERVER_MODULES, f"{module.name} imports {name}"


def test_importing_the_clients_loads_no_server_module_beyond_the_package_root():
    # `import rpcd` itself loads rpcd.methods (for `from rpcd import method`): not the clients'.
    code = (
        "import sys, rpcd; before = set(sys.modules);"
        "import rpcd.client, rpcd.client.cli, rpcd.client.twisted_client;"
        "print(' '.join(sorted(m for m in set(sys.modules) - before if m.startswith('rpcd'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = out.stdout.split()
    assert "rpcd.client.blocking" in loaded, out.stderr
    assert [m for m in loaded if m.split(".")[1] in SERVER_MODULES] == []


def test_importing_the_blocking_client_does_not_import_twisted():
    code = "import sys, rpcd.client; print('twisted.internet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_old_import_paths_keep_working():
    import rpcd.cli
    import rpcd.twisted_client
    from rpcd.client import Client, MethodNotFound, RemoteError
    from rpcd.client.cli import main
    from rpcd.client.twisted_client import RPCConnection, connect

    assert rpcd.twisted_client.connect is connect
    assert rpcd.twisted_client.RPCConnection is RPCConnection
    assert rpcd.cli.main is main
    assert issubclass(MethodNotFound, RemoteError) and Client.__module__ == "rpcd.client.blocking"
