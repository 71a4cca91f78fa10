"""The daemon's malloc policy: a read as large as max_outbuf is served from the heap.

Twisted's transports read up to their bufferSize per recv, and RPCProtocol sets that to
max_outbuf (1 MiB by default), the write buffer's pause threshold. CPython allocates the
whole size for every recv and shrinks it to what came. glibc serves a block above its mmap
threshold (128 KiB at first, raised only once a larger mmapped block is freed) by a mapping of
its own: mmap, two page faults, mremap and munmap for every read. Whether start-up happened to
free such a block decided whether a run took two faults per call or none. Fixed thresholds
above the read size give every run the heap; the trim threshold at twice that, as glibc's own
rule sets it, keeps the heap's top from being given back and grown again between reads.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's cap on 64-bit: mallopt refuses more
_SLACK = 64 << 10  # the bytes object's header and the allocator's own


def apply(read_size: int) -> bool:
    """Have blocks of up to `read_size` come from the heap; False where this is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    threshold = min(max(read_size + _SLACK, 128 << 10), _MMAP_THRESHOLD_MAX)
    # musl's mallopt is a stub that returns 0
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2 * threshold)
    )


__all__ = ["apply"]
