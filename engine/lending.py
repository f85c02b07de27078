"""Lending pools: one per asset, made of the users' signed balances (DESIGN section 6).

Rules owned here:
* a user's positive balance is supplied to the asset's pool, a negative one is
  borrowed from it: `supplied` and `borrowed` are those sums (system accounts
  neither lend nor borrow), kept up to date by every transfer;
* utilization `U = borrowed / supplied`; the borrow rate (per year) is kinked:
  `base + slope1*U/U_opt` up to `U_opt`, then `base + slope1 +
  slope2*(U - U_opt)/(1 - U_opt)`; the supply rate is
  `borrow_rate * U * (1 - reserve_factor)`. Rates are in parts per million a
  year, rounded down;
* interest is settled every `interval`: each borrower pays
  `ceil(|balance| * borrow_rate * elapsed / year)` (never less than owed) to the
  treasury, which pays each supplier `floor(paid * (1 - reserve_factor) *
  balance / supplied)`; what is left (the reserve and the rounding dust) stays
  with the treasury, so the sum of balances does not move;
* a new loan may not take utilization above `max_utilization`, nor take more
  than the pool's free liquidity (`supplied - borrowed - pending`, where
  `pending` is what open auto_borrow orders will borrow as they fill).
"""

from __future__ import annotations

from dataclasses import dataclass

PPM = 1_000_000
YEAR_MS = 365 * 86_400_000


@dataclass(frozen=True, slots=True)
class LendingParams:
    """The rate curve of one asset's pool, in parts per million (rates per year)."""

    base_ppm: int
    slope1_ppm: int
    slope2_ppm: int
    optimal_ppm: int
    reserve_factor_ppm: int
    max_utilization_ppm: int

    def problems(self, asset: str) -> list[str]:
        out = []
        if min(self.base_ppm, self.slope1_ppm, self.slope2_ppm) < 0:
            out.append(f"{asset}: lending rates must not be negative")
        if not 0 < self.optimal_ppm < PPM:
            out.append(f"{asset}: optimal utilization must be in (0, 1)")
        if not 0 <= self.reserve_factor_ppm <= PPM or not 0 < self.max_utilization_ppm <= PPM:
            out.append(f"{asset}: reserve factor in [0, 1], max utilization in (0, 1]")
        return out


STABLE = LendingParams(0, 40_000, 600_000, 900_000, 100_000, 950_000)
VOLATILE = LendingParams(0, 40_000, 3_000_000, 450_000, 200_000, 900_000)
DEFAULT_LENDING = {"USDC": STABLE, "BTC": VOLATILE, "ETH": VOLATILE, "SOL": VOLATILE}


class Pool:
    __slots__ = ("asset", "supplied", "borrowed", "pending")

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self.supplied = 0
        self.borrowed = 0
        # loans that open auto_borrow orders will take as they fill (what they hold beyond
        # their account's balance): set aside, so no one else can take that liquidity
        self.pending = 0

    def move(self, old: int, new: int) -> None:
        """A user balance went from `old` to `new`."""
        if old > 0:
            self.supplied -= old
        elif old < 0:
            self.borrowed += old
        if new > 0:
            self.supplied += new
        elif new < 0:
            self.borrowed -= new

    @property
    def free(self) -> int:
        """What may still leave the pool or be lent: supplies less loans, taken or pending."""
        return self.supplied - self.borrowed - self.pending


def utilization_ppm(supplied: int, borrowed: int) -> int:
    if borrowed <= 0:
        return 0
    if supplied <= 0:
        return PPM
    return min(PPM, borrowed * PPM // supplied)


def borrow_rate_ppm(params: LendingParams, supplied: int, borrowed: int) -> int:
    """The kinked curve at the current utilization, exact up to the final floor."""
    if borrowed <= 0:
        return params.base_ppm
    u_num, u_den = (borrowed, supplied) if supplied > 0 else (1, 1)
    if u_num > u_den:
        u_num, u_den = 1, 1
    opt = params.optimal_ppm
    if u_num * PPM <= opt * u_den:  # U <= U_opt
        return params.base_ppm + params.slope1_ppm * u_num * PPM // (opt * u_den)
    excess_num = u_num * PPM - opt * u_den  # (U - U_opt) * PPM * u_den
    return (
        params.base_ppm
        + params.slope1_ppm
        + params.slope2_ppm * excess_num // ((PPM - opt) * u_den)
    )


def supply_rate_ppm(params: LendingParams, supplied: int, borrowed: int) -> int:
    if borrowed <= 0 or supplied <= 0:
        return 0
    rate = borrow_rate_ppm(params, supplied, borrowed)
    return rate * min(borrowed, supplied) * (PPM - params.reserve_factor_ppm) // (supplied * PPM)


def interest_due(debt: int, rate_ppm: int, elapsed_ms: int) -> int:
    """What a loan of `debt` atomic units owes for `elapsed_ms` at `rate_ppm` a year,
    rounded up."""
    return -(-debt * rate_ppm * elapsed_ms // (PPM * YEAR_MS))
