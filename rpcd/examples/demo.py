"""Demo methods for the README tour and the tests: `twistd -n rpcd --methods rpcd.examples.demo`."""

import time

from rpcd import method


@method
def add(a, b):
    """Add two numbers."""
    return a + b


@method("math.mul")
def multiply(a, b):
    """Multiply two numbers."""
    return a * b


@method
def echo(value):
    """Return the value given."""
    return value


@method
def sleep(seconds=1.0):
    """Sleep (time.sleep: it yields to other calls), then return the seconds slept."""
    time.sleep(seconds)
    return seconds


@method
def fail(message="demo failure"):
    """Raise ValueError: the client sees -32603 with data.type, the log sees the traceback."""
    raise ValueError(message)


@method
def count(n=3, delay=0.0):
    """Stream the numbers 0..n-1 (a generator method streams its items)."""
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i
    return n
