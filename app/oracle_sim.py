"""A simulated oracle feed for local use: `exchange oracle-sim`.

Each step moves every asset's price by a seeded Gaussian random walk (`vol`
standard deviation per step, in relative terms), rounded to cents, and posts all
of them in one `POST /v1/oracle/prices`. It starts from the server's current
index when there is one, else from `DEFAULT_START`. Not for production: a real
deployment posts prices from its own feed with an oracle key.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

DEFAULT_START = {"BTC": Decimal("65000"), "ETH": Decimal("3000"), "SOL": Decimal("150")}
CENT = Decimal("0.01")


def step(prices: Mapping[str, Decimal], rng: random.Random, vol: float) -> dict[str, Decimal]:
    """The next price of every asset: a Gaussian relative move, at least one cent."""
    out = {}
    for asset in sorted(prices):
        move = Decimal(repr(rng.gauss(0.0, vol)))
        price = (prices[asset] * (1 + move)).quantize(CENT, rounding=ROUND_HALF_EVEN)
        out[asset] = max(price, CENT)
    return out


def starting_prices(assets: list[dict[str, Any]], quote: str) -> dict[str, Decimal]:
    """From `GET /v1/assets`: the current index, else a default, for every non-quote asset."""
    start = {}
    for a in assets:
        if a["symbol"] == quote:
            continue
        index = a.get("index")
        start[a["symbol"]] = (
            Decimal(index["price"]) if index else DEFAULT_START.get(a["symbol"], Decimal(100))
        )
    return start


def run(
    post: Callable[[dict[str, str]], Any],
    start: Mapping[str, Decimal],
    interval_s: float,
    vol: float,
    seed: int | None,
    count: int | None,
    on_post: Callable[[dict[str, str]], None] = lambda _: None,
) -> int:
    """Post `count` updates (None: forever), one every `interval_s`; returns how many."""
    rng = random.Random(seed)
    prices = dict(start)
    sent = 0
    while count is None or sent < count:
        wire = {asset: str(p) for asset, p in sorted(prices.items())}
        post(wire)
        on_post(wire)
        sent += 1
        prices = step(prices, rng, vol)
        if count is None or sent < count:
            time.sleep(interval_s)
    return sent
