"""The Twisted client's old import path: it lives in `rpcd.client.twisted_client`."""

from rpcd.client.twisted_client import RPCConnection, connect

__all__ = ["RPCConnection", "connect"]
