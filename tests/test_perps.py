"""Perpetuals: positions, realized PnL through clearing, margin, reduce-only (by hand).

BTC-PERP: tick 0.1, lot 0.0001 BTC; fees tier 0: maker 0.01%, taker 0.04%.
"""

from __future__ import annotations

import dataclasses

import orjson

from engine.accounts import FEES, PNL_CLEARING
from engine.commands import (
    AmendOrder,
    BatchPlace,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetMarketState,
    SetOraclePrices,
    Withdraw,
)
from engine.events import Rejected
from engine.exchange import Exchange
from engine.markets import default_config
from engine.positions import Position, mark_price
from engine.risk import Level
from engine.snapshot import take_snapshot
from engine.types import MarketState, OrderType, Reject, Side, TimeInForce
from tests.engine_helpers import rejections, run

USDC, BTC = 10**6, 10**8
PERP = "BTC-PERP"
ALICE, BOB, CAROL = 1000, 1001, 1002


def test_position_adds_reduces_and_flips() -> None:
    p = Position(PERP)
    assert p.fill(BTC // 5, 50_000 * USDC, BTC) == 0  # long 0.2 at 50,000
    assert p.fill(BTC // 10, 53_000 * USDC, BTC) == 0  # + 0.1 at 53,000: entry 51,000
    assert (p.size, p.open_notional, p.entry_price(BTC)) == (
        3 * BTC // 10, 15_300 * USDC, 51_000 * USDC)  # fmt: skip
    # sell 0.15 at 55,000: closes half: removes 7,650, gets 8,250 -> +600
    assert p.fill(-15 * BTC // 100, 55_000 * USDC, BTC) == 600 * USDC
    assert (p.size, p.open_notional) == (15 * BTC // 100, 7_650 * USDC)
    # sell 0.25 at 50,000: closes 0.15 (7,650 for 7,500: -150), opens short 0.1 at 50,000
    assert p.fill(-25 * BTC // 100, 50_000 * USDC, BTC) == -150 * USDC
    assert (p.size, p.open_notional, p.realized) == (-BTC // 10, -5_000 * USDC, 450 * USDC)
    assert p.entry_price(BTC) == 50_000 * USDC
    assert p.unrealized(48_000 * USDC, BTC) == 200 * USDC  # short gains as the price falls


def test_mark_is_the_median_clamped_to_ten_percent_of_the_index() -> None:
    assert mark_price(None, 1, 2) is None
    assert mark_price(100, None, 120) == 100  # a side is empty: the index
    assert mark_price(100, 98, 103) == 100
    assert mark_price(100, 104, 106) == 104
    assert mark_price(100, 150, 160) == 110  # clamped
    assert mark_price(100, 10, 20) == 90


def world() -> Exchange:
    cfg = dataclasses.replace(default_config(), oracle_stale_ms=10**12)
    ex = Exchange(cfg)
    run(
        ex,
        CreateAccount(name="alice", api_key="ka", api_secret="s"),
        CreateAccount(name="bob", api_key="kb", api_secret="s"),
        CreateAccount(name="carol", api_key="kc", api_secret="s"),
        Deposit(account_id=ALICE, asset="USDC", amount=10_000 * USDC, deposit_id="a"),
        Deposit(account_id=BOB, asset="USDC", amount=10_000 * USDC, deposit_id="b"),
        Deposit(account_id=CAROL, asset="USDC", amount=100 * USDC, deposit_id="c"),
        SetOraclePrices(prices=(("BTC", 50_000 * USDC),)),
    )
    return ex


def order(account: int, side: Side, size: int, price: int, **kw: object) -> PlaceOrder:
    return PlaceOrder(account_id=account, market=PERP, side=side, size=size, price=price,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def test_open_and_close_a_position_through_pnl_clearing() -> None:
    ex = world()
    assert rejections(run(ex, order(ALICE, Side.SELL, BTC // 5, 50_000 * USDC),
                          order(BOB, Side.BUY, BTC // 5, 50_000 * USDC,
                                tif=TimeInForce.IOC))) == []  # fmt: skip
    bob, alice = ex.accounts[BOB], ex.accounts[ALICE]
    assert (bob.positions[PERP].size, alice.positions[PERP].size) == (BTC // 5, -BTC // 5)
    # no notional moves: only fees (taker 0.04% of 10,000 = 4; maker 0.01% = 1)
    assert (ex.balance(BOB, "USDC"), ex.balance(ALICE, "USDC")) == (9_996 * USDC, 9_999 * USDC)
    assert bob.holds == {} and alice.holds == {}
    run(ex, SetOraclePrices(prices=(("BTC", 55_000 * USDC),)))
    assert ex.health(BOB)[Level.EQUITY] == 10_996 * USDC  # 9,996 + 0.2 * 5,000
    assert ex.health(ALICE)[Level.EQUITY] == 8_999 * USDC
    # Alice buys back from Bob at 55,000: Bob realizes +1,000, Alice -1,000
    assert rejections(run(ex, order(ALICE, Side.BUY, BTC // 5, 55_000 * USDC),
                          order(BOB, Side.SELL, BTC // 5, 55_000 * USDC, reduce_only=True,
                                tif=TimeInForce.IOC))) == []  # fmt: skip
    assert (bob.positions[PERP].size, alice.positions[PERP].size) == (0, 0)
    assert (bob.positions[PERP].realized, alice.positions[PERP].realized) == (
        1_000 * USDC, -1_000 * USDC)  # fmt: skip
    # Bob: 9,996 + 1,000 - 4.4 taker fee; Alice: 9,999 - 1,000 - 1.1 maker fee
    assert ex.balance(BOB, "USDC") == 10_991_600_000
    assert ex.balance(ALICE, "USDC") == 8_997_900_000
    assert ex.balance(PNL_CLEARING, "USDC") == 0  # every market flat: clearing is back to 0
    assert ex.balance(FEES, "USDC") == 10_500_000
    assert ex.check_invariants() == []


def test_margin_decides_how_big_a_position_can_be() -> None:
    ex = world()
    run(ex, order(ALICE, Side.SELL, BTC, 50_000 * USDC))
    # Carol (100 USDC) buying 1 BTC at 50,000: at the initial shock (-12%, 44,000) the
    # position is worth -6,000 - 0.5% * 44,000 = -6,220; plus 100 - 20 fee = -6,140
    (r,) = rejections(run(ex, order(CAROL, Side.BUY, BTC, 50_000 * USDC, tif=TimeInForce.IOC)))
    assert (r.reason, r.detail) == (
        Reject.INSUFFICIENT_MARGIN, "initial health with the order filled would be -6140000000")
    # 0.01 BTC: -60 - 2.2 = -62.2; 100 - 0.2 fee - 62.2 = 37.6 >= 0
    assert rejections(run(ex, order(CAROL, Side.BUY, BTC // 100, 50_000 * USDC,
                                    tif=TimeInForce.IOC))) == []  # fmt: skip
    assert ex.accounts[CAROL].positions[PERP].size == BTC // 100
    assert ex.check_invariants() == []


def test_reduce_only_rules_and_a_stale_index() -> None:
    ex = world()
    run(ex, order(ALICE, Side.SELL, BTC // 10, 50_000 * USDC),
        order(BOB, Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    (r,) = rejections(run(ex, order(BOB, Side.BUY, BTC // 100, 50_000 * USDC,
                                    reduce_only=True, tif=TimeInForce.IOC)))  # fmt: skip
    assert (r.reason, r.detail) == (
        Reject.REDUCE_ONLY_WOULD_INCREASE,
        "the position is 0.1: a reduce-only order may only shrink it",
    )
    (r,) = rejections(run(ex, order(BOB, Side.SELL, BTC // 5, 50_000 * USDC,
                                    reduce_only=True, tif=TimeInForce.IOC)))  # fmt: skip
    assert r.reason is Reject.REDUCE_ONLY_WOULD_INCREASE  # would flip to short
    resting = run(ex, order(BOB, Side.SELL, BTC // 10, 51_000 * USDC, reduce_only=True))
    assert rejections(resting) == [] and ex.accounts[BOB].reduce_only == 1  # it rests
    stale = Exchange.restore(dataclasses.replace(ex.config, oracle_stale_ms=1), take_snapshot(ex))
    (r,) = rejections(run(stale, order(CAROL, Side.BUY, BTC // 100, 50_000 * USDC)))
    assert (r.reason, r.detail) == (Reject.MARKET_REDUCE_ONLY,
                                    "the BTC index is stale: reduce-only orders")  # fmt: skip
    (r,) = rejections(run(stale, order(ALICE, Side.BUY, BTC // 10, 50_000 * USDC)))
    assert r.reason is Reject.MARKET_REDUCE_ONLY  # Alice's buy would reduce, but is not marked
    events = run(stale, order(BOB, Side.SELL, BTC // 10, 40_000 * USDC, reduce_only=True,
                              type=OrderType.LIMIT, tif=TimeInForce.IOC))  # fmt: skip
    assert rejections(events) == []  # a reduce-only order gets in (no bid: IOC cancelled)
    assert stale.accounts[BOB].positions[PERP].size == BTC // 10


def test_positions_survive_a_snapshot() -> None:
    ex = world()
    run(ex, order(ALICE, Side.SELL, BTC // 5, 50_000 * USDC),
        order(BOB, Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    snap = orjson.loads(orjson.dumps(take_snapshot(ex)))
    assert snap["positions"] == [[ALICE, PERP, -BTC // 10, -5_000 * USDC, 0],
                                 [BOB, PERP, BTC // 10, 5_000 * USDC, 0]]  # fmt: skip
    back = Exchange.restore(ex.config, snap)
    assert back.state_hash() == ex.state_hash() and back.check_invariants() == []
    old = {k: v for k, v in snap.items() if k != "positions"}
    old["accounts"] = [a for a in old["accounts"] if a[0] != PNL_CLEARING]
    assert PNL_CLEARING in Exchange.restore(ex.config, old).accounts


def test_an_atomic_hedge_is_judged_as_one_margin_check() -> None:
    ex = world()
    dave = 1003
    run(
        ex,
        CreateAccount(name="dave", api_key="kd", api_secret="s"),
        Deposit(account_id=dave, asset="USDC", amount=10_010 * USDC, deposit_id="d"),
        Deposit(account_id=ALICE, asset="BTC", amount=BTC, deposit_id="ab"),
        PlaceOrder(account_id=ALICE, market="BTC-USDC", side=Side.SELL, size=BTC // 5,
                   price=50_000 * USDC),
        order(ALICE, Side.BUY, BTC // 5, 50_000 * USDC),
    )  # fmt: skip
    # Carol (100 USDC) shorting 0.2 alone: 100 - 4 fee + worst of -0.2 * (+-6,000) -
    # 0.5% * 0.2 * 56,000 = 96 - 1,256 = -1,160
    short = order(CAROL, Side.SELL, BTC // 5, 50_000 * USDC, tif=TimeInForce.IOC)
    (r,) = rejections(run(ex, BatchPlace(account_id=CAROL, orders=(short,), atomic=True)))
    assert (r.reason, r.detail) == (
        Reject.ATOMIC_BATCH_FAILED, "initial health after the batch would be -1160000000")
    # Dave buys 0.2 BTC spot and shorts 0.2 BTC-PERP in one batch: 10,010 - 10,004 - 4 = 2
    # USDC left; the legs offset: 2 + (10,000 - 0.002 * 56,000) = 9,890 at the initial level
    spot = PlaceOrder(account_id=dave, market="BTC-USDC", side=Side.BUY, size=BTC // 5,
                      price=50_000 * USDC, tif=TimeInForce.IOC)  # fmt: skip
    perp = order(dave, Side.SELL, BTC // 5, 50_000 * USDC, tif=TimeInForce.IOC)
    assert rejections(run(ex, BatchPlace(account_id=dave, orders=(spot, perp),
                                         atomic=True))) == []  # fmt: skip
    assert ex.balance(dave, "USDC") == 2 * USDC and ex.balance(dave, "BTC") == BTC // 5
    assert ex.accounts[dave].positions[PERP].size == -BTC // 5
    assert ex.health(dave)[Level.INITIAL] == 9_890 * USDC
    assert ex.check_invariants() == []


def test_amending_a_perp_order_up_is_judged_by_margin() -> None:
    ex = world()
    run(ex, order(CAROL, Side.BUY, BTC // 100, 49_000 * USDC))  # 0.01 BTC bid: fits
    oid = ex.next_order_id - 1
    # 1 BTC at 49,000 with the index at 50,000 would be: 100 - 19.6 fee + 1 * (44,000 -
    # 49,000) - 0.5% * 44,000 = 80.4 - 5,220 = -5,139.6
    (r,) = rejections(run(ex, AmendOrder(account_id=CAROL, order_id=oid, size=BTC)))
    assert (r.reason, r.detail) == (
        Reject.INSUFFICIENT_MARGIN,
        "initial health with the amended order filled would be -5139600000",
    )
    assert ex.orders[oid].size == BTC // 100 and ex.check_invariants() == []
    # 0.015 BTC: 100 - 0.294 fee - 75 - 3.3 = 21.406 >= 0 (0.02 would be -4.792)
    amended = AmendOrder(account_id=CAROL, order_id=oid, size=15 * BTC // 1000)
    assert rejections(run(ex, amended)) == []
    assert ex.orders[oid].size == 15 * BTC // 1000


# --- regressions found by review -------------------------------------------------------


def test_withdrawing_collateral_from_under_a_position_is_refused() -> None:
    ex = world()
    run(ex, order(ALICE, Side.SELL, BTC // 100, 50_000 * USDC),
        order(CAROL, Side.BUY, BTC // 100, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    # Carol: 99.8 USDC and 0.01 BTC long: the position needs 62.2 at the initial level
    events = run(ex, Withdraw(account_id=CAROL, asset="USDC", amount=99_800_000,
                              withdrawal_id="all"))  # fmt: skip
    assert rejections(events) == [
        Rejected(Reject.INSUFFICIENT_MARGIN, CAROL,
                 "initial health after the withdrawal would be -62200000", None, None)
    ]  # fmt: skip
    assert rejections(run(ex, Withdraw(account_id=CAROL, asset="USDC", amount=37_600_000,
                                       withdrawal_id="some"))) == []  # fmt: skip


def test_an_atomic_leg_adds_to_the_position_already_held() -> None:
    ex = world()
    run(ex, Deposit(account_id=ALICE, asset="USDC", amount=100_000 * USDC, deposit_id="more"),
        order(ALICE, Side.SELL, 2 * BTC, 50_000 * USDC),
        order(CAROL, Side.BUY, BTC // 100, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    leg = order(CAROL, Side.BUY, BTC, 50_000 * USDC, tif=TimeInForce.IOC)
    (r,) = rejections(run(ex, BatchPlace(account_id=CAROL, orders=(leg,), atomic=True)))
    # 1.01 BTC long: 1.01 * -6,000 - 0.5% * 1.01 * 44,000 = -6,282.2; USDC 99.8 - 20 fee
    assert (r.reason, r.detail) == (
        Reject.ATOMIC_BATCH_FAILED, "initial health after the batch would be -6202400000")
    assert ex.accounts[CAROL].positions[PERP].size == BTC // 100


def test_an_order_that_would_only_help_is_not_counted_as_filled() -> None:
    ex = world()
    run(ex, order(ALICE, Side.BUY, BTC // 10, 50_000 * USDC),
        order(BOB, Side.SELL, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    base = ex._initial_health(ex.accounts[BOB], {}, ex.borrow_rates())
    # a bid far under the market would close Bob's short at a profit: it may not count
    run(ex, order(BOB, Side.BUY, BTC // 10, 40_000 * USDC))
    assert ex._initial_health(ex.accounts[BOB], {}, ex.borrow_rates()) == base


def test_a_perp_loss_cancels_spot_buys_it_leaves_unfunded() -> None:
    ex = world()
    run(ex, Deposit(account_id=ALICE, asset="BTC", amount=BTC, deposit_id="ab"),
        PlaceOrder(account_id=BOB, market="BTC-USDC", side=Side.BUY, size=BTC // 10,
                   price=49_000 * USDC),  # holds 4,900 + fee reserve
        order(ALICE, Side.SELL, BTC // 10, 50_000 * USDC),
        order(BOB, Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC),
        SetOraclePrices(prices=(("BTC", 52_000 * USDC),)),
        order(BOB, Side.BUY, BTC, 52_000 * USDC))  # fmt: skip
    spot_buy = next(o for o in ex.accounts[BOB].live.values() if o.market == "BTC-USDC")
    assert ex.accounts[BOB].available("USDC") >= 0
    # Alice sells Bob 1 more BTC-PERP at 52,000 (long 1.1, entry ~51,818) and Bob sells out
    # at 45,000: ~7,500 lost leaves less USDC than the spot bid holds. (The index stays: a
    # drop to 45,000 would have liquidated Bob, engine/liquidation.py.)
    run(ex, order(ALICE, Side.SELL, BTC, 52_000 * USDC, tif=TimeInForce.IOC),
        order(ALICE, Side.BUY, 11 * BTC // 10, 45_000 * USDC),
        order(BOB, Side.SELL, 11 * BTC // 10, 45_000 * USDC, reduce_only=True,
              tif=TimeInForce.IOC))  # fmt: skip
    assert ex.accounts[BOB].positions[PERP].size == 0
    assert spot_buy.status.value == "cancelled" and spot_buy.cancel_reason == "margin"
    assert ex.check_invariants() == []


def test_a_perp_in_reduce_only_takes_reduce_only_orders_and_smaller_amends() -> None:
    ex = world()
    run(ex, order(ALICE, Side.SELL, BTC // 10, 50_000 * USDC),
        order(BOB, Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC),
        order(BOB, Side.BUY, BTC // 100, 40_000 * USDC))  # fmt: skip
    resting = ex.next_order_id - 1
    run(ex, SetMarketState(market=PERP, state=MarketState.REDUCE_ONLY))
    (r,) = rejections(run(ex, AmendOrder(account_id=BOB, order_id=resting, size=BTC // 10)))
    assert r.reason is Reject.MARKET_REDUCE_ONLY
    assert rejections(run(ex, AmendOrder(account_id=BOB, order_id=resting,
                                         size=BTC // 200))) == []  # fmt: skip
    (r,) = rejections(run(ex, order(CAROL, Side.BUY, BTC // 100, 50_000 * USDC)))
    assert r.reason is Reject.MARKET_REDUCE_ONLY
    closing = order(BOB, Side.SELL, BTC // 10, 30_000 * USDC, reduce_only=True,
                    tif=TimeInForce.IOC)  # fmt: skip
    assert rejections(run(ex, closing)) == []


def test_reduce_only_legs_are_refused_in_atomic_batches() -> None:
    ex = world()
    leg = order(BOB, Side.SELL, BTC // 10, 50_000 * USDC, reduce_only=True, tif=TimeInForce.IOC)
    (r,) = rejections(run(ex, BatchPlace(account_id=BOB, orders=(leg, leg), atomic=True)))
    assert (r.reason, r.detail) == (
        Reject.ATOMIC_BATCH_FAILED, "leg 0: reduce-only legs are not supported")
