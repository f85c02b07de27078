"""Shared fixtures: database URLs for SQLite (always) and PostgreSQL (when configured)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import app  # noqa: F401  (chooses the engine build before any test imports engine)
from app import native
from tests import dbutil


def pytest_report_header() -> str:
    return f"engine: {native.running()} ({native.reason})"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'exchange.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the server of EXCHANGE_TEST_POSTGRES_URL, dropped afterwards."""
    base = dbutil.postgres_base_url()
    if base is None:
        pytest.skip(f"{dbutil.ENV_VAR} is not set")
    url = dbutil.create_database_sync(base)  # an unreachable server raises: the test errors
    try:
        yield url
    finally:
        dbutil.drop_database_sync(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))
