"""`exchange demo` (`make demo`): a live exchange on one laptop.

Starts the server (`exchange serve`, children log at warning) and the simulated
oracle (`exchange oracle-sim`) as child processes, then, in this process, a market
maker quoting every market (`exchange_client.market_maker`) over the WebSocket and a
taker that sends a small IOC order every couple of seconds so trades print. Both
bots get fresh accounts funded with demo money through the operator routes. Ctrl-C
(or `--seconds`) stops everything; quotes go with the maker's connection
(`cancel_on_disconnect`).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

from app.config import Settings
from app.runtime import admin_credentials
from exchange_client import ApiError, AsyncExchangeClient
from exchange_client.market_maker import MarketMaker, index_prices

DEMO_FUNDS = {"USDC": "50000000", "BTC": "200", "ETH": "4000", "SOL": "100000"}
TAKER_EVERY_S = 2.0


def _spawn(args: list[str], env: dict[str, str], quiet: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL if quiet else None,
    )


async def _funded_account(admin: AsyncExchangeClient, name: str,
                          assets: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = await admin.create_account(name)
    for asset in assets:
        amount = DEMO_FUNDS.get(asset, "1000")
        await admin.deposit(info["account_id"], asset, amount, f"{name}-{asset}")
    return info


async def _wait_for_index(client: AsyncExchangeClient, assets: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not assets <= set(index_prices(await client.assets())):
        if time.monotonic() > deadline:
            raise RuntimeError("the oracle posted no prices")
        await asyncio.sleep(0.2)


async def _taker(client: AsyncExchangeClient, markets: list[dict[str, Any]],
                 rng: random.Random) -> None:
    """A small IOC order now and then, crossing the spread so the tape moves."""
    while True:
        await asyncio.sleep(TAKER_EVERY_S)
        market = rng.choice(markets)
        index = index_prices(await client.assets()).get(market["base"])
        if index is None:
            continue
        side = rng.choice(("buy", "sell"))
        tick = Decimal(market["tick_size"])
        limit = index * (Decimal("1.01") if side == "buy" else Decimal("0.99"))
        size = Decimal(market["min_size"]) * rng.randint(1, 20)
        try:
            await client.place_order(market=market["symbol"], side=side, type="limit",
                                     time_in_force="ioc", size=str(size),
                                     price=str((limit / tick).quantize(1) * tick))
        except ApiError as exc:
            print(f"taker: {market['symbol']} {side} refused: {exc.code}", flush=True)


async def _bots(url: str, key: str, secret: str, seconds: float | None) -> None:
    async with AsyncExchangeClient(url, key, secret) as admin:
        markets = (await admin.markets())["markets"]
        quote = markets[0]["quote"]
        bases = {m["base"] for m in markets}
        await _wait_for_index(admin, bases, timeout=30)
        assets = [quote, *sorted(bases)]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        maker = await _funded_account(admin, f"demo-maker-{stamp}", assets)
        taker = await _funded_account(admin, f"demo-taker-{stamp}", assets)
    ws_url = url.replace("http", "ws", 1) + "/v1/ws"
    async with AsyncExchangeClient(url, maker["api_key"], maker["api_secret"]) as maker_rest, \
            AsyncExchangeClient(url, taker["api_key"], taker["api_secret"]) as taker_rest:
        bot = MarketMaker(maker_rest, ws_url, maker["api_key"], maker["api_secret"], markets)
        tasks = [asyncio.create_task(bot.run()),
                 asyncio.create_task(_taker(taker_rest, markets, random.Random()))]
        print(f"demo: quoting {', '.join(m['symbol'] for m in markets)}; try\n"
              f"  curl {url}/v1/markets/BTC-PERP/book?depth=5\n"
              f"  open {url}/docs    (Ctrl-C stops)", flush=True)
        try:
            await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


def run(settings: Settings, seconds: float | None) -> int:
    from app.db import upgrade

    upgrade(settings.database_url)
    key, secret, _ = admin_credentials(settings)  # written before the server reads it
    url = f"http://{settings.host}:{settings.port}"
    env = {**os.environ, "EXCHANGE_LOG_LEVEL": os.environ.get("EXCHANGE_LOG_LEVEL", "warning"),
           "EXCHANGE_HOST": settings.host, "EXCHANGE_PORT": str(settings.port)}
    children = [_spawn(["serve"], env, quiet=False)]
    try:
        _wait_healthy(url, children[0])
        children.append(_spawn(["oracle-sim", "--url", url, "--interval", "1"], env,
                               quiet=True))
        asyncio.run(_bots(url, key, secret, seconds))
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")
