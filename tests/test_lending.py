"""Lending pools (engine/lending.py): the rate curve, borrowing, interest, by hand.

USDC pool (defaults): base 0, slope1 4%, slope2 60%, optimal utilization 90%,
reserve factor 10%, max utilization 95%. Interest settles every hour here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson
import pytest

from app.config import load_exchange_config
from engine.accounts import TREASURY
from engine.commands import (
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetOraclePrices,
    Tick,
    Withdraw,
)
from engine.events import Rejected, Transfer
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.lending import STABLE, VOLATILE, borrow_rate_ppm, interest_due, supply_rate_ppm
from engine.markets import default_config
from engine.snapshot import take_snapshot
from engine.types import LedgerReason, Reject, Side

USDC, BTC = 10**6, 10**8
ROOT = Path(__file__).resolve().parent.parent
HOUR = 3_600_000
ALICE, BOB = 1000, 1001
FAR_FUNDING = FundingParams(100 * HOUR, 100 * HOUR, 1)


@pytest.mark.parametrize(
    ("borrowed", "rate"),
    [
        (0, 0),
        (4_500, 20_000),  # U 45%: 4% * 45/90 = 2%
        (9_000, 40_000),  # U 90%: the kink, 4%
        (9_500, 340_000),  # U 95%: 4% + 60% * 5/10 = 34%
        (10_000, 640_000),  # U 100%: 64%
        (12_000, 640_000),  # more borrowed than supplied counts as 100%
    ],
)
def test_kinked_borrow_rate(borrowed: int, rate: int) -> None:
    assert borrow_rate_ppm(STABLE, 10_000, borrowed) == rate


def test_supply_rate_and_volatile_curve() -> None:
    # U 45%: 2% * 0.45 * (1 - 10%) = 0.81%
    assert supply_rate_ppm(STABLE, 10_000, 4_500) == 8_100
    # volatile pool at U 60%: 4% + 300% * (60 - 45)/55 = 85.818181...% -> 858,181 ppm
    assert borrow_rate_ppm(VOLATILE, 1_000, 600) == 858_181
    # one hour of 5,000 USDC at 2.2222%: 5e9 * 22,222 * 3.6e6 / (1e6 * 3.1536e10 * 1e3)
    # = 12,683.8... atomic units, rounded up
    assert interest_due(5_000 * USDC, 22_222, HOUR) == 12_684


def world() -> Exchange:
    """Alice supplies 10,000 USDC; Bob holds 1 BTC; BTC index 50,000."""
    cfg = dataclasses.replace(  # funding samples far apart: these tests are about lending
        default_config(),
        oracle_stale_ms=10 * HOUR,
        funding=FundingParams(100 * HOUR, 100 * HOUR, 1),
    )
    ex = Exchange(cfg)
    for seq, cmd in enumerate(
        [
            CreateAccount(name="alice", api_key="ka", api_secret="s"),
            CreateAccount(name="bob", api_key="kb", api_secret="s"),
            Deposit(account_id=ALICE, asset="USDC", amount=10_000 * USDC, deposit_id="a"),
            Deposit(account_id=BOB, asset="BTC", amount=BTC, deposit_id="b"),
            SetOraclePrices(prices=(("BTC", 50_000 * USDC),)),
        ],
        start=1,
    ):
        assert not [e for e in ex.apply(dataclasses.replace(cmd, seq=seq, ts=1_000))
                    if isinstance(e, Rejected)]  # fmt: skip
    return ex


def borrow(ex: Exchange, seq: int, amount: int, asset: str = "USDC", ts: int = 2_000,
           allow: bool = True) -> list[object]:  # fmt: skip
    return list(ex.apply(Withdraw(seq=seq, ts=ts, account_id=BOB, asset=asset, amount=amount,
                                  withdrawal_id=f"w{seq}", allow_borrow=allow)))  # fmt: skip


def test_borrow_then_an_hour_of_interest() -> None:
    ex = world()
    events = borrow(ex, 10, 5_000 * USDC)
    assert [e for e in events if isinstance(e, Rejected)] == []
    assert ex.balance(BOB, "USDC") == -5_000 * USDC
    pool = ex.pools["USDC"]
    assert (pool.supplied, pool.borrowed) == (10_000 * USDC, 5_000 * USDC)
    # U 50%: 4% * 50/90 = 2.2222% -> 22,222 ppm
    assert ex.lending_state()["USDC"]["borrow_rate_ppm"] == 22_222
    assert ex.next_deadline() == 1_000 + HOUR  # interest was first stamped at ts 1,000
    settled = ex.apply(Tick(seq=11, ts=2_000 + HOUR))
    # elapsed: from 1,000 to 3,601,000 = HOUR + 1,000 ms
    due = interest_due(5_000 * USDC, 22_222, HOUR + 1_000)
    assert due == 12_688
    earned = due * 900_000 // 1_000_000  # 90% to suppliers: Alice alone
    assert settled == [
        Transfer(ex.next_transfer_id - 2, "USDC", BOB, TREASURY, due, LedgerReason.INTEREST,
                 f"interest:USDC:{2_000 + HOUR}", -5_000 * USDC - due, due, 2_000 + HOUR),
        Transfer(ex.next_transfer_id - 1, "USDC", TREASURY, ALICE, earned,
                 LedgerReason.INTEREST, f"interest:USDC:{2_000 + HOUR}",
                 due - earned, 10_000 * USDC + earned, 2_000 + HOUR),
    ]  # fmt: skip
    assert ex.balance(TREASURY, "USDC") == due - earned == 1_269
    assert ex.check_invariants() == []
    assert ex.next_deadline() == 2_000 + 2 * HOUR


def test_borrow_refusals() -> None:
    ex = world()
    assert borrow(ex, 10, 1 * USDC, allow=False) == [
        Rejected(Reject.INSUFFICIENT_BALANCE, BOB, "available 0 < 1000000", None, None)
    ]
    assert borrow(ex, 11, 10_001 * USDC) == [  # more than the pool has free
        Rejected(Reject.INSUFFICIENT_LIQUIDITY, BOB, f"the USDC pool has {10_000 * USDC} free",
                 None, None)
    ]  # fmt: skip
    assert borrow(ex, 12, 9_600 * USDC) == [  # utilization 96% > 95%
        Rejected(Reject.INSUFFICIENT_LIQUIDITY, BOB,
                 "the USDC pool would pass its maximum utilization", None, None)
    ]  # fmt: skip
    assert ex.balance(BOB, "USDC") == 0 and ex.pools["USDC"].borrowed == 0
    assert ex.check_invariants() == []


def margin_world() -> Exchange:
    """Alice supplies 1,000,000 USDC; Bob holds 0.1 BTC; no BTC index yet."""
    cfg = dataclasses.replace(  # funding samples far apart: these tests are about lending
        default_config(),
        oracle_stale_ms=10 * HOUR,
        funding=FundingParams(100 * HOUR, 100 * HOUR, 1),
    )
    ex = Exchange(cfg)
    ex.apply(CreateAccount(seq=1, ts=1, name="a", api_key="ka", api_secret="s"))
    ex.apply(CreateAccount(seq=2, ts=1, name="b", api_key="kb", api_secret="s"))
    ex.apply(Deposit(seq=3, ts=1, account_id=ALICE, asset="USDC", amount=10**6 * USDC,
                     deposit_id="a"))  # fmt: skip
    ex.apply(Deposit(seq=4, ts=1, account_id=BOB, asset="BTC", amount=BTC // 10,
                     deposit_id="b"))  # fmt: skip
    return ex


def test_borrowing_needs_initial_health_at_the_rate_the_loan_causes() -> None:
    ex = margin_world()
    assert borrow(ex, 5, 100 * USDC) == [  # Bob's BTC has no price
        Rejected(Reject.INSUFFICIENT_MARGIN, BOB,
                 "initial health would be unknown (an asset has no fresh index price)",
                 None, None)
    ]  # fmt: skip
    ex.apply(SetOraclePrices(seq=6, ts=1, prices=(("BTC", 50_000 * USDC),)))
    # 0.1 BTC counts 0.1 * 44,000 * 0.995 = 4,378 USDC at the initial level. A loan of x
    # takes utilization to x / 1,000,000 USDC, about 0.4378%, so the rate it causes is
    # 4% * 0.4378 / 90 = 194 ppm a year, and the loan counts x * (1 + 194e-6 * 10/365),
    # about 0.0233 USDC more. Largest x with x * (1 + 194e-6 * 10/365) <= 4,378:
    # 4,377.976730 USDC (health +0.75 atomic units, rounded down to 0); one more atomic
    # unit gives -0.25, rounded down to -1.
    assert borrow(ex, 7, 4_377_976_731) == [
        Rejected(Reject.INSUFFICIENT_MARGIN, BOB, "initial health would be -1", None, None)
    ]
    assert [e for e in borrow(ex, 8, 4_377_976_730) if isinstance(e, Rejected)] == []
    assert ex.lending_state()["USDC"]["borrow_rate_ppm"] == 194
    assert ex._initial_health(ex.accounts[BOB], {}, ex.borrow_rates()) == 0
    assert ex.balance(BOB, "USDC") == -4_377_976_730 and ex.check_invariants() == []


def test_no_borrowing_what_orders_hold() -> None:
    ex = margin_world()
    ex.apply(SetOraclePrices(seq=5, ts=1, prices=(("BTC", 50_000 * USDC),)))
    ex.apply(Deposit(seq=6, ts=1, account_id=BOB, asset="USDC", amount=100 * USDC,
                     deposit_id="bu"))  # fmt: skip
    ex.apply(PlaceOrder(seq=7, ts=1, account_id=BOB, market="BTC-USDC", side=Side.BUY,
                        size=BTC // 10_000, price=40_000 * USDC))  # fmt: skip
    assert borrow(ex, 8, 200 * USDC) == [
        Rejected(Reject.INSUFFICIENT_BALANCE, BOB,
                 "open orders hold USDC: cancel them before borrowing it", None, None)
    ]  # fmt: skip
    assert ex.check_invariants() == []


def test_open_orders_count_as_filled_on_the_side_that_hurts() -> None:
    ex = margin_world()
    ex.apply(SetOraclePrices(seq=5, ts=1, prices=(("BTC", 50_000 * USDC),)))
    # Bob offers his 0.1 BTC at 10,000: counted as sold there it brings 1,000 USDC less
    # the 0.04% taker fee (0.4 USDC) instead of counting 4,378 at the initial level.
    ex.apply(PlaceOrder(seq=6, ts=1, account_id=BOB, market="BTC-USDC", side=Side.SELL,
                        size=BTC // 10, price=10_000 * USDC))  # fmt: skip
    # 2,000 USDC would pass on the BTC alone; with the sale counted the USDC balance is
    # 999.6 - 2,000 = -1,000.4, a loan valued with 10 days at the rate the 2,000 cause
    # (U 0.2% -> 4% * 0.2/90 = 88 ppm): -1,000.4 * (1 + 88e-6 * 10/365) = -1,000.4024119...
    # -> rounded down, -1,000.402412 USDC
    assert borrow(ex, 7, 2_000 * USDC) == [
        Rejected(Reject.INSUFFICIENT_MARGIN, BOB, "initial health would be -1000402412",
                 None, None)
    ]  # fmt: skip
    assert [e for e in borrow(ex, 8, 999 * USDC) if isinstance(e, Rejected)] == []
    assert ex.check_invariants() == []


def test_pools_and_interest_clock_survive_a_snapshot() -> None:
    ex = world()
    borrow(ex, 10, 5_000 * USDC)
    snap = orjson.loads(orjson.dumps(take_snapshot(ex)))
    assert snap["interest_ts"] == 1_000
    back = Exchange.restore(ex.config, snap)
    assert back.state_hash() == ex.state_hash()
    assert (back.pools["USDC"].supplied, back.pools["USDC"].borrowed) == (
        10_000 * USDC, 5_000 * USDC)  # fmt: skip
    assert back.apply(Tick(seq=11, ts=2_000 + HOUR)) == ex.apply(Tick(seq=11, ts=2_000 + HOUR))
    assert back.check_invariants() == []


def test_lent_out_funds_cannot_be_withdrawn() -> None:
    ex = world()
    borrow(ex, 10, 8_000 * USDC)
    events = ex.apply(Withdraw(seq=11, ts=2_000, account_id=ALICE, asset="USDC",
                               amount=10_000 * USDC, withdrawal_id="all"))  # fmt: skip
    assert events == [
        Rejected(Reject.INSUFFICIENT_LIQUIDITY, ALICE, f"the USDC pool has {2_000 * USDC} free",
                 None, None)
    ]  # fmt: skip
    assert [e for e in ex.apply(Withdraw(seq=12, ts=2_000, account_id=ALICE, asset="USDC",
                                         amount=2_000 * USDC, withdrawal_id="some"))
            if isinstance(e, Rejected)] == []  # fmt: skip
    assert ex.pools["USDC"].free == 0 and ex.check_invariants() == []


def test_markets_file_sets_lending_curves_and_funding(tmp_path: Path) -> None:
    raw = json.loads((ROOT / "markets.example.json").read_text())
    raw["lending"] = {"USDC": {"slope1": "0.05", "max_utilization": "0.9"}}
    raw["funding_sample_s"], raw["funding_interval_s"] = 2, 60
    raw["impact_notional"] = "2500.5"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    cfg = load_exchange_config(str(path))
    assert cfg.lending["USDC"] == dataclasses.replace(
        STABLE, slope1_ppm=50_000, max_utilization_ppm=900_000)  # fmt: skip
    assert cfg.lending["BTC"] == VOLATILE
    assert (cfg.funding.sample_ms, cfg.funding.interval_ms) == (2_000, 60_000)
    assert cfg.funding.impact_notional == 2_500_500_000
    raw["assets"]["DOGE"] = {"decimals": 8}  # a new asset starts from the volatile curve
    raw["risk"] = {"DOGE": {"initial": "0.5", "maintenance": "0.3", "liquidation_end": "0.4",
                            "slippage": "0.01"}}  # fmt: skip
    raw["lending"] = {"DOGE": {"reserve_factor": "0.3"}, "BTC": {"kink": "0.5"}}
    raw["funding_interval_s"] = 61  # not a multiple of the sample interval
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as err:
        load_exchange_config(str(path))
    assert "lending BTC: fields are base_rate, slope1, slope2, optimal_utilization, " \
        "reserve_factor, max_utilization" in str(err.value)  # fmt: skip
    raw["lending"] = {"DOGE": {"reserve_factor": "0.3"}}
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as err:
        load_exchange_config(str(path))
    assert str(err.value).endswith(
        "funding interval must be a positive multiple of the sample interval")
    raw["funding_interval_s"] = 60
    path.write_text(json.dumps(raw))
    cfg = load_exchange_config(str(path))
    assert cfg.lending["DOGE"] == dataclasses.replace(VOLATILE, reserve_factor_ppm=300_000)
