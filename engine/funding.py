"""Perpetual funding and the mark price's basis term (DESIGN section 8).

Rules owned here:
* rates and premiums are integers in parts per billion (`RATE_ONE` = 10**9);
* every `sample_ms` (at multiples of it, from command timestamps) each perp whose
  index is fresh takes one premium sample,
  `premium = (max(impact_bid - index, 0) - max(index - impact_ask, 0)) / index`,
  truncated toward zero, where an impact price is the average price of filling
  `impact_notional` of quote against that side of the book (a side too thin for
  it adds nothing to the premium);
* the same sample moves the mark's basis, an EMA of `mid - index` with a
  150 s time constant: `basis += (mid - index - basis) * sample_ms / 150_000`
  (only while both sides of the book are there);
* every `interval_ms` (at multiples of it) each perp with samples settles:
  `F = avg + clamp(0.0001 - avg, -0.0005, 0.0005)` is the 8-hour rate and each
  settlement pays `F / 8` (truncated toward zero) capped at +/-4%; a market
  without a sample in the interval pays nothing. Shortening the interval (tests)
  makes settlements more frequent, not smaller;
* a position pays or receives `size * index * rate`: longs pay shorts when the
  rate is positive, shorts pay longs when it is negative; payers pay rounded up
  and receivers get rounded down, both through the funding clearing account,
  whose remainder (the rounding dust) goes to the treasury.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

RATE_ONE = 10**9  # rates in parts per billion
INTEREST_8H = 100_000  # 0.01% per 8 hours
PREMIUM_CLAMP = 500_000  # +/-0.05%
HOURLY_CAP = 40_000_000  # 4% per settlement
EMA_MS = 150_000  # the mark basis EMA's time constant


@dataclass(frozen=True, slots=True)
class FundingParams:
    """How often samples and settlements happen, and the impact notional (quote units)."""

    sample_ms: int
    interval_ms: int
    impact_notional: int

    def problems(self) -> list[str]:
        out = []
        if self.sample_ms <= 0:
            out.append("funding sample interval must be positive")
        if self.interval_ms <= 0 or self.interval_ms % max(self.sample_ms, 1):
            out.append("funding interval must be a positive multiple of the sample interval")
        if self.impact_notional <= 0:
            out.append("impact_notional must be positive")
        return out


DEFAULT_FUNDING = FundingParams(5_000, 3_600_000, 10_000 * 10**6)  # 10,000 USDC


class MarketFunding:
    """One perp's funding state: this interval's premium samples and the mark basis."""

    __slots__ = ("market", "premium_sum", "samples", "basis", "last_rate")

    def __init__(
        self,
        market: str,
        premium_sum: int = 0,
        samples: int = 0,
        basis: int = 0,
        last_rate: int | None = None,
    ) -> None:
        self.market = market
        self.premium_sum = premium_sum
        self.samples = samples
        self.basis = basis  # EMA of mid - index, quote units per whole base
        self.last_rate = last_rate  # the rate of the last settlement (ppb), None before

    def add_sample(self, premium: int) -> None:
        self.premium_sum += premium
        self.samples += 1

    def move_basis(self, mid_minus_index: int, sample_ms: int) -> None:
        self.basis += _trunc((mid_minus_index - self.basis) * min(sample_ms, EMA_MS), EMA_MS)

    def average_premium(self) -> int:
        return _trunc(self.premium_sum, self.samples) if self.samples else 0

    def rate(self) -> int:
        """The rate one settlement would pay now (ppb; > 0: longs pay shorts)."""
        return settlement_rate(self.average_premium())


def settlement_rate(avg_premium: int) -> int:
    """F / 8 capped, from the average premium (all in ppb)."""
    eight_hour = avg_premium + min(max(INTEREST_8H - avg_premium, -PREMIUM_CLAMP), PREMIUM_CLAMP)
    return min(max(_trunc(eight_hour, 8), -HOURLY_CAP), HOURLY_CAP)


def impact_price(levels: Iterable[tuple[int, int]], notional: int, unit: int) -> Fraction | None:
    """Average price of filling `notional` quote units against `levels` (best first,
    (price, size) with size in base atomic units); None when the side is too thin."""
    need = Fraction(notional)
    qty = Fraction(0)
    for price, size in levels:
        level_notional = Fraction(price * size, unit)
        if level_notional >= need:
            qty += need * unit / price
            return Fraction(notional) * unit / qty
        need -= level_notional
        qty += size
    return None


def premium(index: int, impact_bid: Fraction | None, impact_ask: Fraction | None) -> int:
    """The premium of DESIGN section 8, ppb, truncated toward zero."""
    up = max(impact_bid - index, Fraction(0)) if impact_bid is not None else Fraction(0)
    down = max(index - impact_ask, Fraction(0)) if impact_ask is not None else Fraction(0)
    value = (up - down) * RATE_ONE / index
    return int(value)  # int() truncates toward zero


def payment(size: int, index: int, rate: int, unit: int) -> int:
    """What a position of `size` pays (> 0) or receives (< 0) at `rate`: payers are
    rounded up, receivers down, so the clearing account never runs short."""
    num = size * index * rate
    den = unit * RATE_ONE
    return -((-num) // den)  # ceil: a payer's ceiling is a receiver's floor, negated


def _trunc(a: int, b: int) -> int:
    """a / b rounded toward zero (b > 0)."""
    q = abs(a) // b
    return q if a >= 0 else -q
