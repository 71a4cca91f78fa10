"""Twisted's own reactor conformance suites, run against GeventReactor in a subprocess.

The subprocess (tests/reactor_trial.py) patches with gevent as the daemon does, so this test
process stays unpatched. Tests that cannot apply are skipped there, each with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITES = [
    "twisted.internet.test.test_tcp",
    "twisted.internet.test.test_core",
    "twisted.internet.test.test_time",
    "twisted.internet.test.test_threads",
    "twisted.internet.test.test_tls",
    "twisted.internet.test.test_unix",
    "twisted.internet.test.test_udp",
    "twisted.internet.test.test_posixbase",
    "twisted.internet.test.test_base",
    "twisted.internet.test.test_newtls",
    "twisted.internet.test.test_endpoints",
]


def test_twisted_reactor_suites_pass_on_gevent_reactor(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reactor_trial", str(tmp_path / "trial"), *SUITES],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("COUNTS "), proc.stderr[-4000:]
    report = json.loads(last[len("COUNTS ") :])
    assert report["failed"] == [], proc.stderr[-8000:]
    ours = report["counts"]["gevent"]
    # Every suite produced GeventReactor cases, and the skips are only the listed ones.
    assert ours["successes"] >= 220, ours
    from tests.reactor_trial import SKIPS

    assert ours["skips"] <= len(SKIPS), report["skipped"]
