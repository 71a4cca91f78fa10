"""bench/run.py --quick runs end to end: servers start, clients load them, the table prints.

Speed is never asserted here; only that every scenario produced its row.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_prints_its_table():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--servers", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "| scenario | server | figure | vs baseline |" in lines
    rows = [line for line in lines if line.startswith("| ") and " | " in line[2:]]
    for scenario in ("a.", "b.", "c.", "d.", "e.", "f."):
        assert any(row.startswith(f"| {scenario}") for row in rows), (scenario, run.stdout)
    throughput = [row for row in rows if row.startswith("| a.")]
    assert any("| twisted |" in row and "calls/s" in row for row in throughput)
    assert any("| rpcd" in row and "calls/s" in row for row in throughput)
