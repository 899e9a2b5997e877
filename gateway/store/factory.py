"""Open the store the config names: the SQLite file by default, PostgreSQL when
`[database] url` (or `LLMAPI_DATABASE_URL`) is set."""

from __future__ import annotations

from gateway.config import Config
from gateway.store.base import Store
from gateway.store.postgres import open_postgres
from gateway.store.sqlite import open_database


async def open_store(config: Config) -> Store:
    """Open (connect) and migrate the configured store."""
    if config.database.postgres:
        return await open_postgres(config.database.url)
    return await open_database(config.database_path)


def describe(config: Config) -> str:
    """Where the data lives, for the start-up line (never the password)."""
    from gateway.store.postgres import redact

    if config.database.postgres:
        return f"postgresql {redact(config.database.url)}"
    return str(config.database_path)
