"""Schema migrations: `upgrade(url)` brings a database to the newest Alembic revision.

Rule owned here: the schema is changed only by the migrations in `migrations/`
(located next to the `app` package; there is no alembic.ini). Works from sync
code (the CLI) and, via `upgrade_async`, from inside a running event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.store.store import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply every pending migration to the database at `url` (blocking)."""
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), "head")


async def upgrade_async(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
