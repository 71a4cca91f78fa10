"""A method reporting the daemon's garbage-collector state (tests/test_gc_policy.py)."""

import gc

from rpcd import method


@method
def gc_state():
    """What the collector holds: frozen objects, and the ones a full collection walks."""
    return {
        "frozen": gc.get_freeze_count(),
        "walked": sum(len(gc.get_objects(generation)) for generation in range(3)),
    }
