"""The installed package works outside its checkout: a wheel in a fresh venv, run elsewhere.

The editable install used for development puts the clone on sys.path, which hides every
packaging mistake (a module that is not shipped, data read from the clone, a methods file
found only because the clone is the working directory). So this builds a wheel from a clean
copy of the sources, installs it into a new virtualenv with plain `pip install` (the
dependencies come from the configured index or pip's cache: about 15 s here, bounded by the
timeouts below), and runs the daemon from a directory that has nothing but a methods file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import rpcd
from tests.integration.conftest import free_port
from tests.rawclient import RawClient

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["setup.cfg", "pyproject.toml", "README.md", "LICENSE", "rpcd", "twisted", "conf"]

METHODS = '''
from rpcd import method


@method
def hello(name):
    """Greet."""
    return f"hello {name}"
'''


def run(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # No PYTHONPATH and no inherited virtualenv: only what the venv holds may be imported.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    result = subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from a clean copy of the sources; its bin/ path."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.pyc", "*.egg-info")
    for name in SOURCES:  # copytree follows symlinks: rpcd/rpcd.toml becomes a real file
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(source), cwd=base)
    [wheel] = (base / "dist").glob("rpcd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("rpcd/py.typed", "rpcd/rpcd.toml", "rpcd/examples/demo.py"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names

    venv = base / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=base)
    run(
        str(venv / "bin" / "pip"),
        "--disable-pip-version-check",
        "-q",
        "install",
        str(wheel),
        cwd=base,
        timeout=300,
    )
    return venv / "bin"


def test_daemon_serves_a_methods_file_from_the_working_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mymethods.py").write_text(METHODS)
    port = free_port()
    output = (elsewhere / "twistd.out").open("wb")
    proc = subprocess.Popen(
        [
            str(installed / "twistd"),
            "-n",
            "--pidfile=",
            "rpcd",
            "--methods",
            "mymethods",
            "--methods",
            "rpcd.examples.demo",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin"},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (elsewhere / "twistd.out").read_text()
            try:
                client = RawClient(port)
                break
            except OSError:
                assert time.monotonic() < deadline, (elsewhere / "twistd.out").read_text()
                time.sleep(0.1)
        assert client.call("hello", "world")["result"] == "hello world"
        # rpcd.examples.demo, from the installed package
        assert client.call("add", 2, 3)["result"] == 5
        client.close()
        called = run(
            str(installed / "rpcd-call"),
            "-c",
            f"tcp:127.0.0.1:{port}",
            "hello",
            "you",
            cwd=tmp_path,
        )
        assert called.stdout.strip() == '"hello you"'
    finally:
        proc.terminate()
        proc.wait(30)
        output.close()


def test_versions_and_default_config_come_from_the_installed_package(installed, tmp_path):
    for program, argv, name in (("twistd", ["rpcd"], "rpcd"), ("rpcd-call", [], "rpcd-call")):
        out = run(str(installed / program), *argv, "--version", cwd=tmp_path).stdout
        assert out.split()[:2] == [name, rpcd.__version__], out
    printed = run(str(installed / "twistd"), "rpcd", "--print-config", cwd=tmp_path).stdout
    assert printed == (ROOT / "conf" / "rpcd.toml").read_text()
