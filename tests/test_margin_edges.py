"""Regression tests from a second read of the unified-margin work: each case was a
real way around the rules (a reproducing script first, then the fix)."""

from __future__ import annotations

import dataclasses

from engine.commands import (
    AmendOrder,
    BatchPlace,
    CancelOrder,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetOraclePrices,
    Withdraw,
)
from engine.events import Event, OrderUpdate, TradeEvent
from engine.exchange import Exchange
from engine.markets import default_config
from engine.risk import Level
from engine.types import OrderType, Reject, Side, TimeInForce
from tests.engine_helpers import rejections, run

USDC, BTC = 10**6, 10**8


def exchange(n: int) -> tuple[Exchange, list[int]]:
    ex = Exchange(dataclasses.replace(default_config(), oracle_stale_ms=10**12))
    run(ex, *(CreateAccount(name=f"a{i}", api_key=f"k{i}", api_secret="s") for i in range(n)))
    return ex, list(range(1000, 1000 + n))


def checked(ex: Exchange, *cmds: object) -> list[Event]:
    out: list[Event] = []
    for cmd in cmds:
        out += run(ex, cmd)  # type: ignore[arg-type]
        assert ex.check_invariants() == []
    return out


def dep(aid: int, asset: str, amount: int) -> Deposit:
    return Deposit(account_id=aid, asset=asset, amount=amount, deposit_id=f"{aid}{asset}{amount}")


