"""The package installs: a wheel built from this tree, installed into a fresh virtual
environment outside the checkout, serves a real SDK call (.ci/wheel_smoke.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.gateway import ROOT


@pytest.mark.slow
def test_the_wheel_installs_and_serves_outside_the_checkout() -> None:
    done = subprocess.run([sys.executable, str(ROOT / ".ci" / "wheel_smoke.py")],
                          capture_output=True, text=True, timeout=900, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wheel smoke test passed" in done.stdout


def test_every_package_is_listed_for_the_wheel() -> None:
    """pyproject lists packages by hand (package-dir maps the resource folders): a new
    package left out of that list would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("gateway", "web") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
