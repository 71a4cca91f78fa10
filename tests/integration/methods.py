"""Methods the integration tests serve."""

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
def shout(text):
    """Log `text` at warning level through the standard logging module."""
    import logging

    logging.getLogger("tests.shout").warning(text)
    return text
