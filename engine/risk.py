"""Portfolio risk: one account's health at three levels, and its equity (DESIGN section 7).

Rules owned here, for one account, with `P` the price of asset `t` in quote
atomic units per whole unit and `U = 10**decimals(t)`:

    adj(t)     = balance * (1 - supply_haircut)              if balance > 0
               = balance * (1 + borrow_rate * 10 days)       if balance < 0
    value_t(P) = adj(t)*P/U - slippage*|adj(t)|*P/U
               + sum over perps p on t: size_p*(P - mark_p)/U - slippage*|size_p|*P/U
    token_t    = min(value_t(mark_t*(1+shock)), value_t(mark_t*(1-shock)))
    health     = adj(quote) + sum_p unrealized_pnl_p + sum_t token_t

`shock` is the asset's price shock for the level (initial > liquidation-end >
maintenance) and `slippage` its `risk_slippage`. A long spot balance and a short
perp on the same asset offset inside `value_t`: hedges net out.

Choices where DESIGN is silent: **equity** is the account's value at the marks,
with no shock, slippage, haircut or borrow horizon (what it would be worth
closed out at the marks); arithmetic is exact (integers over one common
denominator) and each result is rounded down to a quote atomic unit, so health
is never overstated; an asset held (or owed) without a price makes the health
unknown (None), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PPM = 1_000_000
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
BORROW_HORIZON_MS = 10 * DAY_MS  # a loan is valued as if 10 days of interest were owed


class Level(StrEnum):
    INITIAL = "initial"
    MAINTENANCE = "maintenance"
    LIQUIDATION_END = "liquidation_end"
    EQUITY = "equity"


@dataclass(frozen=True, slots=True)
class AssetRisk:
    """Risk parameters of one (non-quote) asset, in parts per million."""

    initial_ppm: int
    maintenance_ppm: int
    liquidation_end_ppm: int
    slippage_ppm: int
    supply_haircut_ppm: int = 0

    def shock_ppm(self, level: Level) -> int:
        if level is Level.INITIAL:
            return self.initial_ppm
        if level is Level.MAINTENANCE:
            return self.maintenance_ppm
        if level is Level.LIQUIDATION_END:
            return self.liquidation_end_ppm
        return 0

    def problems(self, asset: str) -> list[str]:
        out = []
        if not 0 <= self.maintenance_ppm <= self.liquidation_end_ppm <= self.initial_ppm < PPM:
            out.append(
                f"{asset}: risk prices need 0 <= maintenance <= liquidation_end <= initial < 1"
            )
        if not 0 <= self.slippage_ppm < PPM or not 0 <= self.supply_haircut_ppm < PPM:
            out.append(f"{asset}: slippage and supply haircut must be in [0, 1)")
        return out


DEFAULT_RISK = {
    "BTC": AssetRisk(120_000, 80_000, 100_000, 5_000),
    "ETH": AssetRisk(120_000, 80_000, 100_000, 5_000),
    "SOL": AssetRisk(180_000, 120_000, 150_000, 5_000),
}


@dataclass(frozen=True, slots=True)
class PerpExposure:
    """A perp position on an asset: signed size (base atomic units), its mark price and its
    unrealized PnL at that mark (quote atomic units)."""

    asset: str
    size: int
    mark: int
    unrealized_pnl: int


# Exact integer arithmetic over one common denominator (no Fractions: this runs for
# every order of an account with exposure). With A = PPM * YEAR_MS:
#   adj(t) = adj_num / A;  a shocked price P = mark * (PPM +/- shock) / PPM = PN / PPM;
#   value_t * U * A * PPM * PPM = adj_num*PN*PPM - slip*|adj_num|*PN
#       + sum_p size_p*(PN - mark_p*PPM)*A*PPM - slip*|size_p|*PN*A
# which depends on the perps only through sum(size), sum(|size|), sum(size * mark_p).
A = PPM * YEAR_MS
DEN = A * PPM * PPM


def adjusted_num(balance: int, risk: AssetRisk | None, borrow_rate_ppm: int, level: Level) -> int:
    """adj(t) * A: a supply less its haircut, a loan plus BORROW_HORIZON_MS of interest at
    `borrow_rate_ppm` a year. Equity uses the balance as it is."""
    if level is Level.EQUITY or balance == 0:
        return balance * A
    if balance > 0:
        haircut = risk.supply_haircut_ppm if risk is not None else 0
        return balance * (PPM - haircut) * YEAR_MS
    return balance * (A + borrow_rate_ppm * BORROW_HORIZON_MS)


def token_slope(
    balance: int,
    size: int,
    abs_size: int,
    params: AssetRisk | None,
    borrow_rate_ppm: int,
    level: Level,
) -> int:
    """How token_t * U * DEN moves per unit of the asset's index price, from its balance
    and the sums over its perps of size and |size|. With PN = mark * (PPM +/- shock), each
    shocked value is PN * C - A * PPM**2 * size_mark where
    C = adj_num*PPM - slip*|adj_num| + A*(PPM*size - slip*abs_size), so the worse of the
    two is mark * (PPM*C - shock*|C|) - A * PPM**2 * size_mark: linear in the index, with
    this slope (the perp marks only enter the constant, and cancel against the perps'
    unrealized PnL in health)."""
    shock = params.shock_ppm(level) if params is not None else 0
    slip = params.slippage_ppm if params is not None and level is not Level.EQUITY else 0
    adj = adjusted_num(balance, params, borrow_rate_ppm, level)
    c = adj * PPM - slip * abs(adj) + A * (PPM * size - slip * abs_size)
    return PPM * c - shock * abs(c)


def token_num(
    balance: int,
    size: int,
    abs_size: int,
    size_mark: int,
    mark: int,
    params: AssetRisk | None,
    borrow_rate_ppm: int,
    level: Level,
) -> int:
    """token_t * U * DEN for one asset: its balance and the perps on it (as sums of size,
    |size| and size * perp mark), at `level`."""
    slope = token_slope(balance, size, abs_size, params, borrow_rate_ppm, level)
    return mark * slope - A * PPM * PPM * size_mark


def quote_num(balance: int, borrow_rate_ppm: int, level: Level, upnl: int) -> int:
    """(adj(quote) + the perps' unrealized PnL) * A."""
    return adjusted_num(balance, None, borrow_rate_ppm, level) + upnl * A


def combine(quote_part: int, tokens: int, top: int) -> int:
    """Health from the quote part (times A) and the sum of token values, each scaled to
    DEN * `top` (a power of ten at least every asset's unit), rounded down."""
    return (quote_part * PPM * PPM * top + tokens) // (DEN * top)


def health(
    balances: dict[str, int],
    perps: list[PerpExposure],
    marks: dict[str, int],
    decimals: dict[str, int],
    risk: dict[str, AssetRisk],
    borrow_rates_ppm: dict[str, int],
    quote: str,
    level: Level,
    parts: dict[str, int] | None = None,
    slopes: dict[str, int] | None = None,
) -> int | None:
    """The account's health at `level` (its equity for Level.EQUITY), in quote atomic units,
    rounded down; None when an asset it holds, owes or trades has no mark. With `parts`,
    also each asset's contribution (rounded down): the quote's is its adjusted balance
    plus every perp's unrealized PnL, another asset's is its `token_value`. With `slopes`,
    also how each asset's contribution moves with its index: health * DEN * top moves by
    slope * (price change) (engine/margin_index.py)."""
    by_asset: dict[str, list[PerpExposure]] = {}
    upnl = 0
    for p in perps:
        by_asset.setdefault(p.asset, []).append(p)
        upnl += p.unrealized_pnl
    q = quote_num(balances.get(quote, 0), borrow_rates_ppm.get(quote, 0), level, upnl)
    if parts is not None:
        parts[quote] = q // A
    top = 10 ** max(decimals.values(), default=0)
    tokens = 0
    for asset in sorted(set(balances) | set(by_asset)):
        if asset == quote:
            continue
        balance = balances.get(asset, 0)
        on_asset = by_asset.get(asset, [])
        if balance == 0 and not any(p.size for p in on_asset):
            continue
        mark = marks.get(asset)
        if mark is None:
            return None
        unit = 10 ** decimals[asset]
        size = abs_size = size_mark = 0
        for p in on_asset:
            size += p.size
            abs_size += abs(p.size)
            size_mark += p.size * p.mark
        slope = token_slope(
            balance, size, abs_size, risk.get(asset), borrow_rates_ppm.get(asset, 0), level
        )
        value = mark * slope - A * PPM * PPM * size_mark  # token_num
        tokens += value * (top // unit)  # units are powers of ten: top // unit is exact
        if slopes is not None:
            slopes[asset] = slope * (top // unit)
        if parts is not None:
            parts[asset] = value // (unit * DEN)
    return combine(q, tokens, top)
