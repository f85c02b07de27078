"""A simple market maker: a symmetric ladder of post-only quotes around the index.

Used by ``make demo`` (``exchange demo``) and by the locust market-maker user. The
ladder is a pure function (``quote_ladder``); ``MarketMaker`` requotes every market
over one authenticated WebSocket: ``order.cancel_all`` then one ``order.batch`` per
market per cycle. Not a strategy: no inventory skew beyond a random jitter, no
hedging.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from .errors import ApiError
from .rest import AsyncExchangeClient
from .ws import RETRYABLE, Backoff, ExchangeWebSocket

log = logging.getLogger("exchange_client.market_maker")
BPS = Decimal("0.0001")


def _to_step(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    return (value / step).to_integral_value(rounding=rounding) * step


def quote_ladder(market: Mapping[str, Any], mid: Decimal, levels: int = 5,
                 spread_bps: int = 10, step_bps: int = 5,
                 notional: Decimal = Decimal(2000)) -> list[dict[str, Any]]:
    """``levels`` post-only bids and asks around ``mid`` (a ``GET /v1/markets`` entry).

    Level i sits ``spread_bps / 2 + i * step_bps`` away from ``mid``, bids rounded down
    and asks up to the tick; each is ``notional`` of quote, rounded down to the lot and
    at least the minimum size. Sizes and prices are wire strings.
    """
    tick, lot = Decimal(market["tick_size"]), Decimal(market["lot_size"])
    min_size = Decimal(market["min_size"])
    size = max(min_size, _to_step(notional / mid, lot, ROUND_FLOOR))
    orders: list[dict[str, Any]] = []
    for i in range(levels):
        away = (Decimal(spread_bps) / 2 + i * step_bps) * BPS
        bid = _to_step(mid * (1 - away), tick, ROUND_FLOOR)
        ask = _to_step(mid * (1 + away), tick, ROUND_CEILING)
        for side, price in (("buy", bid), ("sell", ask)):
            if price > 0:
                orders.append({"market": market["symbol"], "side": side, "type": "limit",
                               "price": str(price), "size": str(size),
                               "time_in_force": "post_only"})
    return orders


def index_prices(assets: Mapping[str, Any]) -> dict[str, Decimal]:
    """Asset -> index price from a ``GET /v1/assets`` body (assets without one left out)."""
    return {a["symbol"]: Decimal(a["index"]["price"])
            for a in assets["assets"] if a.get("index")}


class MarketMaker:
    """Requotes ``markets`` (``GET /v1/markets`` entries) every ``interval`` seconds."""

    def __init__(self, rest: AsyncExchangeClient, ws_url: str, api_key: str, api_secret: str,
                 markets: Sequence[Mapping[str, Any]], *, levels: int = 5,
                 spread_bps: int = 10, step_bps: int = 5, notional: Decimal = Decimal(2000),
                 interval: float = 1.0, seed: int | None = None) -> None:
        self.rest = rest
        self.ws_url = ws_url
        self.credentials = (api_key, api_secret)
        self.markets = list(markets)
        self.levels, self.spread_bps, self.step_bps = levels, spread_bps, step_bps
        self.notional = notional
        self.interval = interval
        self.rng = random.Random(seed)
        self.cycles = 0
        self.quotes_placed = 0
        self.rejections = 0  # legs the exchange refused (logged)

    async def requote(self, ws: ExchangeWebSocket, prices: Mapping[str, Decimal]) -> None:
        """One cycle: every market with an index gets a fresh ladder. All the cancels
        and batches go out at once (the server runs them in order, pipelined), so a
        cycle costs about one round trip however many markets are quoted."""
        calls: list[tuple[str, dict[str, Any]]] = []
        quoted: list[str] = []
        for market in self.markets:
            index = prices.get(market["base"])
            if index is None:
                continue
            mid = index * (1 + Decimal(self.rng.randint(-3, 3)) * BPS)
            ladder = quote_ladder(market, mid, self.levels, self.spread_bps, self.step_bps,
                                  self.notional)
            calls.append(("order.cancel_all", {"market": market["symbol"]}))
            calls.append(("order.batch", {"orders": ladder, "atomic": False}))
            quoted.append(market["symbol"])
        replies = await ws.request_many(calls)
        for symbol, cancelled, out in zip(quoted, replies[::2], replies[1::2], strict=True):
            for reply in (cancelled, out):
                if isinstance(reply, ApiError):
                    raise reply  # the session is unusable (auth, rate limit): reconnect
            for result in out["results"]:
                if "error" in result:
                    self.rejections += 1
                    log.warning("%s quote refused: %s", symbol, result["error"])
                else:
                    self.quotes_placed += 1
        self.cycles += 1

    async def run(self, cycles: int | None = None) -> None:
        """Quote until cancelled (or ``cycles`` cycles), reconnecting as needed."""
        backoff = Backoff()
        while cycles is None or self.cycles < cycles:
            try:
                async with ExchangeWebSocket() as ws:
                    await ws.connect(self.ws_url)
                    # quotes vanish if the bot dies: the server cancels them on disconnect
                    await ws.auth(*self.credentials, cancel_on_disconnect=True)
                    backoff.reset()
                    while cycles is None or self.cycles < cycles:
                        await self.requote(ws, index_prices(await self.rest.assets()))
                        await asyncio.sleep(self.interval)
            except (*RETRYABLE, ApiError) as exc:
                log.warning("market maker: %s; reconnecting", exc)
                await asyncio.sleep(backoff.next())
