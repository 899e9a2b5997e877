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
