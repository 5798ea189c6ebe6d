"""Shared by the benchmark scripts: latency percentiles as printed in their JSON, and printing that JSON."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

__all__ = ["percentiles", "emit"]


def percentiles(values: list[float], digits: int = 2) -> dict[str, float]:
    """n, p50, p95, p99, max and mean (nearest-rank on the sorted values); {"n": 0} when empty."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return round(ordered[k], digits)

    return {
        "n": len(ordered),
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "max": round(ordered[-1], digits),
        "mean": round(statistics.fmean(ordered), digits),
    }


def emit(result: dict[str, Any], out: Path | None) -> None:
    """The result as JSON on stdout (the only thing a benchmark prints there), and in ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
