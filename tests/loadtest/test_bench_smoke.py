"""loadtest/bench.py still runs end to end: a few seconds with the aiohttp load generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_run_measures_direct_and_through(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench.py"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["target"]): r for r in report["throughput"]}
    for scenario in ("small-openai", "small-anthropic", "stream50-openai", "stream50-anthropic"):
        for target in ("direct", "llmapi", "llmapi-noacct"):
            row = rows[(scenario, target)]
            assert row["requests"] > 0 and row["errors"] == 0, row
    assert {s["target"] for s in report["sequential"]} == {"direct", "llmapi", "llmapi-noacct"}
    assert any(t["target"].startswith("throughput small-openai") for t in report["targets"])


def test_bench_quick_run_with_the_shared_store_row(tmp_path: Path) -> None:
    """`--shared-store`: the gateway on a real PostgreSQL + Redis, side by side with the
    SQLite + memory one, with the comparison in the report."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "bench.py"), "--quick", "--shared-store",
         "--no-accounting-compare", "--scenarios", "small-openai", "stream50-anthropic",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["target"]): r for r in report["throughput"]}
    for scenario in ("small-openai", "stream50-anthropic"):
        for target in ("llmapi", "llmapi-pg-redis"):
            row = rows[(scenario, target)]
            assert row["requests"] > 0 and row["errors"] == 0, row
    shared = {c["scenario"]: c for c in report["extra"]["shared_store"]}
    assert set(shared) == {"small-openai", "stream50-anthropic"}
    assert all(c["throughput_ratio"] and c["added_seq_p50_ms"] is not None
               for c in shared.values())
    assert "Shared store" in done.stdout and "indicative only" in done.stdout
