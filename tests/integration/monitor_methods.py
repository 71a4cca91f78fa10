"""A method the blocked-loop monitor's tests serve besides tests.integration.methods."""

import greenlet

from rpcd import method


@method
def greenlet_tracer():
    """The name of the greenlet trace function the loop's thread runs on each switch, if any."""
    tracer = greenlet.gettrace()
    return None if tracer is None else type(tracer).__name__
