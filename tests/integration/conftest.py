"""Fixtures for tests against a real server: one server per module and backend.

`server` is parametrized over SQLite (always) and PostgreSQL (when
EXCHANGE_TEST_POSTGRES_URL is set; unreachable then means failure, not skip).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange_client import ApiError, AsyncExchangeClient
from tests import dbutil
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

_names = itertools.count(1)
ROOT = Path(__file__).resolve().parents[2]


def _database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'exchange.db'}"
        return
    base = dbutil.postgres_base_url()
    if base is None:
        pytest.skip(f"{dbutil.ENV_VAR} is not set")
    url = dbutil.create_database_sync(base)  # unreachable server: raises, the test fails
    try:
        yield url
    finally:
        dbutil.drop_database_sync(url)


def start_server(
    kind: str, tmp: Path, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    for url in _database(kind, tmp):
        server = ServerProcess(url, tmp / "data", extra_env)
        server.migrate()
        server.start()
        try:
            yield server
        finally:
            server.stop()


def start_server_with_markets(
    kind: str, tmp: Path, overrides: dict[str, Any], extra_env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """`start_server` with markets.example.json plus `overrides` as its markets file."""
    markets = json.loads((ROOT / "markets.example.json").read_text())
    markets.update(overrides)
    (tmp / "markets.json").write_text(json.dumps(markets))
    env = {"EXCHANGE_MARKETS": str(tmp / "markets.json"), **(extra_env or {})}
    yield from start_server(kind, tmp, env)


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def markets_server(name: str, overrides: dict[str, Any]) -> Any:
    """A module's `server` fixture: one server per backend whose markets file is
    markets.example.json plus `overrides` (e.g. fast funding or interest)."""

    @pytest.fixture(scope="module", params=BACKENDS)
    def server(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ServerProcess]:
        tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
        yield from start_server_with_markets(request.param, tmp, overrides)

    return server


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from start_server(request.param, tmp_path_factory.mktemp(f"srv-{request.param}"))


@pytest.fixture
async def admin(server: ServerProcess) -> AsyncIterator[AsyncExchangeClient]:
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as client:
        yield client


DEFAULT_DEPOSITS = {"USDC": "100000", "BTC": "2"}


class Trader:
    """An account with its client, created and funded through the operator API."""

    def __init__(self, info: dict[str, Any], client: AsyncExchangeClient) -> None:
        self.info = info
        self.client = client
        self.account_id: str = info["account_id"]
        self.api_key: str = info["api_key"]
        self.api_secret: str = info["api_secret"]


@pytest.fixture
async def make_trader(server: ServerProcess, admin: AsyncExchangeClient) -> AsyncIterator[Any]:
    made: list[Trader] = []

    async def make(deposits: dict[str, str] | None = None) -> Trader:
        info = await admin.create_account(f"trader-{next(_names)}")
        for asset, amount in (deposits or {}).items():
            await admin.deposit(
                info["account_id"], asset, amount, f"dep-{info['account_id']}-{asset}"
            )
        trader = Trader(
            info, AsyncExchangeClient(server.base_url, info["api_key"], info["api_secret"])
        )
        made.append(trader)
        return trader

    yield make
    for t in made:
        await t.client.aclose()


MakeTrader = Callable[..., Awaitable[Trader]]


@pytest.fixture
async def traders(make_trader: MakeTrader) -> AsyncIterator[MakeTrader]:
    """`make_trader` with default deposits that cancels its accounts' orders at the end."""
    made: list[Trader] = []

    async def make(deposits: dict[str, str] | None = None) -> Trader:
        trader = await make_trader(deposits=DEFAULT_DEPOSITS if deposits is None else deposits)
        made.append(trader)
        return trader

    yield make
    for trader in made:
        with contextlib.suppress(ApiError, httpx.HTTPError):
            await trader.client.cancel_all()
