"""The trader's risk plan (DESIGN section 9, engine/riskplan.py): set, validated, kept."""

from __future__ import annotations

import dataclasses

import pytest

from engine.commands import CreateAccount, SetRiskPlan
from engine.events import RiskPlanSet
from engine.exchange import Exchange
from engine.markets import default_config
from engine.riskplan import DEFAULT_PLAN, RiskPlan
from engine.snapshot import restore_snapshot, take_snapshot
from engine.types import Reject
from tests.engine_helpers import rejections, run

ALICE = 1000


def world() -> Exchange:
    ex = Exchange(dataclasses.replace(default_config(), max_cure_window_ms=300_000))
    run(ex, CreateAccount(name="a", api_key="a", api_secret="s"))
    return ex


def test_a_plan_is_set_replaced_and_kept_in_snapshots() -> None:
    ex = world()
    assert ex.accounts[ALICE].risk_plan == DEFAULT_PLAN == RiskPlan(0, 1_000_000, (), (), ())
    plan = SetRiskPlan(account_id=ALICE, cure_window_ms=120_000, max_slice_ppm=250_000,
                       order=("ETH-PERP",), hedge_groups=(("BTC-USDC", "BTC-PERP"),),
                       keep_last=("BTC",))  # fmt: skip
    assert run(ex, plan) == [RiskPlanSet(ALICE, 120_000, 250_000, ("ETH-PERP",),
                                         (("BTC-USDC", "BTC-PERP"),), ("BTC",))]  # fmt: skip
    kept = RiskPlan(120_000, 250_000, ("ETH-PERP",), (("BTC-USDC", "BTC-PERP"),), ("BTC",))
    assert ex.accounts[ALICE].risk_plan == kept
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    assert copy.accounts[ALICE].risk_plan == kept and copy.state_hash() == ex.state_hash()
    run(ex, SetRiskPlan(account_id=ALICE))  # every field to its default
    assert ex.accounts[ALICE].risk_plan == DEFAULT_PLAN


@pytest.mark.parametrize(
    ("fields", "reason", "detail"),
    [
        ({"cure_window_ms": 301_000}, Reject.INVALID_RISK_PLAN,
         "cure_window_s must be 0..300 (the operator's maximum)"),
        ({"max_slice_ppm": 0}, Reject.INVALID_RISK_PLAN, "max_slice_pct must be in 1..100"),
        ({"order": ("DOGE-PERP",)}, Reject.UNKNOWN_MARKET, "unknown market DOGE-PERP"),
        ({"order": ("BTC-PERP", "BTC-PERP")}, Reject.INVALID_RISK_PLAN,
         "a market is listed twice in order"),
        ({"hedge_groups": (("BTC-USDC", "BTC-PERP"), ("BTC-PERP", "ETH-PERP"))},
         Reject.INVALID_RISK_PLAN, "hedge groups overlap on BTC-PERP"),
        ({"hedge_groups": (("BTC-PERP",),)}, Reject.INVALID_RISK_PLAN,
         "a hedge group needs at least two markets"),
        ({"keep_last": ("USDC",)}, Reject.UNKNOWN_ASSET,
         "keep_last: USDC is not an asset that can be sold"),
    ],
)  # fmt: skip
def test_a_bad_plan_is_refused_with_the_problem_named(
    fields: dict[str, object], reason: Reject, detail: str
) -> None:
    ex = world()
    (r,) = rejections(run(ex, SetRiskPlan(account_id=ALICE, **fields)))  # type: ignore[arg-type]
    assert (r.reason, r.detail) == (reason, detail)
    assert ex.accounts[ALICE].risk_plan == DEFAULT_PLAN


def test_every_problem_is_listed() -> None:
    ex = world()
    (r,) = rejections(run(ex, SetRiskPlan(account_id=ALICE, cure_window_ms=10**7,
                                          order=("X",))))  # fmt: skip
    assert r.detail == ("cure_window_s must be 0..300 (the operator's maximum); "
                        "unknown market X")  # fmt: skip
