"""Client throughput: `python bench/bench_client.py ENDPOINT MODE [CONCURRENCY] [SECONDS]`.

MODE is `serial` (one caller), `threads` or `greenlets` (CONCURRENCY callers sharing one
Client, gevent monkey-patched for greenlets). Calls `ping` with a 16-byte payload; prints calls/s.
"""

from __future__ import annotations

import sys
import time

MODE = sys.argv[2] if len(sys.argv) > 2 else "serial"
if MODE == "greenlets":
    from gevent import monkey

    monkey.patch_all()

import threading  # noqa: E402  (after patching, so it is gevent's under `greenlets`)

from rpcd.client import Client  # noqa: E402


def main() -> None:
    endpoint = sys.argv[1]
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    client = Client(endpoint)
    payload = "x" * 16
    client.call("ping", payload)
    counts = [0] * concurrency
    deadline = time.monotonic() + seconds

    def caller(slot: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            client.call("ping", payload)
            n += 1
        counts[slot] = n

    started = time.monotonic()
    if MODE == "serial":
        caller(0)
    else:
        workers = [threading.Thread(target=caller, args=(i,)) for i in range(concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    elapsed = time.monotonic() - started
    stats = client.call("rpc.stats")
    ping = stats["methods"]["ping"]
    print(
        f"{MODE} x{concurrency}: {sum(counts) / elapsed:,.0f} calls/s over {elapsed:.1f} s; "
        f"ping p50 {ping['p50_ms']} ms, p99 {ping['p99_ms']} ms (server side); "
        f"connections accepted {stats['connections']['accepted']}"
    )


if __name__ == "__main__":
    main()
