"""The benchmark harness: rpcd, the stock-Twisted ceiling and the peers under one load, in one run.

    python bench/run.py                       # every scenario, every server installed
    python bench/run.py --scenarios a,b --duration 3 --repeat 3
    python bench/run.py --quick               # a short end-to-end run (the test suite's)

Every server runs as a subprocess on a free 127.0.0.1 port. Load comes from bench/loadgen.c,
compiled on demand with `cc -O2` into a cache directory: one process, --clients connections,
K calls in flight on each, replies matched by id, so the client is not what is measured.
Only peers with nothing but their own client library (RPyC, zerorpc, gRPC, xmlrpc) and the
rpcd client's own figures (g) use Python clients (bench/clients.py). Servers are stopped by
their pid. Beside every rate is the server's CPU time per call (/proc/PID/stat); the table
gives the ratio to the stock-Twisted ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TWISTD = str(Path(sys.executable).with_name("twistd"))
# Optional servers: name -> the module it needs. Those in LOADGEN_PROTO speak a protocol the
# C load generator speaks; the others are driven by their own client library, in a only.
PEERS = {
    "gevent": "gevent",
    "uvloop": "uvloop",
    "mprpc": "mprpc",
    "rpyc": "rpyc",
    "zerorpc": "zerorpc",
    "grpc": "grpc",
    "xmlrpc": "xmlrpc",
}
LOADGEN_PROTO = {
    "rpcd": "json",
    "twisted": "json",
    "gevent": "json",
    "uvloop": "json",
    "mprpc": "msgpack",
}
INSTALL_HINT = {"mprpc": "bench/install_mprpc.sh .venv/bin/python"}
BASELINE = "twisted"
PAYLOAD = '"0123456789abcdef"'  # the 16-byte echo argument, as a JSON literal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_loadgen() -> tuple[Path | None, str]:
    """bench/loadgen.c compiled with `cc -O2` into a cache directory; (None, why) if it can't be."""
    source = BENCH / "loadgen.c"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc) on PATH"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rpcd-bench"
    binary = cache / f"loadgen-{digest}"
    if binary.exists():
        return binary, f"{binary} (cached)"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".loadgen-{digest}.{os.getpid()}"
    build = subprocess.run([cc, "-O2", "-o", str(tmp), str(source)], capture_output=True, text=True)
    if build.returncode != 0:
        return None, f"{cc} -O2 failed: {build.stderr.strip()[-500:]}"
    tmp.replace(binary)
    return binary, f"{binary} (built with {cc} -O2)"


@dataclass
class Server:
    """One server under test, running as a subprocess."""

    name: str
    kind: str  # rpcd, twisted, or a peer
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    workdir: Path | None = None
    pythonpath: Path = ROOT  # where its rpcd package (and bench.methods) are imported from

    def start(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir / self.name.replace(" ", "_").replace("-", "")
        self.workdir.mkdir()
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys([str(self.pythonpath), str(ROOT)]))
        )
        if self.kind == "rpcd":
            argv = [
                TWISTD,
                "-n",
                "--pidfile=",
                "rpcd",
                "--listen",
                f"tcp:{self.port}:interface=127.0.0.1:backlog=1024",
                "--methods",
                "bench.methods",
                *self.args,
            ]
        else:
            argv = [sys.executable, str(BENCH / "servers.py"), self.kind, str(self.port)]
        self.proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=(self.workdir / "out.txt").open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return (self.workdir / "out.txt").read_text(errors="replace")[-3000:]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tree(self) -> list[int]:
        """The server's pid and every descendant's (a supervisor's workers), found in /proc."""
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(parents.get(pid, ()))
        return found

    def tree_cpu_seconds(self, pids: list[int]) -> float:
        """User plus system CPU time used so far by `pids` (those still running)."""
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def connections_held(self, pids: list[int]) -> list[int]:
        """How many established connections to the server's port each of `pids` holds."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == self.port:
                    inodes.add(f"socket:[{cols[9]}]")
        counts = []
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                counts.append(sum(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds))
            except OSError:  # gone meanwhile, or a descriptor closed between the two calls
                counts.append(0)
        return counts

    def wait_workers(self, count: int, timeout: float = 60.0) -> None:
        """Under --processes: wait until `count` distinct workers have answered rpc.stats."""
        seen: set[int] = set()
        held = []  # kept open, so the next connection is more likely to reach another worker
        deadline = time.monotonic() + timeout
        try:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name}: {len(seen)} of {count} workers answered within "
                        f"{timeout} s:\n{self.output()}"
                    )
                left = max(1.0, deadline - time.monotonic())
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=left)
                held.append(sock)
                body = b'{"jsonrpc":"2.0","method":"rpc.stats","id":1}'
                sock.sendall(len(body).to_bytes(4, "big") + body)
                size = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big")
                reply = json.loads(sock.recv(size, socket.MSG_WAITALL))
                seen.add(reply["result"]["process"]["pid"])
                if len(held) > 20:
                    held.pop(0).close()
                    time.sleep(0.05)
        finally:
            for sock in held:
                sock.close()

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_clients(specs: list[dict], timeout: float) -> list:
    """Start one client process per spec, let them all go at once, return their results."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "clients.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if '"ready"' not in line:
                raise RuntimeError(f"a client failed to start: {line!r}")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        if specs[0]["mode"] == "idle":
            return procs  # the caller measures, then closes their stdin
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"a client failed (exit {proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1])["result"])
        return results
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise


