"""rpcd's own log: a size-rotated file, the observer that writes it, access lines, and the
reader behind `getlog`.

- `rotating`: the file on disk, rotated by size into numbered backups;
- `observer`: the twisted.logger observer, its text and JSON formats, the stdlib bridge;
- `access`: the per-call access line, rendered from the dispatcher's journal;
- `reader`: the tail reader, the filters and the follower behind `getlog`.
"""

from rpcd.logs.access import ACCESS_NAMESPACE, AccessLog
from rpcd.logs.observer import LEVELS, LogFile, TerminalObserver, current
from rpcd.logs.reader import Filter, follow, parse_since, tail
from rpcd.logs.rotating import LogError, RotatingFile

__all__ = [
    "ACCESS_NAMESPACE",
    "LEVELS",
    "AccessLog",
    "Filter",
    "LogError",
    "LogFile",
    "RotatingFile",
    "TerminalObserver",
    "current",
    "follow",
    "parse_since",
    "tail",
]
