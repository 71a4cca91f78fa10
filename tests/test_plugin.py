"""Twisted's plugin discovery finds `rpcd` from a built wheel and from the editable install.

twisted/plugins/ ships without an __init__.py (Twisted's own package owns it), so this is the
one part of packaging that can silently go wrong: the wheel test builds and installs the
project the way `pip install .` would, into a directory of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.cfg", "pyproject.toml", "README.md", "rpcd", "twisted"]

# Run in a fresh interpreter. For the wheel, the source tree is taken off sys.path (the
# editable install puts it there through a .pth file), so only `where` can provide rpcd.
DISCOVER = """
import sys
root, where = sys.argv[1], sys.argv[2]
if where != root:
    sys.path[:] = [p for p in sys.path if p.rstrip("/") != root]
from twisted.application.reactors import IReactorInstaller
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import twisted.plugins
[maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "rpcd"]
[reactor] = [p for p in getPlugins(IReactorInstaller) if p.shortName == "gevent"]
import rpcd.tap, twisted.plugins.rpcd_plugin as plugin
assert rpcd.tap.__file__.startswith(where), rpcd.tap.__file__
assert plugin.__file__.startswith(where), plugin.__file__
assert maker.module == "rpcd.tap" and reactor.moduleName == "rpcd.reactor"
print("found rpcd in", where)
"""


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


def discover(where: Path, env_path: str | None, cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    result = subprocess.run(
        [sys.executable, "-c", DISCOVER, str(ROOT), str(where)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_wheel_ships_the_plugin_and_twisted_finds_it(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.pyc")
    for name in SOURCES:  # a clean copy: building never writes into the worktree
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source))
    [wheel] = (tmp_path / "dist").glob("rpcd-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/rpcd_plugin.py" in names
    assert "twisted/__init__.py" not in names  # would shadow Twisted itself
    assert "twisted/plugins/__init__.py" not in names  # would replace Twisted's plugin package
    assert "rpcd/tap.py" in names and "rpcd/reactor.py" in names

    target = tmp_path / "site"
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    assert "found rpcd in" in discover(target, str(target), cwd=tmp_path)


def test_editable_install_is_found(tmp_path):
    # No PYTHONPATH: the editable install alone must make the plugin visible.
    assert "found rpcd in" in discover(ROOT, None, cwd=tmp_path)
