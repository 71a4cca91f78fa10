"""rpcd.gcpolicy: start-up's objects are frozen before the daemon listens, so a full collection
walks only what was made since (the 10-25 ms pauses behind issue 13's target f)."""

import subprocess
import sys
import textwrap

from tests.integration.conftest import ROOT, launch


def test_freeze_collects_the_garbage_first_and_freezes_the_rest():
    # In a process of its own: a freeze here would keep this test run's objects forever.
    script = textwrap.dedent(
        """
        import gc, weakref
        from rpcd import gcpolicy

        class Node:
            pass

        kept, garbage = Node(), Node()
        garbage.self = garbage
        gone = weakref.ref(garbage)
        del garbage
        frozen = gcpolicy.freeze()
        assert gone() is None, "a cycle left by start-up was frozen, not collected"
        assert frozen == gc.get_freeze_count() > 1000, frozen
        walked = [o for g in range(3) for o in gc.get_objects(g)]
        assert not any(o is kept for o in walked), "a survivor is still walked"
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_the_daemon_freezes_its_start_up_objects(tmp_path):
    daemon = launch(tmp_path, methods="tests.gc_methods")
    try:
        state = daemon.client().call("gc_state")["result"]
    finally:
        daemon.terminate()
    # Tens of thousands of objects live as long as the daemon: frozen, a full collection
    # walks only the few made since (a connection, a call, a worker).
    assert state["frozen"] > 20000, state
    assert state["walked"] < state["frozen"] / 5, state
