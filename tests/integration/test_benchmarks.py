"""The load benchmark (benchmarks/load.py) against the real app: a small run of every phase, so the one command
behind the closing note's numbers (`make load`) keeps working. Its numbers are read here, never asserted against
a time budget (performance is measured by the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_the_load_benchmark_holds_sessions_sweeps_a_rate_and_ends_every_session(app, tmp_path):
    out = tmp_path / "load.json"
    cmd = [
        sys.executable, "benchmarks/load.py", "--url", app.ws_url, "--token", app.token,
        "--idle", "40", "--hold-s", "2", "--connect-rate", "40", "--active", "8", "--rates", "1,2", "--step-s", "4",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert result["sessions_held"] == 40 and result["sessions_dropped"] == 0
    assert result["end_check"] == {"ended": 40, "failed": {}}
    steps = result["steps"]
    assert steps and steps[0]["rate_per_s"] == 1.0
    first = steps[0]["message_to_suggestion_ms"]
    assert first["n"] >= 1 and 0 < first["p50"] <= first["p95"] <= first["max"]
    assert not steps[0]["errors"]
    assert result["cost"]["sessions"] == 40 and result["cost"]["messages"] >= first["n"]
    assert "opening" in result and result["opening"]["opened"] == 40