@dataclass
class Row:
    scenario: str
    server: str
    figure: float | None
    unit: str
    text: str = ""  # shown instead of the figure (a skip reason, p50/p99 pair)
    higher_is_better: bool = True
    compare: bool = True  # whether a ratio to the baseline means anything
    baseline: bool = False  # the row the scenario's other rows are compared with


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="rpcd-bench-"))
        self.servers: list[Server] = []
        self.dedicated_servers: list[Server] = []
        self.rpcd: Server | None = None  # the variant the targets hold for
        self.loadgen: Path | None = None
        self.loadgen_cpu: dict[str, float] = {}  # the load generator's own CPU per call, max
        self.usage = ""  # `twistd rpcd --help`
        self.several: list[Server] = []  # h's --processes 1 and 2

    # -- set-up ------------------------------------------------------------------------------

    def plan(self) -> None:
        args = self.args
        self.loadgen, how = build_loadgen()
        if self.loadgen is None:
            self.notes.append(
                f"load generator: skipped ({how}); rpcd and the ceiling are "
                "driven by Python raw-socket clients, gevent/uvloop/mprpc not run"
            )
        else:
            self.notes.append(f"load generator: {how}")
        usage = subprocess.run([TWISTD, "rpcd", "--help"], capture_output=True, text=True)
        self.usage = usage.stdout
        self.servers.append(Server("rpcd", "rpcd"))
        if "--no-access-log" in usage.stdout:
            self.servers.append(Server("rpcd --no-access-log", "rpcd", ["--no-access-log"]))
        else:
            self.notes.append(
                "rpcd has no --no-access-log option (no access log yet): one rpcd variant runs"
            )
        self.rpcd = self.servers[-1]
        if args.compare_rpcd:
            # The older rpcd in every variant this one runs (with and without the access
            # log), so each before/after pair shares its settings.
            for variant in [s for s in self.servers if s.kind == "rpcd"]:
                name = variant.name.replace("rpcd", f"rpcd@{args.compare_rpcd.name}", 1)
                other = Server(name, "rpcd", list(variant.args))
                other.pythonpath = args.compare_rpcd.resolve()
                self.servers.append(other)
        self.servers.append(Server(BASELINE, BASELINE))
        for name, module in PEERS.items():
            if name not in args.servers:
                continue
            if name in LOADGEN_PROTO and self.loadgen is None:
                self.notes.append(f"{name}: skipped, it needs the load generator")
                continue
            if importlib.util.find_spec(module) is None:
                hint = INSTALL_HINT.get(name, "pip install -e '.[bench]'")
                self.notes.append(f"{name}: skipped, not installed ({hint})")
                continue
            self.servers.append(Server(name, name))

    def raise_open_files(self, needed: int) -> int:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            self.notes.append(
                f"open-file limit raised from {soft} to {target} (servers and clients inherit it)"
            )
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return soft

    def dedicated(self, scenario: str, *args: str) -> Server:
        """A fresh rpcd for one scenario, with the limits that scenario needs raised."""
        server = Server(f"{self.rpcd.name} ({scenario})", "rpcd", [*self.rpcd.args, *args])
        self.notes.append(f"{scenario} runs its own rpcd with {' '.join(server.args)}")
        self.dedicated_servers.append(server)
        self.start([server])
        return server

    def fresh_baseline(self, scenario: str) -> Server:
        """A fresh ceiling for c and d: cold, and its memory not grown by a and b."""
        server = Server(f"{BASELINE} ({scenario})", BASELINE)
        self.dedicated_servers.append(server)
        self.start([server])
        return server

    def start(self, servers: list[Server]) -> None:
        for server in servers:
            server.start(self.workdir)
        for server in servers:
            server.wait_ready()

    def stop(self) -> None:
        for server in self.servers + self.dedicated_servers:
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- load --------------------------------------------------------------------------------

    def drive(self, server: Server, *options: str, timeout: float = 120) -> dict:
        """One run of the load generator against `server`; its JSON result."""
        argv = [
            str(self.loadgen),
            "--port",
            str(server.port),
            "--cpu-pid",
            str(server.proc.pid),
            "--proto",
            LOADGEN_PROTO[server.kind],
            "--warmup",
            str(self.args.warmup),
            *options,
        ]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"loadgen against {server.name} failed: {run.stderr.strip()}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    def call_options(self) -> list[str]:
        if self.args.method == "ping":
            return ["--method", "ping", "--arg", '"pong"']
        return ["--method", "echo", "--arg", PAYLOAD]

    def rate(self, server: Server, inflight: int) -> tuple[float, float]:
        """Calls/s, and the server's CPU time per call in microseconds."""
        args = self.args
        if self.loadgen is not None and server.kind in LOADGEN_PROTO:
            result = self.drive(
                server,
                "--connections",
                str(args.clients),
                "--inflight",
                str(inflight),
                "--duration",
                str(args.duration),
                *self.call_options(),
                timeout=args.duration + 60,
            )
            if result["errors"]:
                raise RuntimeError(f"{server.name}: {result['errors']} calls failed")
            key = f"{inflight} in flight"
            own = result["loadgen_cpu_us_per_call"]
            self.loadgen_cpu[key] = max(self.loadgen_cpu.get(key, 0.0), own)
            return result["calls_per_s"], result["cpu_us_per_call"]
        # Python client processes: the peers' own libraries, or no C compiler.
        spec = {
            "mode": "rate",
            "kind": server.kind,
            "port": server.port,
            "duration": args.duration,
            "inflight": inflight,
            "method": args.method,
        }
        cpu = server.cpu_seconds()
        counts = run_clients([spec] * args.clients, timeout=args.duration + 60)
        cpu = server.cpu_seconds() - cpu
        calls = sum(counts)
        return calls / args.duration, cpu / max(calls, 1) * 1e6

    def throughput(self, scenario: str, inflight: int, servers: list[Server]) -> dict[str, float]:
        runs: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        for _ in range(self.args.repeat):  # alternate servers, so each sees the same machine
            for server in servers:
                runs[server.name].append(self.rate(server, inflight))
        figures = {}
        for server in servers:
            values = runs[server.name]
            rate = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            figures[server.name] = rate
            client = (
                ""
                if self.loadgen is not None and server.kind in LOADGEN_PROTO
                else ", Python clients"
            )
            self.rows.append(
                Row(
                    scenario,
                    server.name,
                    rate,
                    "calls/s",
                    f"{rate:,.0f} calls/s ({cpu:.1f} µs server CPU/call{client})",
                    baseline=server.kind == BASELINE,
                )
            )
        return figures

    # -- scenarios ---------------------------------------------------------------------------

    def scenario_a(self) -> dict[str, float]:
        call = "16-byte echo" if self.args.method == "echo" else "ping"
        label = f"a. {self.args.clients} conns, 1 in flight, {call}"
        return self.throughput(label, 1, self.servers)

    def loaded(self) -> list[Server]:
        """The servers the load generator drives (all but the Python-client peers)."""
        if self.loadgen is None:
            return [s for s in self.servers if s.kind in ("rpcd", BASELINE)]
        return [s for s in self.servers if s.kind in LOADGEN_PROTO]

    def scenario_b(self) -> dict[str, float]:
        label = f"b. {self.args.clients} conns, {self.args.pipeline} pipelined"
        return self.throughput(label, self.args.pipeline, self.loaded())

    def scenario_c(self, rpcd: Server, baseline: Server) -> None:
        calls = self.args.concurrent
        connections = max(1, calls // 100)
        label = f"c. {calls:,} concurrent calls sleeping 1 s"
        for server in (rpcd, baseline):
            # Twice: rpcd starts its workers on demand in the first burst (cold) and keeps
            # them for the second (warm).
            if self.loadgen is not None:
                options = [
                    "--once",
                    "--connections",
                    str(connections),
                    "--inflight",
                    str(calls // connections),
                    "--method",
                    "sleep",
                    "--arg",
                    "1.0",
                    "--expect",
                    '"result"',
                ]
                cold_run, warm_run = self.drive(server, *options), self.drive(server, *options)
                cold, warm = cold_run["seconds"], warm_run["seconds"]
                cpu = cold_run["cpu_us_per_call"]
                text = f"{cold:.2f} s cold, {warm:.2f} s warm ({cpu:.1f} µs server CPU/call cold)"
            else:
                spec = {
                    "mode": "concurrent",
                    "port": server.port,
                    "calls": calls,
                    "connections": connections,
                    "seconds": 1.0,
                }
                [cold] = run_clients([spec], timeout=180)
                [warm] = run_clients([spec], timeout=180)
                text = f"{cold:.2f} s cold, {warm:.2f} s warm"
            self.rows.append(
                Row(
                    label,
                    server.name,
                    cold,
                    "s wall",
                    text,
                    higher_is_better=False,
                    baseline=server is baseline,
                )
            )

    def scenario_d(self, rpcd: Server, baseline: Server) -> None:
        conns = self.args.idle
        label = f"d. {conns:,} idle connections"
        for server in (rpcd, baseline):
            before = server.rss_mb()
            fds = server.open_fds()
            spec = {"mode": "idle", "port": server.port, "connections": conns}
            procs = run_clients([spec], timeout=120)
            try:
                # The client has connected them all; wait until the server's count settles.
                deadline = time.monotonic() + 30
                held, last = server.open_fds() - fds, -1
                while (held != last or held < conns - 10) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    held, last = server.open_fds() - fds, held
                rss = server.rss_mb()
            finally:
                for proc in procs:
                    proc.stdin.close()
                    proc.wait(60)
            per = (rss - before) * 1024 / max(held, 1)
            self.rows.append(
                Row(
                    label,
                    server.name,
                    per,
                    "KB/conn",
                    f"{per:.2f} KB per connection ({rss - before:+.0f} MB RSS, "
                    f"{before:.0f} MB before; {held:,} held)",
                    higher_is_better=False,
                    baseline=server is baseline,
                )
            )

    def scenario_e(self) -> None:
        label = "e. getlog 1,000 lines, 1 MiB vs 1 GiB log"
        script = BENCH / "getlog.py"
        if not self._has_method(self.rpcd, "getlog"):
            self.rows.append(Row(label, self.rpcd.name, None, "", "skipped: rpcd has no getlog"))
            return
        if not script.exists():
            self.rows.append(Row(label, self.rpcd.name, None, "", "skipped: no bench/getlog.py"))
            return
        argv = [sys.executable, str(script), "--repeat", str(self.args.getlog_repeat)]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, cwd=self.workdir
        ).stdout
        medians = [line for line in out.splitlines() if line.startswith("getlog ")]
        ratio = [line for line in out.splitlines() if line.startswith("ratio")]
        text = "; ".join(m.split(": ", 1)[1].split(",")[0] for m in medians)
        figure = float(ratio[0].rsplit(" ", 1)[1]) if ratio else None
        self.rows.append(
            Row(
                label,
                self.rpcd.name,
                figure,
                "x (1 GiB / 1 MiB)",
                f"{text}; ratio {figure}",
                higher_is_better=False,
                compare=False,
            )
        )

    def _has_method(self, server: Server, name: str) -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            body = b'{"jsonrpc":"2.0","method":"rpc.methods","id":1}'
            sock.sendall(len(body).to_bytes(4, "big") + body)
            size = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big")
            reply = json.loads(sock.recv(size, socket.MSG_WAITALL))
        return any(m["name"] == name for m in reply.get("result", []))

    def scenario_f(self, peak: float, where: str) -> None:
        args = self.args
        rate = peak * args.f_fraction
        label = f"f. latency at {rate:,.0f} calls/s ({args.f_fraction:g} of rpcd's {where} peak)"
        for server in [s for s in self.servers if s.kind in ("rpcd", BASELINE)]:
            if self.loadgen is not None:
                result = self.drive(
                    server,
                    "--connections",
                    str(args.clients),
                    "--rate",
                    str(rate),
                    "--duration",
                    str(args.duration),
                    *self.call_options(),
                    timeout=args.duration + 60,
                )
                p50, p99 = result["p50_us"] / 1000, result["p99_us"] / 1000
                cpu = f", {result['cpu_us_per_call']:.1f} µs server CPU/call"
                if p50 > 100:  # a median 100 ms late: the server did not keep up with the rate
                    cpu += "; fell behind the offered rate"
            else:
                spec = {
                    "mode": "latency",
                    "port": server.port,
                    "rate": rate / args.clients,
                    "duration": args.duration,
                }
                results = run_clients([spec] * args.clients, timeout=args.duration + 60)
                latencies = sorted(x for r in results for x in r)
                p50 = latencies[len(latencies) // 2] * 1000
                p99 = latencies[int(len(latencies) * 0.99)] * 1000
                cpu = ""
            self.rows.append(
                Row(
                    label,
                    server.name,
                    p99 / p50,
                    "p99/p50",
                    f"p50 {p50:.3f} ms, p99 {p99:.3f} ms (p99 = {p99 / p50:.1f}x p50{cpu})",
                    higher_is_better=False,
                    baseline=server.kind == BASELINE,
                )
            )

    def scenario_g(self) -> None:
        """The blocking client's own figures against rpcd: Python clients by necessity."""
        args = self.args
        label = "g. blocking client vs raw socket, 1 process"
        server = self.rpcd
        modes = [
            ("raw-serial", "minimal raw-socket client, 1 caller", True),
            ("client-serial", "rpcd.client.Client, 1 caller", False),
            ("client-greenlets", f"rpcd.client.Client, {args.greenlets} greenlets", False),
        ]
        runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode, _, _ in modes}
        for _ in range(args.repeat):
            for mode, _, _ in modes:
                spec = {
                    "mode": mode,
                    "port": server.port,
                    "duration": args.duration,
                    "greenlets": args.greenlets,
                    "method": args.method,
                }
                cpu = server.cpu_seconds()
                [calls] = run_clients([spec], timeout=args.duration + 60)
                cpu = server.cpu_seconds() - cpu
                runs[mode].append((calls / args.duration, cpu / max(calls, 1) * 1e6))
        for mode, name, is_base in modes:
            rate = statistics.median(v[0] for v in runs[mode])
            cpu = statistics.median(v[1] for v in runs[mode])
            self.rows.append(
                Row(
                    label,
                    name,
                    rate,
                    "calls/s",
                    f"{rate:,.0f} calls/s ({cpu:.1f} µs server CPU/call)",
                    baseline=is_base,
                )
            )

    def tree_rate(self, server: Server, connections: int, inflight: int) -> tuple:
        """Calls/s, the CPU per call (µs) of the server's whole process tree (a supervisor
        and its workers), the load generator's own CPU per call, and how the connections
        were split among the processes (e.g. "3+5")."""
        args = self.args
        argv = [
            str(self.loadgen),
            "--port",
            str(server.port),
            "--proto",
            "json",
            "--warmup",
            str(args.warmup),
            "--connections",
            str(connections),
            "--inflight",
            str(inflight),
            "--duration",
            str(args.duration),
            *self.call_options(),
        ]
        pids = server.tree()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # The load generator opens its window `warmup` s after connecting (a few ms):
            # the CPU is sampled over the same window from here.
            start = time.monotonic()
            time.sleep(args.warmup)
            cpu = server.tree_cpu_seconds(pids)
            split = [n for n in server.connections_held(pids) if n]
            time.sleep(max(0.0, start + args.warmup + args.duration - time.monotonic()))
            cpu = server.tree_cpu_seconds(pids) - cpu
            out, err = proc.communicate(timeout=args.duration + 60)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen against {server.name} failed: {err.strip()}")
        result = json.loads(out.strip().splitlines()[-1])
        if result["errors"]:
            raise RuntimeError(f"{server.name}: {result['errors']} calls failed")
        calls = max(result["calls"], 1)
        own = result["loadgen_cpu_us_per_call"]
        return result["calls_per_s"], cpu / calls * 1e6, own, "+".join(map(str, sorted(split)))

    def h_labels(self) -> list[tuple[str, int]]:
        conns = self.args.h_connections
        return [
            (f"h. {conns} conns, 1 in flight, --processes 2 vs 1", 1),
            (
                f"h. {conns} conns, {self.args.pipeline} pipelined, --processes 2 vs 1",
                self.args.pipeline,
            ),
        ]

    def start_several(self) -> str | None:
        """h's two rpcds (--processes 1 and 2), started beside the others so their start-up
        overlaps; None, or why h cannot run."""
        if self.loadgen is None:
            return "no load generator"
        if "--processes" not in self.usage:
            return "rpcd has no --processes"
        self.several = [
            Server(f"rpcd --processes {n}", "rpcd", ["--no-access-log", "--processes", str(n)])
            for n in (1, 2)
        ]
        self.dedicated_servers.extend(self.several)
        for server in self.several:
            server.start(self.workdir)
        return None

    def scenario_h(self, why_not: str | None) -> None:
        """--processes 2 against --processes 1, both without the access log, one run."""
        args = self.args
        if why_not is not None:
            for label, _ in self.h_labels():
                self.rows.append(Row(label, "rpcd", None, "", f"skipped: {why_not}"))
            return
        servers = self.several
        for server in servers:
            server.wait_ready()
        servers[1].wait_workers(2)
        self.notes.append(
            "h: server CPU is summed over the supervisor and its workers (/proc), sampled "
            "over the load generator's window"
        )
        for label, inflight in self.h_labels():
            runs: dict[str, list[tuple]] = {s.name: [] for s in servers}
            for _ in range(args.repeat):  # alternate, so both see the same machine
                for server in servers:
                    runs[server.name].append(self.tree_rate(server, args.h_connections, inflight))
            for server in servers:
                rate, cpu, own = (
                    statistics.median(v[i] for v in runs[server.name]) for i in range(3)
                )
                processes = len(server.tree())
                # Each window's rate and split: the shared accept queue may give one worker
                # every connection of a burst, and the median alone would hide it.
                splits = ", ".join(f"{v[0] / 1000:.1f}k {v[3]}" for v in runs[server.name])
                self.rows.append(
                    Row(
                        label,
                        server.name,
                        rate,
                        "calls/s",
                        f"{rate:,.0f} calls/s ({cpu:.1f} µs server CPU/call over {processes} "
                        f"process{'es' if processes > 1 else ''}; "
                        f"load generator {own:.1f} µs/call"
                        + (
                            f"; windows, connections per worker: {splits})"
                            if processes > 1
                            else ")"
                        ),
                        baseline=server is servers[0],
                    )
                )
        for server in servers:
            server.stop()

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        wanted = set(args.scenarios)
        self.plan()
        needs_many = wanted & {"c", "d"}
        if needs_many:
            limit = self.raise_open_files(max(args.idle, args.concurrent // 100) + 1000)
            if limit < args.idle + 200:
                args.idle = limit - 200
                self.notes.append(
                    f"d holds {args.idle} connections: the hard open-file limit is {limit}"
                )
        try:
            why_not_h = self.start_several() if "h" in wanted else None
            self.start(self.servers)
            peaks: dict[str, float] = {}  # rpcd's peak rate in a and in b
            if "a" in wanted:
                peaks["a"] = self.scenario_a()[self.rpcd.name]
            if "b" in wanted:
                peaks["b"] = self.scenario_b()[self.rpcd.name]
            if "c" in wanted:
                server = self.dedicated(
                    "c",
                    "--workers",
                    str(args.concurrent),
                    "--queue-size",
                    str(max(10000, args.concurrent)),
                    # Every worker the burst needs, started before it (README: --workers-prestart).
                    "--workers-prestart",
                    str(args.concurrent),
                )
                fresh = self.fresh_baseline("c")
                self.scenario_c(server, fresh)
                server.stop()
                fresh.stop()
            if "d" in wanted:
                server = self.dedicated("d", "--max-connections", str(args.idle + 100))
                fresh = self.fresh_baseline("d")
                self.scenario_d(server, fresh)
                server.stop()
                fresh.stop()
            if "e" in wanted:
                if args.quick:
                    self.rows.append(
                        Row(
                            "e. getlog 1,000 lines, 1 MiB vs 1 GiB log",
                            self.rpcd.name,
                            None,
                            "",
                            "skipped in --quick (builds a 1 GiB file)",
                        )
                    )
                else:
                    self.scenario_e()
            if "f" in wanted:
                if not peaks:
                    peaks["a"] = self.rate(self.rpcd, 1)[0]
                for where, peak in peaks.items():
                    self.scenario_f(peak, "1-in-flight (a)" if where == "a" else "pipelined (b)")
            if "g" in wanted:
                self.scenario_g()
            if "h" in wanted:
                self.scenario_h(why_not_h)
        finally:
            self.stop()
        self.report()

    def report(self) -> None:
        args = self.args
        print(
            f"\nrpcd benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"{args.clients} connections, {args.duration:g} s per measurement "
            f"(after {args.warmup:g} s of warm-up), median of {args.repeat}"
        )
        print(
            "note: a loads every server; b, f the ones the load generator speaks to; c, d "
            "rpcd and the ceiling; g the rpcd client against rpcd; h rpcd --processes 2 "
            "against --processes 1"
        )
        for note in self.notes:
            print(f"note: {note}")
        for key, cpu in self.loadgen_cpu.items():
            print(f"note: the load generator's own CPU per call, {key}: at most {cpu:.1f} µs")
        plain = {r.scenario: r.figure for r in self.rows if r.server == "rpcd" and r.figure}
        for row in self.rows:
            if (
                row.server == "rpcd --no-access-log"
                and row.figure
                and row.scenario in plain
                and row.unit == "calls/s"
            ):
                cost = 1 - plain[row.scenario] / row.figure
                print(f"note: access-log cost in {row.scenario[:2]} {cost:.0%} of calls/s")
        print()
        print("| scenario | server | figure | vs baseline |")
        print("| --- | --- | --- | --- |")
        baselines = {r.scenario: r.figure for r in self.rows if r.baseline}
        for row in self.rows:
            shown, ratio = row.text, ""
            if row.figure is not None:
                if not shown:
                    number = f"{row.figure:,.0f}" if row.figure >= 100 else f"{row.figure:.3g}"
                    shown = f"{number} {row.unit}"
                base = baselines.get(row.scenario)
                if not row.compare:
                    ratio = ""
                elif row.baseline:
                    ratio = "baseline"
                elif base:
                    ratio = f"{row.figure / base:.2f}x"
            print(f"| {row.scenario} | {row.server} | {shown} | {ratio} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        default="a,b,c,d,e,f,g,h",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="which scenarios to run, e.g. a,b (default: a,b,c,d,e,f,g,h)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(PEERS),
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"which other servers to compare ({', '.join(PEERS)}; default: "
        "all installed; none: only rpcd and the Twisted ceiling)",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.3,
        help="seconds of load before each measurement's window opens",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measurements per server (median)")
    parser.add_argument("--clients", type=int, default=4, help="connections in a, b, f")
    parser.add_argument(
        "--pipeline", type=int, default=50, help="calls in flight per connection in b"
    )
    parser.add_argument(
        "--h-connections",
        type=int,
        default=8,
        help="connections in h (--processes 2 vs 1)",
    )
    parser.add_argument(
        "--greenlets", type=int, default=100, help="greenlets sharing one rpcd client in g"
    )
    parser.add_argument(
        "--method",
        choices=("echo", "ping"),
        default="echo",
        help="the call in a, b and f (peers: always echo)",
    )
    parser.add_argument("--concurrent", type=int, default=10000, help="sleeping calls in c")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections in d")
    parser.add_argument("--getlog-repeat", type=int, default=20, help="getlog calls per log in e")
    parser.add_argument(
        "--f-fraction",
        type=float,
        default=0.5,
        help="f's load as a fraction of rpcd's peak (a and b) rate",
    )
    parser.add_argument(
        "--compare-rpcd",
        type=Path,
        metavar="DIR",
        help="also run the rpcd package found in DIR (an older checkout, say) "
        "on the same load in a, b and f",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: 0.3 s measurements, 500 calls in c and connections in d",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat, args.warmup = 0.3, 1, 0.1
        args.concurrent, args.idle = 500, 500
    Harness(args).run()


if __name__ == "__main__":
    main()
