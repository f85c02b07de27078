"""The first, Fraction-based implementation of DESIGN section 7's health: kept as the
reference that engine/risk.py's integer arithmetic must agree with exactly."""

from __future__ import annotations

from fractions import Fraction

from engine.risk import BORROW_HORIZON_MS, PPM, YEAR_MS, AssetRisk, Level, PerpExposure


def adjusted(balance: int, risk: AssetRisk | None, borrow_rate_ppm: int, level: Level) -> Fraction:
    """adj(t): a supply less its haircut, a loan plus BORROW_HORIZON_MS of interest at
    `borrow_rate_ppm` a year. Equity uses the balance as it is."""
    if level is Level.EQUITY or balance == 0:
        return Fraction(balance)
    if balance > 0:
        haircut = risk.supply_haircut_ppm if risk is not None else 0
        return Fraction(balance * (PPM - haircut), PPM)
    return Fraction(balance) * (1 + Fraction(borrow_rate_ppm * BORROW_HORIZON_MS, PPM * YEAR_MS))


def _value(
    adj: Fraction, perps: list[PerpExposure], price: Fraction, unit: int, slippage: Fraction
) -> Fraction:
    total = adj * price - slippage * abs(adj) * price
    for p in perps:
        total += p.size * (price - p.mark) - slippage * abs(p.size) * price
    return total / unit


def reference_health(
    balances: dict[str, int],
    perps: list[PerpExposure],
    marks: dict[str, int],
    decimals: dict[str, int],
    risk: dict[str, AssetRisk],
    borrow_rates_ppm: dict[str, int],
    quote: str,
    level: Level,
    parts: dict[str, int] | None = None,
) -> int | None:
    """The account's health at `level` (its equity for Level.EQUITY), in quote atomic units,
    rounded down; None when an asset it holds, owes or trades has no mark. With `parts`,
    also each asset's contribution (rounded down): the quote's is its adjusted balance
    plus every perp's unrealized PnL, another asset's is its `token_value`."""
    total = adjusted(balances.get(quote, 0), None, borrow_rates_ppm.get(quote, 0), level)
    by_asset: dict[str, list[PerpExposure]] = {}
    for p in perps:
        by_asset.setdefault(p.asset, []).append(p)
        total += p.unrealized_pnl
    if parts is not None:
        parts[quote] = total.__floor__()
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
        params = risk.get(asset)
        shock = Fraction(params.shock_ppm(level), PPM) if params is not None else Fraction(0)
        slip = (
            Fraction(params.slippage_ppm, PPM)
            if params is not None and level is not Level.EQUITY
            else Fraction(0)
        )
        adj = adjusted(balance, params, borrow_rates_ppm.get(asset, 0), level)
        unit = 10 ** decimals[asset]
        token_value = min(
            _value(adj, on_asset, mark * (1 + shock), unit, slip),
            _value(adj, on_asset, mark * (1 - shock), unit, slip),
        )
        total += token_value
        if parts is not None:
            parts[asset] = token_value.__floor__()
    return total.__floor__()
