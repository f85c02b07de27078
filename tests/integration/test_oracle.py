"""Oracle index prices over the real server: the route, who may call it, where the
index shows (assets, ticker, WebSocket), staleness in real time, and restarts."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from exchange_client import ApiError, AsyncExchangeClient, ExchangeWebSocket
from tests.integration.conftest import ROOT, MakeTrader, start_server_with_markets
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

ORACLE_KEY, ORACLE_SECRET = "oracle-test-key", "oracle-test-secret-0123456789abcdef"
BTC = "BTC-USDC"


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server whose index prices go stale after 1 s, with an oracle-only key."""
    tmp = tmp_path_factory.mktemp(f"oracle-{request.param}")
    env = {"EXCHANGE_ORACLE_KEY": ORACLE_KEY, "EXCHANGE_ORACLE_SECRET": ORACLE_SECRET}
    yield from start_server_with_markets(request.param, tmp, {"oracle_stale_s": 1}, env)


@pytest.fixture
async def oracle(server: ServerProcess) -> AsyncIterator[AsyncExchangeClient]:
    async with AsyncExchangeClient(server.base_url, ORACLE_KEY, ORACLE_SECRET) as client:
        yield client


def index_of(assets: dict[str, Any], symbol: str) -> Any:
    return next(a["index"] for a in assets["assets"] if a["symbol"] == symbol)


async def test_oracle_key_sets_prices_seen_in_assets_ticker_and_stream(
    server: ServerProcess, oracle: AsyncExchangeClient
) -> None:
    ws = await ExchangeWebSocket(request_timeout=5).connect(server.ws_url)
    try:
        await ws.subscribe([f"ticker:{BTC}"])
        before = int(time.time() * 1000)
        got = await oracle.set_oracle_prices({"BTC": "65000.5", "ETH": "3000"})
        assert set(got["prices"]) == {"BTC", "ETH"}
        btc = got["prices"]["BTC"]
        assert (btc["price"], btc["stale"]) == ("65000.5", False)
        assert got["prices"]["ETH"]["price"] == "3000"
        assert before - 1000 <= btc["ts"] <= int(time.time() * 1000) + 1000
        assets = await oracle.assets()
        assert index_of(assets, "BTC") == {"price": "65000.5", "ts": btc["ts"], "stale": False}
        assert index_of(assets, "SOL") is None and index_of(assets, "USDC") is None
        ticker = await oracle.ticker(BTC)
        assert (ticker["index"], ticker["index_ts"]) == ("65000.5", btc["ts"])
        msg = await ws.recv(timeout=5)
        assert (msg["type"], msg["market"], msg["index"]) == ("ticker", BTC, "65000.5")
    finally:
        await ws.close()


@pytest.mark.parametrize(
    ("prices", "status", "code"),
    [
        ({"SOL": "151", "USDC": "1"}, 400, "UNKNOWN_ASSET"),
        ({"SOL": "151", "DOGE": "0.1"}, 400, "UNKNOWN_ASSET"),
        ({"SOL": "151", "BTC": "0"}, 400, "INVALID_PRICE"),
        ({"SOL": "151", "BTC": "-1"}, 400, "INVALID_PRICE"),
        ({"SOL": "151", "BTC": "1.0000001"}, 400, "INVALID_PRICE"),
        ({"SOL": "151", "BTC": "abc"}, 422, "VALIDATION_ERROR"),
        ({}, 422, "VALIDATION_ERROR"),
    ],
)
async def test_bad_prices_are_refused_and_change_nothing(
    oracle: AsyncExchangeClient, prices: dict[str, str], status: int, code: str
) -> None:
    await oracle.set_oracle_prices({"SOL": "150"})
    before = index_of(await oracle.assets(), "SOL")
    with pytest.raises(ApiError) as err:
        await oracle.set_oracle_prices(prices)  # SOL with a bad one: all or none
    assert (err.value.status, err.value.code) == (status, code)
    assert index_of(await oracle.assets(), "SOL") == before


