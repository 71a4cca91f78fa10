"""`rpcd-call`'s old import path: it lives in `rpcd.client.cli`."""

import sys

from rpcd.client.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
