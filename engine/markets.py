"""Assets, markets and fee tiers: the static configuration the engine runs on.

Units: an asset amount is an integer of atomic units (10**-decimals). A price
is an integer of quote atomic units per ONE WHOLE base unit, so
`notional = price * size // 10**base_decimals`. `validate()` checks that every
tick x lot product is an exact number of quote atomic units, so notional never
needs rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.fixedpoint import format_units, parse_units
from engine.funding import DEFAULT_FUNDING, FundingParams
from engine.lending import DEFAULT_LENDING, LendingParams
from engine.risk import DEFAULT_RISK, AssetRisk
from engine.types import MarketKind


@dataclass(frozen=True, slots=True)
class AssetSpec:
    symbol: str
    decimals: int


@dataclass(frozen=True, slots=True)
class MarketSpec:
    symbol: str
    kind: MarketKind
    base: str
    quote: str
    tick: int  # price units (quote atomic per whole base)
    lot: int  # base atomic units
    min_size: int  # base atomic units, a multiple of lot
    base_decimals: int
    quote_decimals: int
    max_price: int = 0  # 0 = no limit besides sanity
    base_unit: int = field(init=False, repr=False, compare=False, default=0)  # 10**base_decimals

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_unit", 10**self.base_decimals)

    def notional(self, price: int, size: int) -> int:
        """Quote atomic units for `size` base atomic units at `price` (exact by config)."""
        return price * size // self.base_unit

    def fmt_price(self, price: int) -> str:
        return format_units(price, self.quote_decimals)

    def fmt_size(self, size: int) -> str:
        return format_units(size, self.base_decimals)


@dataclass(frozen=True, slots=True)
class FeeTier:
    """Fees in parts per million of notional; a negative maker fee is a rebate."""

    maker_ppm: int
    taker_ppm: int


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    assets: dict[str, AssetSpec]
    markets: dict[str, MarketSpec]
    fee_tiers: dict[int, FeeTier] = field(default_factory=lambda: {0: FeeTier(100, 400)})
    max_batch: int = 20
    # Market orders without a price get a protective limit this far past the best price.
    market_slippage_ppm: int = 50_000
    # An index price from the oracle is stale this long after the command that set it.
    oracle_stale_ms: int = 15_000
    # Price shocks and slippage per non-quote asset (engine/risk.py, DESIGN section 7).
    risk: dict[str, AssetRisk] = field(default_factory=lambda: dict(DEFAULT_RISK))
    # Lending pool rate curves per asset (engine/lending.py) and how often interest settles.
    lending: dict[str, LendingParams] = field(default_factory=lambda: dict(DEFAULT_LENDING))
    interest_interval_ms: int = 3_600_000
    # Perp funding: premium samples, settlements and the impact notional (engine/funding.py).
    funding: FundingParams = DEFAULT_FUNDING
    # False skips the initial-health check of orders and withdrawals: only for measuring
    # what the check costs (loadtests/bench_risk.py); never set by the markets file.
    margin_checks: bool = True
    # The longest cure window a trader's risk plan may ask for (engine/riskplan.py).
    max_cure_window_ms: int = 300_000
    # Liquidation (engine/liquidation.py): each slice is an IOC within this much of the
    # mark, what the book does not take goes to the insurance fund at that limit, and
    # the liquidated account pays this fee on every slice's notional to the fund.
    liquidation_slippage_ppm: int = 20_000
    liquidation_fee_ppm: int = 2_500
    liquidation_step_ms: int = 1_000  # between two slices of one account
    # Below this share of its maintenance requirement (equity - maintenance health),
    # equity means liquidation at once, cure window or not.
    backstop_floor_ppm: int = 500_000

    @property
    def quote_asset(self) -> str:
        """The asset every market is quoted in (USDC by default), in which index prices
        are given; "" if markets are quoted in several assets."""
        quotes = {m.quote for m in self.markets.values()}
        return quotes.pop() if len(quotes) == 1 else ""

    def validate(self) -> list[str]:
        """Problems with the configuration (empty when it is sound)."""
        problems: list[str] = []
        for m in self.markets.values():
            if m.base not in self.assets or m.quote not in self.assets:
                problems.append(f"{m.symbol}: unknown asset")
                continue
            if self.assets[m.base].decimals != m.base_decimals:
                problems.append(f"{m.symbol}: base decimals differ from asset")
            if self.assets[m.quote].decimals != m.quote_decimals:
                problems.append(f"{m.symbol}: quote decimals differ from asset")
            if m.tick <= 0 or m.lot <= 0:
                problems.append(f"{m.symbol}: tick and lot must be positive")
                continue
            if (m.tick * m.lot) % (10**m.base_decimals) != 0:
                problems.append(
                    f"{m.symbol}: tick x lot is not a whole number of {m.quote} atomic units"
                )
            if m.min_size < m.lot or m.min_size % m.lot != 0:
                problems.append(f"{m.symbol}: min_size must be a positive multiple of lot")
            if m.kind is MarketKind.PERP and m.quote != self.quote_asset:
                problems.append(f"{m.symbol}: a perp settles in the quote asset of every market")
        for tier_id, tier in self.fee_tiers.items():
            if tier.taker_ppm < 0 or tier.taker_ppm + tier.maker_ppm < 0:
                problems.append(f"fee tier {tier_id}: rebate larger than the taker fee")
            if tier.taker_ppm >= 1_000_000 or tier.maker_ppm >= 1_000_000:
                problems.append(f"fee tier {tier_id}: fee of 100% or more")
        if self.oracle_stale_ms <= 0:
            problems.append("oracle_stale_ms must be positive")
        for asset in self.assets:
            if asset == self.quote_asset:
                continue
            params = self.risk.get(asset)
            if params is None:
                problems.append(f"{asset}: no risk parameters")
            else:
                problems += params.problems(asset)
        for asset in self.assets:
            pool = self.lending.get(asset)
            if pool is None:
                problems.append(f"{asset}: no lending parameters")
            else:
                problems += pool.problems(asset)
        if self.interest_interval_ms <= 0:
            problems.append("interest_interval_ms must be positive")
        problems += self.funding.problems()
        if self.max_cure_window_ms < 0:
            problems.append("max_cure_window_ms must not be negative")
        problems += self._liquidation_problems()
        if 0 not in self.fee_tiers:
            problems.append("fee tier 0 (the default) is missing")
        return problems


    def _liquidation_problems(self) -> list[str]:
        out = []
        if not 0 < self.liquidation_slippage_ppm < 1_000_000:
            out.append("liquidation_slippage must be in (0, 1)")
        if not 0 <= self.liquidation_fee_ppm < 1_000_000:
            out.append("liquidation_fee must be in [0, 1)")
        if self.liquidation_step_ms <= 0:
            out.append("liquidation_step_ms must be positive")
        if not 0 <= self.backstop_floor_ppm <= 1_000_000:
            out.append("backstop_floor must be in [0, 1]")
        # A slice must always raise health: what it may cost (the slippage limit and the
        # fees) stays below what closing the exposure frees at maintenance.
        taker = max((t.taker_ppm for t in self.fee_tiers.values()), default=0)
        cost = self.liquidation_slippage_ppm + self.liquidation_fee_ppm + taker
        for asset, params in sorted(self.risk.items()):
            if asset in self.assets and cost >= params.maintenance_ppm + params.slippage_ppm:
                out.append(
                    f"{asset}: liquidation slippage + fees ({cost} ppm) must stay below the "
                    "maintenance price shock + risk slippage, or a slice could lower health"
                )
        return out


def _market(
    symbol: str,
    kind: MarketKind,
    base: str,
    quote: str,
    tick: str,
    lot: str,
    min_size: str,
    assets: dict[str, AssetSpec],
) -> MarketSpec:
    bd, qd = assets[base].decimals, assets[quote].decimals
    return MarketSpec(
        symbol=symbol,
        kind=kind,
        base=base,
        quote=quote,
        tick=parse_units(tick, qd),
        lot=parse_units(lot, bd),
        min_size=parse_units(min_size, bd),
        base_decimals=bd,
        quote_decimals=qd,
    )


def default_config() -> ExchangeConfig:
    """Built-in markets of DESIGN section 4 (overridable by a markets file)."""
    assets = {
        "USDC": AssetSpec("USDC", 6),
        "BTC": AssetSpec("BTC", 8),
        "ETH": AssetSpec("ETH", 8),
        "SOL": AssetSpec("SOL", 8),
    }
    spot, perp = MarketKind.SPOT, MarketKind.PERP
    markets = [
        _market("BTC-USDC", spot, "BTC", "USDC", "0.1", "0.0001", "0.0001", assets),
        _market("ETH-USDC", spot, "ETH", "USDC", "0.01", "0.001", "0.001", assets),
        _market("SOL-USDC", spot, "SOL", "USDC", "0.001", "0.01", "0.01", assets),
        _market("BTC-PERP", perp, "BTC", "USDC", "0.1", "0.0001", "0.0001", assets),
        _market("ETH-PERP", perp, "ETH", "USDC", "0.01", "0.001", "0.001", assets),
        _market("SOL-PERP", perp, "SOL", "USDC", "0.001", "0.01", "0.01", assets),
    ]
    return ExchangeConfig(
        assets=assets,
        markets={m.symbol: m for m in markets},
        fee_tiers={0: FeeTier(100, 400), 1: FeeTier(50, 300), 2: FeeTier(-20, 250)},
    )