async def test_only_oracle_and_admin_keys_may_post_prices(
    server: ServerProcess, oracle: AsyncExchangeClient, traders: MakeTrader
) -> None:
    trader = await traders()
    with pytest.raises(ApiError) as err:
        await trader.client.set_oracle_prices({"BTC": "1"})
    assert (err.value.status, err.value.code) == (403, "PERMISSION_DENIED")
    with pytest.raises(ApiError) as err:  # the oracle key is for prices only
        await oracle.create_account("nope")
    assert (err.value.status, err.value.code) == (403, "PERMISSION_DENIED")
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        got = await admin.set_oracle_prices({"ETH": "3100.25"})
    assert got["prices"]["ETH"]["price"] == "3100.25"


async def test_account_health_at_the_index(
    oracle: AsyncExchangeClient, traders: MakeTrader
) -> None:
    """1,000 USDC + 0.2 BTC at 50,000 (numbers worked out in tests/test_risk.py)."""
    trader = await traders({"USDC": "1000", "BTC": "0.2"})
    await oracle.set_oracle_prices({"BTC": "50000"})
    account = await trader.client.account()
    assert account["health"] == {
        "initial": "9756",
        "maintenance": "10154",
        "liquidation_end": "9955",
        "equity": "11000",
    }
    market = await trader.client.request("GET", f"/v1/markets/{BTC}", signed=False)
    assert market["risk"] == {
        "initial": "0.12",
        "maintenance": "0.08",
        "liquidation_end": "0.1",
        "slippage": "0.005",
        "supply_haircut": "0",
    }


async def _wait_stale(client: AsyncExchangeClient, symbol: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        index = index_of(await client.assets(), symbol)
        if index["stale"]:
            return index
        assert time.monotonic() < deadline, index
        await asyncio.sleep(0.1)


async def test_index_goes_stale_on_time_and_survives_a_restart(
    server: ServerProcess, oracle: AsyncExchangeClient
) -> None:
    got = await oracle.set_oracle_prices({"BTC": "64000"})
    set_ts = got["prices"]["BTC"]["ts"]
    stale = await _wait_stale(oracle, "BTC")
    assert stale == {"price": "64000", "ts": set_ts, "stale": True}
    assert int(time.time() * 1000) - set_ts >= 1000
    ticker = await oracle.ticker(BTC)
    assert (ticker["index"], ticker["index_stale"]) == ("64000", True)
    perp = await oracle.request("GET", "/v1/markets/BTC-PERP", signed=False)
    assert perp["state"] == "reduce_only"  # a stale index: the perp trades reduce-only
    assert (await oracle.ticker("BTC-PERP"))["state"] == "reduce_only"
    server.stop()
    server.start()
    async with AsyncExchangeClient(server.base_url, ORACLE_KEY, ORACLE_SECRET) as again:
        assert index_of(await again.assets(), "BTC") == stale
        fresh = await again.set_oracle_prices({"BTC": "64100"})
        assert fresh["prices"]["BTC"]["stale"] is False
        assert index_of(await again.assets(), "BTC")["price"] == "64100"
        perp = await again.request("GET", "/v1/markets/BTC-PERP", signed=False)
        assert perp["state"] == "open"


async def test_oracle_sim_posts_a_seeded_walk(
    server: ServerProcess, oracle: AsyncExchangeClient
) -> None:
    env = {**server.env, "EXCHANGE_ORACLE_KEY": ORACLE_KEY, "EXCHANGE_ORACLE_SECRET": ORACLE_SECRET}
    cmd = [sys.executable, "-m", "app.cli", "oracle-sim", "--url", server.base_url,
           "--count", "3", "--interval", "0.05", "--seed", "11"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    posted = [json.loads(line) for line in out.decode().splitlines()]
    assert len(posted) == 3 and all(set(p) == {"BTC", "ETH", "SOL"} for p in posted)
    assert posted[0] != posted[1] != posted[2]
    assets = await oracle.assets()
    assert {s: Decimal(index_of(assets, s)["price"]) for s in ("BTC", "ETH", "SOL")} == {
        s: Decimal(p) for s, p in posted[-1].items()
    }
    assert err.decode().strip().endswith("posted 3 updates")