def order(aid: int, market: str, side: Side, size: int, price: int | None = None,
          **kw: object) -> PlaceOrder:  # fmt: skip
    return PlaceOrder(account_id=aid, market=market, side=side, size=size, price=price,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def index(**prices: int) -> SetOraclePrices:
    return SetOraclePrices(prices=tuple(sorted(prices.items())))


def short_with_two_reduce_only_bids() -> tuple[Exchange, int]:
    """X is short 0.1 BTC-PERP with two reduce-only bids of 0.1 (each fits alone)."""
    ex, (x, mm, t) = exchange(3)
    checked(ex, *(dep(a, "USDC", 100_000 * USDC) for a in (x, mm, t)), index(BTC=50_000 * USDC),
            order(mm, "BTC-PERP", Side.BUY, BTC // 10, 50_000 * USDC),
            order(x, "BTC-PERP", Side.SELL, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC),
            order(x, "BTC-PERP", Side.BUY, BTC // 10, 49_000 * USDC, reduce_only=True),
            order(x, "BTC-PERP", Side.BUY, BTC // 10, 49_000 * USDC, reduce_only=True))
    return ex, t


def test_fok_and_atomic_legs_count_reduce_only_makers_by_what_they_may_fill() -> None:
    ex, t = short_with_two_reduce_only_bids()
    fok = order(t, "BTC-PERP", Side.SELL, BTC // 5, 49_000 * USDC, tif=TimeInForce.FOK)
    (r,) = rejections(checked(ex, fok))  # only 0.1 of the 0.2 can fill
    assert r.reason is Reject.FOK_NOT_FILLED
    leg = dataclasses.replace(fok, tif=TimeInForce.IOC)
    events = checked(ex, BatchPlace(account_id=t, orders=(leg,), atomic=True))
    assert [e.reason for e in rejections(events)] == [Reject.ATOMIC_BATCH_FAILED]
    assert not [e for e in events if isinstance(e, TradeEvent)]
    ok = checked(ex, dataclasses.replace(fok, size=BTC // 10))
    assert rejections(ok) == []
    assert sum(e.size for e in ok if isinstance(e, TradeEvent)) == BTC // 10


def test_stop_legs_are_refused_in_atomic_batches() -> None:
    ex, (mm, t) = exchange(2)
    checked(ex, dep(mm, "BTC", BTC), dep(t, "USDC", 100_000 * USDC), index(BTC=50_000 * USDC),
            order(mm, "BTC-USDC", Side.SELL, BTC // 10, 50_000 * USDC))
    legs = (order(t, "BTC-USDC", Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC),
            order(t, "BTC-PERP", Side.SELL, BTC // 10, type=OrderType.STOP_MARKET,
                  tif=TimeInForce.IOC, trigger_price=40_000 * USDC))  # fmt: skip
    events = checked(ex, BatchPlace(account_id=t, orders=legs, atomic=True))
    assert [(e.reason, e.detail) for e in rejections(events)] == [
        (Reject.ATOMIC_BATCH_FAILED, "leg 1: a stop or take-profit order waits")]
    assert ex.balance(t, "BTC") == 0 and ex.untriggered == 0  # nothing happened


def test_pending_auto_borrow_loans_hold_the_pool_liquidity_they_will_take() -> None:
    ex, (lender, t, b) = exchange(3)
    checked(ex, dep(lender, "BTC", BTC), dep(t, "USDC", 200_000 * USDC),
            dep(b, "USDC", 1_000_000 * USDC), index(BTC=50_000 * USDC),
            SetAccountSettings(account_id=t, auto_borrow=True))  # fmt: skip
    sell = order(t, "BTC-USDC", Side.SELL, 9 * BTC // 10, 50_000 * USDC)
    assert rejections(checked(ex, sell)) == []  # a short sale: 0.9 BTC to borrow on fill
    pool = ex.pools["BTC"]
    assert (pool.pending, pool.free) == (9 * BTC // 10, BTC // 10)
    (r,) = rejections(checked(ex, sell))  # a second one would pass max utilization
    assert (r.reason, r.detail) == (Reject.INSUFFICIENT_LIQUIDITY, "the BTC pool has 10000000 free")
    (r,) = rejections(checked(ex, Withdraw(account_id=lender, asset="BTC", amount=BTC,
                                           withdrawal_id="all")))  # fmt: skip
    assert r.reason is Reject.INSUFFICIENT_LIQUIDITY  # the lender may not take it away
    checked(ex, order(b, "BTC-USDC", Side.BUY, 9 * BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC))
    assert (ex.balance(t, "BTC"), pool.borrowed, pool.pending) == (-9 * BTC // 10, 9 * BTC // 10, 0)


def test_atomic_spot_legs_and_spot_amends_face_the_margin_check() -> None:
    ex, (mm, t, h, b) = exchange(4)
    checked(ex, dep(mm, "USDC", 100_000 * USDC), dep(mm, "BTC", BTC), dep(t, "USDC", 10_000 * USDC),
            dep(h, "BTC", BTC), dep(h, "USDC", 1_000 * USDC), dep(b, "USDC", 100_000 * USDC),
            index(BTC=50_000 * USDC),
            order(mm, "BTC-PERP", Side.SELL, BTC, 50_000 * USDC),
            order(t, "BTC-PERP", Side.BUY, BTC, 50_000 * USDC, tif=TimeInForce.IOC),
            order(mm, "BTC-PERP", Side.BUY, BTC, 50_000 * USDC),
            order(h, "BTC-PERP", Side.SELL, BTC, 50_000 * USDC, tif=TimeInForce.IOC),
            order(mm, "BTC-USDC", Side.SELL, BTC // 10, 90_000 * USDC))  # fmt: skip
    # T is long 1 BTC-PERP on 10,000 USDC: a buy far above the index, alone or as the only
    # leg of an atomic batch, is refused the same way
    leg = order(t, "BTC-USDC", Side.BUY, BTC // 10, 90_000 * USDC, tif=TimeInForce.IOC)
    (alone,) = rejections(checked(ex, leg))
    assert alone.reason is Reject.INSUFFICIENT_MARGIN
    (batch,) = rejections(checked(ex, BatchPlace(account_id=t, orders=(leg,), atomic=True)))
    assert (batch.reason, batch.detail) == (
        Reject.ATOMIC_BATCH_FAILED,
        "initial health after the batch would be " + alone.detail.rsplit(" ", 1)[1])
    # H holds 1 BTC against a short BTC-PERP: selling the spot for 1,000 is refused placed
    # directly, and as an amend of a sell placed at a sane price
    (r,) = rejections(checked(ex, order(h, "BTC-USDC", Side.SELL, BTC, 1_000 * USDC)))
    assert r.reason is Reject.INSUFFICIENT_MARGIN
    placed = checked(ex, order(h, "BTC-USDC", Side.SELL, BTC, 55_000 * USDC))
    oid = next(e.order.order_id for e in placed if isinstance(e, OrderUpdate))
    (r,) = rejections(checked(ex, AmendOrder(account_id=h, order_id=oid, price=1_000 * USDC)))
    assert (r.reason, r.detail.split(" would be")[0]) == (
        Reject.INSUFFICIENT_MARGIN, "initial health with the amended order filled")
    assert ex.orders[oid].price == 55_000 * USDC  # unchanged
    checked(ex, CancelOrder(account_id=h, order_id=oid))
    assert (ex.health(h)[Level.INITIAL] or 0) > 0


def test_an_order_that_borrows_can_be_repriced_to_need_less() -> None:
    ex, (lender, t) = exchange(2)
    checked(ex, dep(lender, "USDC", 1_000_000 * USDC), dep(t, "USDC", 10_000 * USDC),
            index(BTC=50_000 * USDC), SetAccountSettings(account_id=t, auto_borrow=True))
    placed = checked(ex, order(t, "BTC-USDC", Side.BUY, BTC // 2, 40_000 * USDC))
    oid = next(e.order.order_id for e in placed if isinstance(e, OrderUpdate))
    assert ex.accounts[t].available("USDC") < 0  # it holds 20,008 of 10,000: a future loan
    assert rejections(checked(ex, AmendOrder(account_id=t, order_id=oid,
                                             price=39_000 * USDC))) == []  # fmt: skip
    assert ex.pools["USDC"].pending == 19_507_800_000 - 10_000 * USDC  # 19,500 + 0.04% fee


def test_the_worst_fill_combination_is_found_across_assets() -> None:
    """A quote loan weighs more than a quote balance (1 + rate * 10 days), so two bids
    that each leave the account above zero can together do worse than either."""
    ex, (lender, debtor, t, _) = exchange(4)
    checked(ex, dep(lender, "USDC", 1_000_000 * USDC), dep(debtor, "BTC", 100 * BTC),
            index(BTC=50_000 * USDC, ETH=2_000 * USDC), dep(t, "USDC", 10_000 * USDC),
            Withdraw(account_id=debtor, asset="USDC", amount=940_000 * USDC, withdrawal_id="w",
                     allow_borrow=True),
            SetAccountSettings(account_id=t, auto_borrow=True))  # fmt: skip
    checked(ex, order(t, "BTC-USDC", Side.BUY, BTC // 5, 437_187 * USDC // 10),
            order(t, "ETH-USDC", Side.BUY, 5 * BTC, 174_875 * USDC // 100))
    acct, rates = ex.accounts[t], ex.borrow_rates()
    both = dict(acct.balances)
    for o in acct.live.values():  # both bids filled: each pays what it holds
        spec = ex.markets[o.market].spec
        both[spec.base] = both.get(spec.base, 0) + o.remaining
        both["USDC"] -= o.hold
    marks = ex._index_marks(True)
    worst = ex._health_of(both, {}, rates, Level.INITIAL, marks)
    assert worst == 9_971_489_010 and ex._initial_health(acct, {}, rates) == worst


def test_cancelled_stops_do_not_pile_up_in_the_trigger_book() -> None:
    ex, (t, mm) = exchange(2)
    checked(ex, dep(t, "USDC", 100_000 * USDC), dep(mm, "USDC", 100_000 * USDC),
            index(BTC=50_000 * USDC))
    stop = order(t, "BTC-PERP", Side.BUY, BTC // 100, type=OrderType.STOP_MARKET,
                 tif=TimeInForce.IOC, trigger_price=90_000 * USDC)  # fmt: skip
    for _ in range(500):
        placed = run(ex, stop)
        oid = next(e.order.order_id for e in placed if isinstance(e, OrderUpdate))
        run(ex, CancelOrder(account_id=t, order_id=oid))
    book = ex.triggers["BTC-PERP"]
    assert ex.untriggered == 0 and not book.ids
    assert len(book.rising) + len(book.falling) <= 64  # rebuilt as dead entries pile up
    assert ex.check_invariants() == []
