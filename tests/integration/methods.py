"""Methods the integration tests serve."""

import os
import time

from rpcd import method


@method
def add(a, b):
    """Add two numbers."""
    return a + b


@method
def echo(value):
    return value


@method
def filler(size):
    """A reply of `size` bytes' worth of text, from a small request."""
    return "x" * size


@method
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@method
def boom():
    raise KeyError("secret-detail")


@method
def stubborn(seconds):
    """Sleeps and swallows every Exception: a timeout must still stop it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except Exception:
            pass
    return "finished"


@method
def deferred_value(value):
    from twisted.internet import defer, reactor

    d = defer.Deferred()
    reactor.callLater(0.01, d.callback, value)
    return d


@method
def ticker(n, delay=0.0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i
    return n


@method
def fakelog(lines=10, level="info", grep=None, follow=False):
    """Stands in for getlog (same parameters): returns them; with follow, streams them."""
    params = {"lines": lines, "level": level, "grep": grep, "follow": follow}
    return _repeat(params) if follow else params


def _repeat(item):
    while True:
        yield item
        time.sleep(0.05)


@method
def in_thread(value):
    """Runs in Twisted's thread pool (deferToThread) and returns what the thread computed."""
    from twisted.internet.threads import deferToThread

    return deferToThread(lambda: [value, value])


@method
def resolve(name):
    """Resolves `name` through the reactor's own resolver."""
    from twisted.internet import reactor

    return reactor.resolve(name)


@method
def shout(text):
    """Log `text` at warning level through the standard logging module."""
    import logging

    logging.getLogger("tests.shout").warning(text)
    return text


@method
def spin(seconds):
    """Burns CPU without yielding: the event loop is blocked meanwhile."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


_tracked = {"running": 0, "peak": 0}


@method
def tracked(seconds):
    """Sleeps, counting how many tracked calls run at once."""
    _tracked["running"] += 1
    _tracked["peak"] = max(_tracked["peak"], _tracked["running"])
    try:
        time.sleep(seconds)
    finally:
        _tracked["running"] -= 1
    return seconds


@method
def tracked_peak():
    """The most tracked calls that ran at once; resets the count."""
    peak, _tracked["peak"] = _tracked["peak"], 0
    return peak


@method
def gated(path):
    """Waits until the file `path` exists: the test opens the gate when it is ready (or a
    minute passes: a test that failed first must not leave the call running for ever)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} not opened within 60 s")
        time.sleep(0.01)
    return "through"
