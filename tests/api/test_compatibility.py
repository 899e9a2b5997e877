"""The compatibility matrix (docs/compatibility.md) is what a run of its checks produces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


async def test_docs_page_shows_the_measured_matrix(gateway_factory: Any) -> None:
    import aiohttp

    from gateway.reports.compatibility import load_matrix

    matrix = load_matrix()
    assert matrix is not None and matrix.columns[:3] == ("vendor", "protocol", "text")
    assert ("deepseek", "openai") in {row[:2] for row in matrix.rows}
    gw = await gateway_factory()
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/docs") as r:
        page = await r.text()
    assert r.status == 200 and 'id="compatibility"' in page and "openrouter" in page
    # the real CLI's version the matrix was checked with (tests/e2e/claude_code_results.json)
    assert matrix.claude_code.startswith("2.") and matrix.claude_code in page


def test_matrix_reader_takes_the_first_table_and_the_cli_line(tmp_path: Path) -> None:
    from gateway.reports.compatibility import load_matrix

    doc = tmp_path / "c.md"
    doc.write_text("# x\n\n| a | b |\n|---|---|\n| 1 | **no** |\n\n## CLI\n\n"
                   "Checked with Claude Code 9.9.9 (Claude Code) on 2030-01-02 (`run`): ...\n"
                   "- row: passed\n")
    matrix = load_matrix(doc)
    assert matrix is not None and matrix.rows == (("1", "no"),)
    assert (matrix.claude_code, matrix.claude_code_date) == ("9.9.9 (Claude Code)",
                                                             "2030-01-02")
    doc.write_text("| a |\n|---|\n| 1 |\n")
    assert load_matrix.__wrapped__(doc).claude_code == ""  # type: ignore[attr-defined]
