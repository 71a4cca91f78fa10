"""rpcd: an RPC service daemon. Twisted owns the network; gevent runs the calls."""

from rpcd.methods import method

__all__ = ["method"]
__version__ = "0.1.0"
