"""Every test here runs against both upstream HTTP clients (`[server] upstream_client`)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["lean", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    return str(request.param)
