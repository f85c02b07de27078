"""Throwaway PostgreSQL databases for tests (async and sync-callable).

Rule owned here: with EXCHANGE_TEST_POSTGRES_URL set, a test that needs Postgres
gets its own fresh database and an unreachable server is an error (never a skip);
without the variable, Postgres tests are skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

ENV_VAR = "EXCHANGE_TEST_POSTGRES_URL"
T = TypeVar("T")


def postgres_base_url() -> str | None:
    return os.environ.get(ENV_VAR) or None


def _dsn(url: str, database: str | None = None) -> str:
    """SQLAlchemy URL -> plain libpq DSN for asyncpg."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin_connection(base_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_dsn(base_url), timeout=10)
    except asyncpg.InvalidCatalogNameError:
        return await asyncpg.connect(_dsn(base_url, "postgres"), timeout=10)


THROWAWAY_PREFIXES = ("exch_test_", "exch_bench_")


async def create_database(base_url: str, prefix: str = "exch_test_") -> str:
    """CREATE a database `<prefix><hex>` on the server of `base_url`; returns its URL."""
    assert prefix in THROWAWAY_PREFIXES, prefix
    name = f"{prefix}{secrets.token_hex(6)}"
    conn = await _admin_connection(base_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    name = make_url(url).database
    if not name or not name.startswith(THROWAWAY_PREFIXES):
        raise ValueError(f"refusing to drop {name!r}: not a throwaway test database")
    try:
        conn = await asyncpg.connect(_dsn(url, "postgres"), timeout=10)
    except asyncpg.InvalidCatalogNameError:
        conn = await asyncpg.connect(_dsn(url, "template1"), timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even if a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database_sync(base_url: str) -> str:
    return run_sync(create_database(base_url))


def drop_database_sync(url: str) -> None:
    run_sync(drop_database(url))
