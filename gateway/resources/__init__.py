"""The files the gateway reads at run time: SQL queries and migrations, templates, static.
In the repository they are the top-level sql/, templates/ and static/ folders; in a wheel
they are package data under gateway/resources/ (pyproject.toml maps one onto the other)."""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

NAMES = ("sql", "templates", "static")


def resource_dir(name: str) -> Path:
    """The folder `name` (one of NAMES), installed or in a checkout.

    Jinja's loader and aiohttp's static route need real folders, so the installed copy
    must be a plain directory (a zipped install is refused with a clear error).
    """
    if name not in NAMES:
        raise ValueError(f"unknown resource folder {name!r}")
    packaged = files(__name__).joinpath(name)
    if packaged.is_dir():
        with as_file(packaged) as path:
            if Path(path).is_dir():
                return Path(path)
        raise RuntimeError(f"gateway resources {name!r} are not a folder on disk; "
                           "install llmapi unzipped (pip install .)")
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise RuntimeError(f"gateway resources {name!r} not found: neither {packaged} nor "
                       f"{checkout} exists (is the package installed completely?)")
