"""The trader's risk plan: how the account's risk is unwound if it must be (DESIGN
section 9). This module owns the plan and its rules; liquidation itself (issue 5)
follows it.

Rules owned here:
* `cure_window_ms` (default 0) is how long a margin call lasts before slices start,
  at most the operator's `max_cure_window_ms`;
* `max_slice_ppm` (default 100%) caps each slice as a share of the reduction needed;
* `order` lists markets to unwind first (default: none, the engine's own choice,
  largest maintenance-risk reduction per unit of cost first);
* `hedge_groups` are sets of markets reduced together, pro rata; a market is in at
  most one group and at most once anywhere in the plan's lists;
* `keep_last` lists assets to sell last (not the quote asset).
"""

from __future__ import annotations

from dataclasses import dataclass

PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class RiskPlan:
    cure_window_ms: int = 0
    max_slice_ppm: int = PPM
    order: tuple[str, ...] = ()
    hedge_groups: tuple[tuple[str, ...], ...] = ()
    keep_last: tuple[str, ...] = ()


DEFAULT_PLAN = RiskPlan()


def plan_problems(
    plan: RiskPlan, markets: set[str], assets: set[str], quote: str, max_cure_window_ms: int
) -> list[tuple[str, str]]:
    """What is wrong with `plan`, as (code, detail) pairs; empty when it is sound. Codes:
    UNKNOWN_MARKET, UNKNOWN_ASSET, INVALID_RISK_PLAN."""
    out: list[tuple[str, str]] = []
    if not 0 <= plan.cure_window_ms <= max_cure_window_ms:
        out.append(
            (
                "INVALID_RISK_PLAN",
                f"cure_window_s must be 0..{max_cure_window_ms // 1000} (the operator's maximum)",
            )
        )
    if not PPM // 100 <= plan.max_slice_ppm <= PPM:
        out.append(("INVALID_RISK_PLAN", "max_slice_pct must be in 1..100"))
    for market in [*plan.order, *(m for group in plan.hedge_groups for m in group)]:
        if market not in markets:
            out.append(("UNKNOWN_MARKET", f"unknown market {market}"))
    if len(set(plan.order)) != len(plan.order):
        out.append(("INVALID_RISK_PLAN", "a market is listed twice in order"))
    seen: set[str] = set()
    for group in plan.hedge_groups:
        if len(group) < 2:
            out.append(("INVALID_RISK_PLAN", "a hedge group needs at least two markets"))
        overlap = sorted(seen & set(group)) or sorted(m for m in set(group) if group.count(m) > 1)
        if overlap:
            out.append(("INVALID_RISK_PLAN", f"hedge groups overlap on {overlap[0]}"))
        seen |= set(group)
    for asset in plan.keep_last:
        if asset not in assets or asset == quote:
            out.append(("UNKNOWN_ASSET", f"keep_last: {asset} is not an asset that can be sold"))
    if len(set(plan.keep_last)) != len(plan.keep_last):
        out.append(("INVALID_RISK_PLAN", "an asset is listed twice in keep_last"))
    return out
