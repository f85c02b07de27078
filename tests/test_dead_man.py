"""The dead-man switch (DESIGN section 5): cancel all after T ms unless refreshed."""

from __future__ import annotations

import dataclasses

from engine.commands import (
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetDeadManSwitch,
    SetOraclePrices,
    Tick,
)
from engine.events import DeadManSwitch, OrderUpdate
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.markets import default_config
from engine.snapshot import restore_snapshot, take_snapshot
from engine.types import OrderType, Reject, Side, TimeInForce
from tests.engine_helpers import rejections, run

USDC, BTC = 10**6, 10**8
ALICE = 1000


def world() -> Exchange:
    """Alice has a resting spot bid and a waiting stop on BTC-PERP, at ts 1,000."""
    cfg = dataclasses.replace(  # (funding samples far apart: not what this is about)
        default_config(), oracle_stale_ms=10**12, funding=FundingParams(10**9, 10**9, 1)
    )
    ex = Exchange(cfg)
    setup = [
        CreateAccount(name="a", api_key="a", api_secret="s"),
        Deposit(account_id=ALICE, asset="USDC", amount=100_000 * USDC, deposit_id="a"),
        SetOraclePrices(prices=(("BTC", 50_000 * USDC),)),
        PlaceOrder(account_id=ALICE, market="BTC-USDC", side=Side.BUY, size=BTC // 10,
                   price=40_000 * USDC),
        PlaceOrder(account_id=ALICE, market="BTC-PERP", side=Side.BUY, size=BTC // 10,
                   type=OrderType.STOP_MARKET, tif=TimeInForce.IOC,
                   trigger_price=60_000 * USDC),
    ]  # fmt: skip
    assert rejections(run(ex, *setup, ts=1_000)) == []
    return ex


def test_armed_refreshed_then_fired_exactly_at_the_deadline() -> None:
    ex = world()
    assert run(ex, SetDeadManSwitch(account_id=ALICE, timeout_ms=5_000), ts=2_000) == [
        DeadManSwitch(ALICE, 7_000, False, 2_000)]  # fmt: skip
    assert ex.next_deadline() == 7_000
    run(ex, SetDeadManSwitch(account_id=ALICE, timeout_ms=5_000), ts=6_000)  # refreshed
    assert ex.next_deadline() == 11_000
    assert run(ex, Tick(), ts=10_999) == []
    fired = run(ex, Tick(), ts=11_000)
    assert [(e.order.order_id, e.order.status.value, e.order.cancel_reason)
            for e in fired if isinstance(e, OrderUpdate)] == [
        (1, "cancelled", "dead_man_switch"), (2, "cancelled", "dead_man_switch")]  # fmt: skip
    assert DeadManSwitch(ALICE, None, True, 11_000) in fired
    assert ex.orders == {} and ex.untriggered == 0 and ex.dead_man == {}
    assert ex.check_invariants() == []


def test_disarm_bounds_and_snapshot() -> None:
    ex = world()
    run(ex, SetDeadManSwitch(account_id=ALICE, timeout_ms=5_000), ts=2_000)
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    assert copy.dead_man == {ALICE: 7_000} and copy.state_hash() == ex.state_hash()
    assert run(ex, SetDeadManSwitch(account_id=ALICE, timeout_ms=0), ts=3_000) == [
        DeadManSwitch(ALICE, None, False, 3_000)]  # fmt: skip
    assert run(ex, Tick(), ts=8_000) == [] and len(ex.orders) == 2  # disarmed: nothing
    (r,) = rejections(run(ex, SetDeadManSwitch(account_id=ALICE, timeout_ms=86_400_001)))
    assert r.reason is Reject.INVALID_TIMEOUT
    (r,) = rejections(run(ex, SetDeadManSwitch(account_id=999, timeout_ms=1_000)))
    assert r.reason is Reject.UNKNOWN_ACCOUNT
    # the restored copy still fires at 7,000
    assert len([e for e in run(copy, Tick(), ts=7_000) if isinstance(e, OrderUpdate)]) == 2
