"""rpcd.mallocpolicy: a transport's max_outbuf-sized read is served from the heap, not by a
mapping of its own with two page faults per read."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, launch

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# A fresh process: no large mapped block freed yet, so glibc's mmap threshold is its first.
READS = textwrap.dedent(
    """
    import resource, socket, sys
    from rpcd import mallocpolicy

    if sys.argv[1] == "apply":
        assert mallocpolicy.apply(1 << 20)
    a, b = socket.socketpair()
    for _ in range(20):
        a.send(b"x" * 40)
        b.recv(1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(1000):
        a.send(b"x" * 40)
        b.recv(1 << 20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults_in_1000_reads(mode):
    result = subprocess.run(
        [sys.executable, "-c", READS, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@glibc
def test_a_max_outbuf_read_takes_no_page_fault_once_applied():
    assert faults_in_1000_reads("apply") < 50
    # What it prevents: each read its own mapping, touched afresh.
    assert faults_in_1000_reads("default") >= 1000


def minflt(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@glibc
def test_the_daemon_reads_without_page_faults(tmp_path, monkeypatch):
    # glibc's fixed 128 KiB threshold, as a start-up that freed no large block leaves it
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 << 10))
    daemon = launch(tmp_path)
    try:
        client = daemon.client()
        for _ in range(50):
            client.call("echo", "warm")
        before = minflt(daemon.proc.pid)
        for _ in range(500):
            client.call("echo", "x")
        faults = minflt(daemon.proc.pid) - before
    finally:
        daemon.terminate()
    assert faults < 100, faults  # two a read without the policy
