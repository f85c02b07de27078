"""An account's risk as its trader reads it: health at every level, each asset's part
in it, liquidation prices, and what-if (DESIGN section 7). Read-only.

Rules owned here:
* views use the last index prices (stale ones too) and each perp's mark;
* the liquidation price of an asset is the index at which maintenance health
  reaches 0 with every other price held fixed and every perp on that asset marked
  at the same price. Every term of health that depends on that price is
  proportional to it (the shocked values, the slippage, unrealized PnL), so health
  is linear in it: two evaluations give the slope and the zero exactly, up to the
  rounding of each evaluation to an atomic unit. `null` when health does not
  depend on the asset or would need a price <= 0;
* what-if counts each order as completely filled at its limit price (a market
  order without one at the prices the book would give it now, within its
  protective limit and self-trade prevention) and paying the top
  taker fee; open orders are left out, as in the account view. A price given for
  an asset moves its index and the mark of every perp on it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from engine.fixedpoint import ceil_div
from engine.risk import Level
from engine.types import MarketKind, Reject, Side

if TYPE_CHECKING:
    from engine.accounts import Account
    from engine.exchange import Exchange

PPM = 1_000_000


class WhatIfOrder:
    """One order of a what-if question: `price` None for a market order."""

    __slots__ = ("market", "side", "size", "price")

    def __init__(self, market: str, side: Side, size: int, price: int | None) -> None:
        self.market = market
        self.side = side
        self.size = size
        self.price = price


class RiskView:
    """Health per level, each asset's contribution per level, liquidation prices."""

    __slots__ = ("health", "by_asset", "liquidation_prices")

    def __init__(
        self,
        health: dict[Level, int | None],
        by_asset: dict[str, dict[Level, int]],
        liquidation_prices: dict[str, int | None],
    ) -> None:
        self.health = health
        self.by_asset = by_asset
        self.liquidation_prices = liquidation_prices


def risk_view(
    ex: Exchange,
    acct: Account,
    change: dict[str, int] | None = None,
    prices: dict[str, int] | None = None,
) -> RiskView:
    """The account's risk now, or after `change` (balances and "M:size"/"M:notional")
    at index `prices` (each moving the perps on that asset too)."""
    balances, positions = ex._portfolio(acct, change or {})
    rates = ex.borrow_rates()
    marks = ex._index_marks(fresh=False)
    perp_marks: dict[str, int] = {}
    for asset, price in (prices or {}).items():
        marks[asset] = price
        perp_marks.update(_perps_on(ex, asset, price))
    levels: dict[Level, int | None] = {}
    by_asset: dict[str, dict[Level, int]] = {}
    for level in Level:
        parts: dict[str, int] = {}
        levels[level] = ex._health_of(balances, positions, rates, level, marks, perp_marks, parts)
        for asset, value in parts.items():
            by_asset.setdefault(asset, {})[level] = value
    liquidation: dict[str, int | None] = {}
    for asset in sorted(by_asset):
        if asset != ex.config.quote_asset:
            liquidation[asset] = _liquidation_price(
                ex, balances, positions, rates, marks, perp_marks, asset
            )
    return RiskView(levels, by_asset, liquidation)


def _perps_on(ex: Exchange, asset: str, price: int) -> dict[str, int]:
    return {m: price for m in ex.funding if ex.markets[m].spec.base == asset}


def _liquidation_price(
    ex: Exchange,
    balances: dict[str, int],
    positions: dict[str, list[int]],
    rates: dict[str, int],
    marks: dict[str, int],
    perp_marks: dict[str, int],
    asset: str,
) -> int | None:
    p0 = marks.get(asset)
    if p0 is None:
        return None

    def at(price: int) -> int | None:
        return ex._health_of(
            balances,
            positions,
            rates,
            Level.MAINTENANCE,
            {**marks, asset: price},
            {**perp_marks, **_perps_on(ex, asset, price)},
        )

    h1, h2 = at(p0), at(2 * p0)
    if h1 is None or h2 is None or h1 == h2:
        return None
    slope = Fraction(h2 - h1, p0)
    zero = p0 - h1 / slope
    return round(zero) if zero > 0 else None


def what_if_change(
    ex: Exchange, acct: Account, orders: list[WhatIfOrder]
) -> tuple[dict[str, int], Reject | None, str]:
    """The balance and position change of `orders` all filled; or a refusal."""
    change: dict[str, int] = {}
    top_fee = max(ex._tier(acct).taker_ppm, 0)
    for i, o in enumerate(orders):
        market = ex.markets.get(o.market)
        if market is None:
            return change, Reject.UNKNOWN_MARKET, f"order {i}: unknown market {o.market}"
        spec = market.spec
        if o.size <= 0 or o.size % spec.lot:
            return change, Reject.INVALID_SIZE, f"order {i}: size must be a positive lot multiple"
        if o.price is not None:
            notional = spec.notional(o.price, o.size)
        else:  # as a market order would fill now: up to its protective limit, with STP
            filled = notional = 0
            if market.book.best(o.side.opposite) is not None:
                limit = ex._protective_price(market, o.side)
                filled, notional = ex._walk(
                    market.book, o.side, limit, o.size, acct.account_id, acct.stp
                )
            if filled < o.size:
                return change, Reject.NO_LIQUIDITY, f"order {i}: the book cannot fill it"
        fee = ceil_div(notional * top_fee, PPM)
        sign = 1 if o.side is Side.BUY else -1
        if spec.kind is MarketKind.PERP:
            moves = {
                spec.symbol + ":size": sign * o.size,
                spec.symbol + ":notional": sign * notional,
                spec.quote: -fee,
            }
        else:
            moves = {spec.base: sign * o.size, spec.quote: -sign * notional - fee}
        for key, delta in moves.items():
            change[key] = change.get(key, 0) + delta
    return change, None, ""
