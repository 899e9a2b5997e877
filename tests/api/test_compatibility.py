"""The compatibility matrix (docs/compatibility.md) is what a run of its checks produces."""

from __future__ import annotations

from pathlib import Path

from tests.compat import CHECKS, DOC, render, run_matrix

# Cells that must pass on every row where the vendor offers the feature.
REQUIRED = tuple(CHECKS)


async def test_matrix_matches_the_committed_file_and_every_cell_passes(tmp_path: Path) -> None:
    matrix = await run_matrix(tmp_path)
    failures = [f"{vendor}/{protocol}/{name}: {note}"
                for (vendor, protocol), results in matrix.items()
                for name, (ok, note) in results.items() if ok is False and name in REQUIRED]
    assert failures == []
    assert DOC.read_text() == render(matrix), \
        "docs/compatibility.md is stale: run `python -m tests.compat --write`"
