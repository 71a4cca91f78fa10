"""The methods rpcd serves in the benchmarks: `echo` and a blocking `sleep`."""

import time

from rpcd import method


@method
def echo(value):
    """Return the value given."""
    return value


@method
def sleep(seconds):
    """Block for `seconds` (time.sleep, monkey-patched: the worker yields)."""
    time.sleep(seconds)
    return seconds
