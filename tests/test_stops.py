"""Stop and take-profit orders on the mark, and resting reduce-only orders (by hand).

BTC-PERP: tick 0.1, lot 0.0001; fees tier 0 maker 0.01%, taker 0.04%. With one
side of the book empty the mark is the index, so moving the index moves the mark.
"""

from __future__ import annotations

import dataclasses

from engine.commands import (
    AmendOrder,
    CancelOrder,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetOraclePrices,
)
from engine.events import Event, OrderUpdate, TradeEvent
from engine.exchange import Exchange
from engine.markets import default_config
from engine.snapshot import take_snapshot
from engine.types import OrderStatus, OrderType, Reject, Side, TimeInForce
from tests.engine_helpers import rejections, run

USDC, BTC = 10**6, 10**8
PERP = "BTC-PERP"
BOB, MM, CAROL = 1000, 1001, 1002


def updates(events: list[Event]) -> list[tuple[int, str, int, str | None]]:
    return [(e.order.order_id, e.order.status.value, e.order.size, e.order.cancel_reason)
            for e in events if isinstance(e, OrderUpdate)]  # fmt: skip


def order(account: int, side: Side, size: int, price: int | None = None, **kw: object
          ) -> PlaceOrder:  # fmt: skip
    return PlaceOrder(account_id=account, market=PERP, side=side, size=size, price=price,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def index(price: int) -> SetOraclePrices:
    return SetOraclePrices(prices=(("BTC", price * USDC),))


def world() -> Exchange:
    """Bob is long 0.1 BTC-PERP at 50,000, bought from the market maker; index 50,000."""
    ex = Exchange(dataclasses.replace(default_config(), oracle_stale_ms=10**12))
    setup = [
        *(CreateAccount(name=n, api_key=n, api_secret="s") for n in ("b", "m", "c")),
        *(Deposit(account_id=a, asset="USDC", amount=10_000 * USDC, deposit_id=str(a))
          for a in (BOB, MM, CAROL)),  # fmt: skip
        index(50_000),
        order(MM, Side.SELL, BTC // 10, 50_000 * USDC),
        order(BOB, Side.BUY, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC),
    ]
    assert rejections(run(ex, *setup)) == []
    assert ex.accounts[BOB].positions[PERP].size == BTC // 10
    return ex


def test_a_stop_loss_waits_then_sells_at_the_book_when_the_mark_falls() -> None:
    ex = world()
    stop = order(BOB, Side.SELL, BTC // 10, type=OrderType.STOP_MARKET, tif=TimeInForce.IOC,
                 trigger_price=49_000 * USDC, reduce_only=True)  # fmt: skip
    (r,) = rejections(run(ex, dataclasses.replace(stop, trigger_price=50_000 * USDC)))
    assert (r.reason, r.detail) == (
        Reject.WOULD_TRIGGER_IMMEDIATELY, "the mark 50000 is already past the trigger")
    placed = run(ex, stop)
    (oid, status, size, _), = updates(placed)
    assert (status, size) == ("untriggered", BTC // 10) and ex.untriggered == 1
    assert ex.markets[PERP].book.best(Side.SELL) is None  # in no book
    # a bid at 48,900 appears; the index falls to 49,500: mark 49,500, no trigger
    assert updates(run(ex, order(MM, Side.BUY, BTC, 48_900 * USDC), index(49_500)))[1:] == []
    assert ex.untriggered == 1
    # the index falls to 49,000: mark = median(49,000, 48,900, none) -> the index alone
    events = run(ex, index(49_000))
    (trade,) = [e for e in events if isinstance(e, TradeEvent)]
    assert (trade.price, trade.size, trade.taker_order_id) == (48_900 * USDC, BTC // 10, oid)
    assert updates(events) == [(oid + 1, "partially_filled", BTC, None), (oid, "filled",
                                                                           BTC // 10, None)]
    pos = ex.accounts[BOB].positions[PERP]
    assert (pos.size, pos.realized) == (0, -110 * USDC)  # 0.1 * (48,900 - 50,000)
    assert ex.untriggered == 0 and ex.check_invariants() == []


def test_take_profit_and_trigger_order() -> None:
    ex = world()
    run(ex, order(MM, Side.BUY, BTC, 50_900 * USDC))  # bids, so sells fill
    tp = order(BOB, Side.SELL, BTC // 20, 51_000 * USDC, type=OrderType.TAKE_PROFIT_LIMIT,
               trigger_price=51_000 * USDC, reduce_only=True)  # fmt: skip
    (r,) = rejections(run(ex, dataclasses.replace(tp, price=None)))
    assert r.reason is Reject.PRICE_REQUIRED
    (r,) = rejections(run(ex, dataclasses.replace(tp, trigger_price=None)))
    assert r.reason is Reject.TRIGGER_PRICE_REQUIRED
    (r,) = rejections(run(ex, order(BOB, Side.SELL, BTC // 20, 51_000 * USDC,
                                    trigger_price=51_000 * USDC)))  # fmt: skip
    assert r.reason is Reject.TRIGGER_PRICE_NOT_ALLOWED
    (r,) = rejections(run(ex, PlaceOrder(account_id=BOB, market="BTC-USDC", side=Side.SELL,
                                         size=BTC // 20, type=OrderType.STOP_MARKET,
                                         tif=TimeInForce.IOC,
                                         trigger_price=40_000 * USDC)))  # fmt: skip
    assert (r.reason, r.detail) == (
        Reject.UNSUPPORTED_ORDER_TYPE, "stop and take-profit orders are on perps only")
    (first,) = updates(run(ex, tp))  # take profit at 51,000 (limit 51,000)
    (second,) = updates(run(ex, dataclasses.replace(tp, trigger_price=50_950 * USDC)))
    # the mark is the index (no asks): it rises to 51,000: both are due; the one the mark
    # reached first (50,950) triggers first; both rest at their limit 51,000 (no bid there)
    events = run(ex, index(51_000))
    assert updates(events) == [(second[0], "open", BTC // 20, None),
                               (first[0], "open", BTC // 20, None)]  # fmt: skip
    assert ex.markets[PERP].book.best(Side.SELL).price == 51_000 * USDC
    assert ex.check_invariants() == []
    # amending a waiting order is refused; cancelling it works
    (wait,) = updates(run(ex, dataclasses.replace(tp, trigger_price=52_000 * USDC)))
    (r,) = rejections(run(ex, AmendOrder(account_id=BOB, order_id=wait[0], size=BTC // 50)))
    assert r.reason is Reject.UNSUPPORTED_ORDER_TYPE
    assert updates(run(ex, CancelOrder(account_id=BOB, order_id=wait[0]))) == [
        (wait[0], "cancelled", BTC // 20, "user")]
    assert ex.untriggered == 0 and ex.check_invariants() == []


def test_a_triggered_order_is_judged_then_and_a_gone_position_cancels_it() -> None:
    ex = world()
    # Carol (10,000 USDC) asks to buy 2 BTC when the mark rises to 51,000: fine to wait
    big = order(CAROL, Side.BUY, 2 * BTC, type=OrderType.STOP_MARKET, tif=TimeInForce.IOC,
                trigger_price=51_000 * USDC)  # fmt: skip
    (carol,) = updates(run(ex, big))
    stop = order(BOB, Side.SELL, BTC // 10, type=OrderType.STOP_MARKET, tif=TimeInForce.IOC,
                 trigger_price=49_000 * USDC, reduce_only=True)  # fmt: skip
    (bob,) = updates(run(ex, stop))
    # Bob closes his position by hand before the stop triggers
    run(ex, order(MM, Side.BUY, BTC // 10, 50_000 * USDC),
        order(BOB, Side.SELL, BTC // 10, 50_000 * USDC, tif=TimeInForce.IOC))  # fmt: skip
    assert ex.accounts[BOB].positions[PERP].size == 0
    assert rejections(run(ex, order(MM, Side.SELL, BTC, 51_500 * USDC))) == []  # to buy from
    # up to 51,000: Carol's 2 BTC (~103,000 USDC on 10,000) fails the margin check
    assert updates(run(ex, index(51_000))) == [(carol[0], "cancelled", 2 * BTC, "margin")]
    # down to 49,000 (mark: bids gone, the index): Bob's stop finds no position
    assert updates(run(ex, index(49_000))) == [(bob[0], "cancelled", BTC // 10, "reduce_only")]
    assert ex.untriggered == 0 and ex.check_invariants() == []


def test_resting_reduce_only_orders_follow_the_position() -> None:
    ex = world()
    placed = run(ex, order(BOB, Side.SELL, BTC // 10, 51_000 * USDC, reduce_only=True),
                 order(BOB, Side.SELL, BTC // 10, 51_100 * USDC, reduce_only=True))  # fmt: skip
    (a, _, _, _), (b, _, _, _) = updates(placed)
    assert ex.accounts[BOB].reduce_only == 2
    # Bob sells 0.04 elsewhere: both resting orders shrink to the 0.06 left
    events = run(ex, order(MM, Side.BUY, BTC // 25, 50_000 * USDC),
                 order(BOB, Side.SELL, BTC // 25, 50_000 * USDC, tif=TimeInForce.IOC))
    assert updates(events)[-2:] == [(a, "open", 6 * BTC // 100, None),
                                    (b, "open", 6 * BTC // 100, None)]  # fmt: skip
    # Carol buys 0.1 up to 51,100: order a fills 0.06 and closes the position; order b,
    # next in the book, may not sell more (it would open a short): it is cancelled
    events = run(ex, order(CAROL, Side.BUY, BTC // 10, 51_100 * USDC, tif=TimeInForce.IOC))
    trades = [(e.maker_order_id, e.size) for e in events if isinstance(e, TradeEvent)]
    assert trades == [(a, 6 * BTC // 100)]
    assert (b, "cancelled", 6 * BTC // 100, "reduce_only") in updates(events)
    assert ex.accounts[BOB].positions[PERP].size == 0
    assert ex.accounts[BOB].reduce_only == 0 and ex.check_invariants() == []


def test_waiting_orders_survive_a_snapshot() -> None:
    ex = world()
    run(ex, order(BOB, Side.SELL, BTC // 10, type=OrderType.STOP_MARKET, tif=TimeInForce.IOC,
                  trigger_price=49_000 * USDC, reduce_only=True),
        order(BOB, Side.SELL, BTC // 20, 52_000 * USDC, reduce_only=True))  # fmt: skip
    back = Exchange.restore(ex.config, take_snapshot(ex))
    assert back.state_hash() == ex.state_hash() and back.check_invariants() == []
    assert (back.untriggered, back.accounts[BOB].reduce_only) == (1, 2)
    run(ex, order(MM, Side.BUY, BTC, 48_000 * USDC))
    run(back, order(MM, Side.BUY, BTC, 48_000 * USDC))
    assert run(ex, index(49_000)) == run(back, index(49_000))
    assert ex.accounts[BOB].positions[PERP].size == 0 and back.state_hash() == ex.state_hash()
    assert ex.accounts[BOB].live == {}  # the stop sold the position, so the TP went
    bob_done = [o for oid in ex.done if (o := ex.order(oid)) and o.account_id == BOB]
    assert [(o.type, o.status, o.cancel_reason) for o in bob_done[-2:]] == [
        (OrderType.STOP_MARKET, OrderStatus.FILLED, None),
        (OrderType.LIMIT, OrderStatus.CANCELLED, "reduce_only"),
    ]
