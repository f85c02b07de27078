"""Golden scenarios for the engine, computed by hand from docs/orders.md.

Units (default_config, BTC-USDC): USDC has 6 decimals, BTC 8; tick 0.1 USDC =
100_000 units, lot = min size 0.0001 BTC = 10_000 units. A price is USDC units
per whole BTC, so notional = price * size // 10**8; with price = k ticks and
size = m lots that is k * m * 10 USDC units. Fees are ppm of notional (tier 0:
maker 100, taker 400; tier 2: maker -20, taker 250).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from engine.commands import (
    AmendOrder,
    BatchPlace,
    CancelAll,
    CancelOrder,
    Command,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetMarketState,
    Tick,
    Withdraw,
)
from engine.events import (
    BatchItem,
    Event,
    IdempotentReplay,
    OrderUpdate,
    Rejected,
    TradeEvent,
    Transfer,
)
from engine.exchange import Exchange
from engine.fixedpoint import parse_units
from engine.markets import ExchangeConfig, FeeTier, default_config
from engine.types import (
    LedgerReason,
    MarketState,
    OrderStatus,
    OrderType,
    Reject,
    Side,
    StpMode,
    TimeInForce,
)

BTC_USDC = "BTC-USDC"
FEES = 2
EXTERNAL = 1
BUY, SELL = Side.BUY, Side.SELL


def px(text: str) -> int:
    """A BTC-USDC price: USDC units per whole BTC."""
    return parse_units(text, 6)


def btc(text: str) -> int:
    return parse_units(text, 8)


def usdc(text: str) -> int:
    return parse_units(text, 6)


class Desk:
    """One engine plus helpers that stamp seq/ts and read results out of the events."""

    def __init__(self, cfg: ExchangeConfig | None = None) -> None:
        self.cfg = cfg or default_config()
        self.ex = Exchange(self.cfg)
        self.seq = 0
        self.ts = 1_000_000
        self.n = 0

    def do(self, cls: type[Command], advance: int = 1, **kw: Any) -> list[Event]:
        self.seq += 1
        self.ts += advance
        return self.ex.apply(cls(seq=self.seq, ts=self.ts, **kw))

    def account(self, tier: int = 0, **deposits: int) -> int:
        self.n += 1
        events = self.do(CreateAccount, name=f"a{self.n}", api_key=f"k{self.n}",
                         api_secret="s", tier=tier)
        acct: int = events[0].account_id  # type: ignore[attr-defined]
        for asset, amount in deposits.items():
            assert rejection(self.deposit(acct, asset, amount)) is None
        return acct

    def deposit(self, acct: int, asset: str, amount: int, dep_id: str | None = None
                ) -> list[Event]:
        self.n += 1
        return self.do(Deposit, account_id=acct, asset=asset, amount=amount,
                       deposit_id=dep_id or f"dep{self.n}")

    def place(self, acct: int, side: Side, size: int, price: int | None, **kw: Any
              ) -> list[Event]:
        kw.setdefault("market", BTC_USDC)
        return self.do(PlaceOrder, account_id=acct, side=side, size=size, price=price, **kw)

    def rest(self, acct: int, side: Side, size: int, price: int, **kw: Any) -> int:
        """Place an order that must be accepted; its order id."""
        events = self.place(acct, side, size, price, **kw)
        assert rejection(events) is None, events
        return new_order_id(events)

    def bal(self, acct: int, asset: str) -> int:
        return self.ex.balance(acct, asset)

    def hold(self, acct: int, asset: str) -> int:
        return self.ex.hold(acct, asset)

    def asks(self, market: str = BTC_USDC) -> list[tuple[int, int]]:
        return list(self.ex.book_levels(market, SELL))

    def bids(self, market: str = BTC_USDC) -> list[tuple[int, int]]:
        return list(self.ex.book_levels(market, BUY))

    def status(self, order_id: int) -> OrderStatus:
        view = self.ex.order(order_id)
        assert view is not None
        return view.status

    def check(self) -> None:
        assert self.ex.check_invariants() == []


def rejection(events: list[Event]) -> Reject | None:
    found = [e.reason for e in events if isinstance(e, Rejected)]
    assert len(found) <= 1, found
    return found[0] if found else None


def new_order_id(events: list[Event]) -> int:
    """The order a PlaceOrder created: the newest id among the updated orders."""
    return max(e.order.order_id for e in events if isinstance(e, OrderUpdate))


def trades(events: list[Event]) -> list[tuple[int, int, int, int, int, int]]:
    """(price, size, maker order, taker order, maker fee, taker fee) per trade."""
    return [(t.price, t.size, t.maker_order_id, t.taker_order_id, t.maker_fee, t.taker_fee)
            for t in events if isinstance(t, TradeEvent)]


def transfers(events: list[Event]) -> list[tuple[str, int, int, int, LedgerReason]]:
    return [(t.asset, t.from_account, t.to_account, t.amount, t.reason)
            for t in events if isinstance(t, Transfer)]


def last_view(events: list[Event], order_id: int) -> Any:
    views = [e.order for e in events if isinstance(e, OrderUpdate) and e.order.order_id == order_id]
    assert views, f"no OrderUpdate for {order_id}"
    return views[-1]


TRADE, FEE = LedgerReason.TRADE, LedgerReason.FEE


# ---------------------------------------------------------------------------- matching


def test_limit_buy_crosses_two_levels_with_every_transfer() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("100000"))
    ask1 = d.rest(seller, SELL, btc("0.0003"), px("30000"))
    ask2 = d.rest(seller, SELL, btc("0.0002"), px("30000.1"))
    assert (ask1, ask2) == (1, 2)
    assert d.asks() == [(px("30000"), 30_000), (px("30000.1"), 20_000)]
    assert d.hold(seller, "BTC") == 50_000  # a sell holds its remaining base

    events = d.place(buyer, BUY, btc("0.0004"), px("30000.1"))
    taker = new_order_id(events)
    assert taker == 3
    # fill 1: 0.0003 @ 30000.0: notional = 300_000 ticks * 3 lots * 10 = 9_000_000
    #   taker fee = ceil(9_000_000 * 400 / 1e6) = 3600
    #   maker fee = ceil(9_000_000 * 100 / 1e6) = 900
    # fill 2: 0.0001 @ 30000.1: notional = 300_001 * 1 * 10 = 3_000_010
    #   taker: cumulative basis 3_600_000_000 + 1_200_004_000 = 4_800_004_000 -> ceil 4801,
    #          fee = 4801 - 3600 = 1201
    #   maker (order 2, first fill): ceil(300_001_000 / 1e6) = ceil(300.001) = 301
    assert trades(events) == [
        (px("30000"), 30_000, ask1, taker, 900, 3600),
        (px("30000.1"), 10_000, ask2, taker, 301, 1201),
    ]
    assert transfers(events) == [
        ("USDC", buyer, seller, 9_000_000, TRADE),
        ("BTC", seller, buyer, 30_000, TRADE),
        ("USDC", buyer, FEES, 3600, FEE),
        ("USDC", seller, FEES, 900, FEE),
        ("USDC", buyer, seller, 3_000_010, TRADE),
        ("BTC", seller, buyer, 10_000, TRADE),
        ("USDC", buyer, FEES, 1201, FEE),
        ("USDC", seller, FEES, 301, FEE),
    ]
    first = next(e for e in events if isinstance(e, Transfer))
    # balances after the movement: buyer 100_000 USDC - 9 USDC, seller 0 + 9 USDC
    assert (first.from_balance, first.to_balance) == (usdc("100000") - 9_000_000, 9_000_000)

    # seller: +9_000_000 + 3_000_010 - 900 - 301 = 11_998_809 USDC; BTC 1e8 - 40_000
    assert d.bal(seller, "USDC") == 11_998_809
    assert d.bal(seller, "BTC") == 100_000_000 - 40_000
    # buyer: 1e11 - 12_000_010 - 4801 = 99_987_995_189 USDC; 40_000 BTC
    assert d.bal(buyer, "USDC") == 100_000_000_000 - 12_000_010 - 4801 == 99_987_995_189
    assert d.bal(buyer, "BTC") == 40_000
    assert d.bal(FEES, "USDC") == 3600 + 900 + 1201 + 301 == 6002
    assert d.bal(EXTERNAL, "USDC") == -100_000_000_000
    assert d.hold(buyer, "USDC") == 0  # the taker is filled, its hold released
    assert d.hold(seller, "BTC") == 10_000  # order 2 still has 0.0001 left
    assert d.asks() == [(px("30000.1"), 10_000)]
    assert d.bids() == []
    assert d.status(taker) is OrderStatus.FILLED
    assert d.status(ask1) is OrderStatus.FILLED
    assert d.status(ask2) is OrderStatus.PARTIALLY_FILLED
    view = d.ex.order(taker)
    assert view is not None
    assert (view.filled, view.filled_notional) == (40_000, 12_000_010)
    d.check()


def test_fees_are_cumulative_per_order_not_per_fill() -> None:
    d = Desk()
    s1 = d.account(BTC=btc("1"))
    s2 = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("1000"))
    a = d.rest(s1, SELL, btc("0.0001"), px("30000.1"))
    b = d.rest(s2, SELL, btc("0.0001"), px("30000.1"))
    events = d.place(buyer, BUY, btc("0.0002"), px("30000.1"))
    t = new_order_id(events)
    # each fill: notional 3_000_010; taker 400 ppm -> 1200.004 per fill.
    # per-fill ceil would charge 1201 + 1201 = 2402; cumulative: fill 1 ceil(1200.004) = 1201,
    # fill 2 ceil(2400.008) - 1201 = 2401 - 1201 = 1200.
    # makers are separate orders: ceil(300.001) = 301 each.
    assert trades(events) == [
        (px("30000.1"), 10_000, a, t, 301, 1201),
        (px("30000.1"), 10_000, b, t, 301, 1200),
    ]
    assert d.bal(buyer, "USDC") == usdc("1000") - 2 * 3_000_010 - 2401

    # one maker order filled in two pieces: 301 then ceil(600.002) - 301 = 300
    m = d.rest(s1, SELL, btc("0.0002"), px("30000.1"))
    e1 = d.place(buyer, BUY, btc("0.0001"), px("30000.1"))
    e2 = d.place(buyer, BUY, btc("0.0001"), px("30000.1"))
    assert [x[4] for x in trades(e1) + trades(e2)] == [301, 300]
    assert [x[2] for x in trades(e1) + trades(e2)] == [m, m]
    # the two takers are separate orders: 1201 each
    assert [x[5] for x in trades(e1) + trades(e2)] == [1201, 1201]
    d.check()


def test_rebate_tier_rounds_down_cumulatively() -> None:
    d = Desk()  # default_config tier 2: maker -20 ppm, taker 250 ppm
    maker = d.account(tier=2, BTC=btc("1"))
    taker = d.account(USDC=usdc("1000"))
    m = d.rest(maker, SELL, btc("0.0002"), px("30300"))
    e1 = d.place(taker, BUY, btc("0.0001"), px("30300"))
    # notional = 303_000 ticks * 1 lot * 10 = 3_030_000
    # rebate basis 3_030_000 * 20 = 60_600_000 -> floor(60.6) = 60 -> maker_fee -60
    # taker (tier 0): 3_030_000 * 400 / 1e6 = 1212 exactly
    assert trades(e1) == [(px("30300"), 10_000, m, new_order_id(e1), -60, 1212)]
    assert transfers(e1) == [
        ("USDC", taker, maker, 3_030_000, TRADE),
        ("BTC", maker, taker, 10_000, TRADE),
        ("USDC", taker, FEES, 1212, FEE),
        ("USDC", FEES, maker, 60, FEE),  # the rebate is paid by the fees account
    ]
    e2 = d.place(taker, BUY, btc("0.0001"), px("30300"))
    # cumulative: floor(121.2) = 121, so the second fill pays 121 - 60 = 61
    assert trades(e2) == [(px("30300"), 10_000, m, new_order_id(e2), -61, 1212)]
    assert d.bal(maker, "USDC") == 2 * 3_030_000 + 121
    assert d.bal(FEES, "USDC") == 2 * 1212 - 121
    d.check()


def test_zero_fee_movements_are_skipped() -> None:
    cfg = dataclasses.replace(default_config(), fee_tiers={0: FeeTier(0, 400)})
    d = Desk(cfg)
    maker = d.account(BTC=btc("1"))
    taker = d.account(USDC=usdc("1000"))
    m = d.rest(maker, SELL, btc("0.0001"), px("30000"))
    events = d.place(taker, BUY, btc("0.0001"), px("30000"))
    # notional 3_000_000; maker fee 0 -> no transfer; taker 1200
    assert trades(events) == [(px("30000"), 10_000, m, new_order_id(events), 0, 1200)]
    assert transfers(events) == [
        ("USDC", taker, maker, 3_000_000, TRADE),
        ("BTC", maker, taker, 10_000, TRADE),
        ("USDC", taker, FEES, 1200, FEE),
    ]


# ---------------------------------------------------------------------------- holds


def test_hold_of_a_resting_buy_includes_the_fee_reserve() -> None:
    d = Desk()
    # buy 0.0003 @ 29999.9: notional = 299_999 * 3 * 10 = 8_999_970
    # reserve = ceil(8_999_970 * 400 / 1e6) = ceil(3599.988) = 3600 -> hold 9_003_570
    buyer = d.account(USDC=9_003_569)
    seller = d.account(BTC=btc("1"))
    events = d.place(buyer, BUY, btc("0.0003"), px("29999.9"))
    assert rejection(events) is Reject.INSUFFICIENT_BALANCE  # one unit short
    assert d.ex.order(1) is None  # a refused order gets no id
    d.deposit(buyer, "USDC", 1)
    bid = d.rest(buyer, BUY, btc("0.0003"), px("29999.9"))
    assert bid == 1
    assert d.hold(buyer, "USDC") == 9_003_570
    assert d.bal(buyer, "USDC") - d.hold(buyer, "USDC") == 0
    # now nothing is available: even a withdrawal of 1 unit is refused
    assert rejection(d.do(Withdraw, account_id=buyer, asset="USDC", amount=1,
                          withdrawal_id="w1")) is Reject.INSUFFICIENT_BALANCE

    # a maker fill of 0.0001: notional 2_999_990, maker fee ceil(299.999) = 300
    events = d.place(seller, SELL, btc("0.0001"), px("29999.9"))
    assert trades(events) == [(px("29999.9"), 10_000, bid, new_order_id(events), 300, 1200)]
    # (taker fee: 2_999_990 * 400 / 1e6 = 1199.996 -> 1200)
    # new hold: notional(limit, 0.0002) = 5_999_980;
    #   reserve = ceil((B + 5_999_980 * 400) / 1e6) - fees_paid
    #           = ceil((299_999_000 + 2_399_992_000) / 1e6) - 300 = 2700 - 300 = 2400
    assert d.hold(buyer, "USDC") == 5_999_980 + 2400 == 6_002_380
    # the hold fell by 3_001_190, at least the 2_999_990 + 300 the fill cost
    assert d.bal(buyer, "USDC") == 9_003_570 - 2_999_990 - 300
    assert d.bal(buyer, "USDC") - d.hold(buyer, "USDC") == 900
    d.check()


def test_hold_of_a_rebate_tier_buy_uses_the_taker_rate() -> None:
    d = Desk()
    buyer = d.account(tier=2, USDC=usdc("100"))
    d.rest(buyer, BUY, btc("0.0003"), px("29999.9"))
    # R = max(-20, 250, 0) = 250: 8_999_970 + ceil(8_999_970 * 250 / 1e6) = ceil(2249.9925)
    assert d.hold(buyer, "USDC") == 8_999_970 + 2250


def test_tier_change_never_makes_available_negative() -> None:
    """docs: "nothing can make `available` negative", whatever the operator does to tiers."""
    d = Desk()
    # tier 2 reserves at R = 250: 8_999_970 + ceil(8_999_970 * 250 / 1e6) = 8_999_970 + 2250
    buyer = d.account(tier=2, USDC=8_999_970 + 2250)
    seller = d.account(BTC=btc("1"))
    d.rest(buyer, BUY, btc("0.0003"), px("29999.9"))
    assert d.hold(buyer, "USDC") == 9_002_220
    d.do(SetAccountSettings, account_id=buyer, tier=0)  # now maker 100, taker 400
    d.check()
    d.place(seller, SELL, btc("0.0001"), px("29999.9"))  # a maker fill of the buy
    assert d.bal(buyer, "USDC") - d.hold(buyer, "USDC") >= 0
    d.check()
    d.place(seller, SELL, btc("0.0002"), px("29999.9"))
    assert d.bal(buyer, "USDC") >= 0
    d.check()


# ---------------------------------------------------------------------------- STP


def _stp_book(d: Desk) -> tuple[int, int, int, int]:
    """Own ask 0.0002 @ 30000.0 (order 1) and another account's 0.0001 @ 30000.1 (order 2)."""
    me = d.account(BTC=btc("1"), USDC=usdc("1000"))
    other = d.account(BTC=btc("1"))
    own = d.rest(me, SELL, btc("0.0002"), px("30000"))
    theirs = d.rest(other, SELL, btc("0.0001"), px("30000.1"))
    return me, other, own, theirs


def test_stp_cancel_taker() -> None:
    d = Desk()
    me, _, own, theirs = _stp_book(d)
    events = d.place(me, BUY, btc("0.0003"), px("30000.1"), stp=StpMode.CANCEL_TAKER)
    t = new_order_id(events)
    assert trades(events) == [] and transfers(events) == []
    view = last_view(events, t)
    assert (view.status, view.filled, view.cancel_reason) == (
        OrderStatus.CANCELLED, 0, "self_trade_prevention")
    assert d.asks() == [(px("30000"), 20_000), (px("30000.1"), 10_000)]
    assert d.bids() == []
    assert d.hold(me, "USDC") == 0 and d.hold(me, "BTC") == 20_000
    d.check()


def test_stp_default_mode_is_cancel_taker() -> None:
    d = Desk()
    me, _, own, _ = _stp_book(d)
    events = d.place(me, BUY, btc("0.0001"), px("30000"))
    assert trades(events) == []
    assert d.status(new_order_id(events)) is OrderStatus.CANCELLED
    assert d.status(own) is OrderStatus.OPEN


def test_stp_cancel_maker() -> None:
    d = Desk()
    me, other, own, theirs = _stp_book(d)
    events = d.place(me, BUY, btc("0.0003"), px("30000.1"), stp=StpMode.CANCEL_MAKER)
    t = new_order_id(events)
    # own ask cancelled, 0.0001 traded with the other account, 0.0002 rests at 30000.1
    assert last_view(events, own).cancel_reason == "self_trade_prevention"
    assert d.status(own) is OrderStatus.CANCELLED
    # notional 3_000_010: maker ceil(300.001) = 301, taker ceil(1200.004) = 1201
    assert trades(events) == [(px("30000.1"), 10_000, theirs, t, 301, 1201)]
    assert d.asks() == []
    assert d.bids() == [(px("30000.1"), 20_000)]
    assert d.status(t) is OrderStatus.PARTIALLY_FILLED
    # hold of the rest: 6_000_020 + ceil((1_200_004_000 + 6_000_020 * 400) / 1e6) - 1201
    #                 = 6_000_020 + ceil(3600.012) - 1201 = 6_000_020 + 2400
    assert d.hold(me, "USDC") == 6_002_420
    assert d.hold(me, "BTC") == 0
    d.check()


def test_stp_cancel_both() -> None:
    d = Desk()
    me, _, own, theirs = _stp_book(d)
    events = d.place(me, BUY, btc("0.0003"), px("30000.1"), stp=StpMode.CANCEL_BOTH)
    t = new_order_id(events)
    assert trades(events) == []
    assert d.status(own) is OrderStatus.CANCELLED
    assert d.status(t) is OrderStatus.CANCELLED
    assert d.status(theirs) is OrderStatus.OPEN
    assert d.asks() == [(px("30000.1"), 10_000)]
    assert d.hold(me, "BTC") == 0 and d.hold(me, "USDC") == 0
    d.check()


def test_stp_decrement() -> None:
    d = Desk()
    me, _, own, theirs = _stp_book(d)
    events = d.place(me, BUY, btc("0.0003"), px("30000.1"), stp=StpMode.DECREMENT)
    t = new_order_id(events)
    # both shrink by min(0.0003, 0.0002) = 0.0002: own ask left with 0 -> cancelled;
    # the taker (now 0.0001) goes on and trades with the other account's ask
    own_view = last_view(events, own)
    assert (own_view.status, own_view.cancel_reason) == (
        OrderStatus.CANCELLED, "self_trade_prevention")
    assert trades(events) == [(px("30000.1"), 10_000, theirs, t, 301, 1201)]
    view = last_view(events, t)
    assert (view.size, view.filled, view.status) == (10_000, 10_000, OrderStatus.FILLED)
    assert d.asks() == [] and d.bids() == []
    assert d.hold(me, "BTC") == 0 and d.hold(me, "USDC") == 0
    d.check()


def test_stp_decrement_smaller_taker_and_account_default() -> None:
    d = Desk()
    me, _, own, _ = _stp_book(d)
    d.do(SetAccountSettings, account_id=me, stp=StpMode.DECREMENT)
    events = d.place(me, BUY, btc("0.0001"), px("30000.1"))  # no stp: the account's
    t = new_order_id(events)
    assert trades(events) == []
    # the maker shrinks to 0.0001 and stays; the taker is left with nothing: cancelled
    assert d.status(t) is OrderStatus.CANCELLED
    view = d.ex.order(own)
    assert view is not None and (view.size, view.status) == (10_000, OrderStatus.OPEN)
    assert d.asks() == [(px("30000"), 10_000), (px("30000.1"), 10_000)]
    assert d.hold(me, "BTC") == 10_000
    d.check()


# ---------------------------------------------------------------------------- FOK, post-only


def test_fok_refused_leaves_the_book_unchanged() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("1000"))
    d.rest(seller, SELL, btc("0.0001"), px("30000"))
    d.rest(seller, SELL, btc("0.0001"), px("30000.1"))
    before = (d.asks(), d.bal(buyer, "USDC"), d.hold(seller, "BTC"))
    events = d.place(buyer, BUY, btc("0.0003"), px("30000.1"), tif=TimeInForce.FOK)
    assert rejection(events) is Reject.FOK_NOT_FILLED
    assert trades(events) == [] and transfers(events) == []
    assert not any(isinstance(e, OrderUpdate) for e in events)
    assert (d.asks(), d.bal(buyer, "USDC"), d.hold(seller, "BTC")) == before
    # no id was used: the next accepted order is 3
    events = d.place(buyer, BUY, btc("0.0002"), px("30000.1"), tif=TimeInForce.FOK)
    assert new_order_id(events) == 3
    assert [t[1] for t in trades(events)] == [10_000, 10_000]
    assert d.asks() == []
    d.check()


def test_fok_walk_and_own_orders() -> None:
    d = Desk()
    me = d.account(BTC=btc("1"), USDC=usdc("1000"))
    other = d.account(BTC=btc("1"))
    own = d.rest(me, SELL, btc("0.0001"), px("30000"))
    theirs = d.rest(other, SELL, btc("0.0002"), px("30000.1"))
    # cancel_taker (and any mode but cancel_maker): the walk stops at the own order
    for mode in (StpMode.CANCEL_TAKER, StpMode.DECREMENT, StpMode.CANCEL_BOTH):
        events = d.place(me, BUY, btc("0.0002"), px("30000.1"), tif=TimeInForce.FOK, stp=mode)
        assert rejection(events) is Reject.FOK_NOT_FILLED, mode
    # cancel_maker: the own order is skipped, 0.0002 is there at 30000.1
    events = d.place(me, BUY, btc("0.0002"), px("30000.1"), tif=TimeInForce.FOK,
                     stp=StpMode.CANCEL_MAKER)
    assert rejection(events) is None
    assert trades(events) == [(px("30000.1"), 20_000, theirs, new_order_id(events),
                               601, 2401)]  # 6_000_020: 600.002 -> 601, 2400.008 -> 2401
    assert d.status(own) is OrderStatus.CANCELLED
    d.check()


def test_post_only_refused_when_it_would_take() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("1000"))
    d.rest(seller, SELL, btc("0.0001"), px("30000"))
    events = d.place(buyer, BUY, btc("0.0001"), px("30000"), tif=TimeInForce.POST_ONLY)
    assert rejection(events) is Reject.POST_ONLY_WOULD_TAKE
    assert d.hold(buyer, "USDC") == 0
    bid = d.rest(buyer, BUY, btc("0.0001"), px("29999.9"), tif=TimeInForce.POST_ONLY)
    assert d.bids() == [(px("29999.9"), 10_000)]
    assert d.status(bid) is OrderStatus.OPEN


# ---------------------------------------------------------------------------- amend


def _two_asks(d: Desk) -> tuple[int, int, int, int, int]:
    s1 = d.account(BTC=btc("1"))
    s2 = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("1000"))
    first = d.rest(s1, SELL, btc("0.0002"), px("30000"))
    second = d.rest(s2, SELL, btc("0.0002"), px("30000"))
    return s1, s2, buyer, first, second


def test_amend_size_down_keeps_priority() -> None:
    d = Desk()
    s1, _, buyer, first, second = _two_asks(d)
    events = d.do(AmendOrder, account_id=s1, order_id=first, size=btc("0.0001"))
    assert rejection(events) is None
    assert last_view(events, first).size == 10_000
    assert d.hold(s1, "BTC") == 10_000
    events = d.place(buyer, BUY, btc("0.0001"), px("30000"))
    assert [t[2] for t in trades(events)] == [first]  # still first in the queue


def test_amend_size_up_loses_priority() -> None:
    d = Desk()
    s1, _, buyer, first, second = _two_asks(d)
    events = d.do(AmendOrder, account_id=s1, order_id=first, size=btc("0.0003"))
    assert rejection(events) is None
    assert d.asks() == [(px("30000"), 50_000)]
    events = d.place(buyer, BUY, btc("0.0001"), px("30000"))
    assert [t[2] for t in trades(events)] == [second]  # now behind the other order


def test_amend_price_away_and_back_loses_priority() -> None:
    d = Desk()
    s1, _, buyer, first, second = _two_asks(d)
    assert rejection(d.do(AmendOrder, account_id=s1, order_id=first, price=px("30000.1"))) is None
    assert d.asks() == [(px("30000"), 20_000), (px("30000.1"), 20_000)]
    assert rejection(d.do(AmendOrder, account_id=s1, order_id=first, price=px("30000"))) is None
    events = d.place(buyer, BUY, btc("0.0003"), px("30000"))
    assert [(t[1], t[2]) for t in trades(events)] == [(20_000, second), (10_000, first)]


def test_amend_crossing_matches_as_taker_and_refusals() -> None:
    d = Desk()
    s1, _, buyer, first, second = _two_asks(d)
    bid = d.rest(buyer, BUY, btc("0.0001"), px("29999.9"))
    # refusals change nothing
    for kw, reason in (
        ({"price": px("29999.9")}, Reject.NOTHING_TO_AMEND),
        ({}, Reject.NOTHING_TO_AMEND),
        ({"size": 15_000}, Reject.SIZE_NOT_ON_LOT),
        ({"price": px("29999.95")}, Reject.PRICE_NOT_ON_TICK),
    ):
        events = d.do(AmendOrder, account_id=buyer, order_id=bid, **kw)
        assert rejection(events) is reason, kw
    assert rejection(d.do(AmendOrder, account_id=s1, order_id=bid, size=20_000)) is (
        Reject.ORDER_NOT_FOUND)  # not the account's order: exactly like a missing id
    assert rejection(d.do(AmendOrder, account_id=buyer, order_id=99, size=20_000)) is (
        Reject.ORDER_NOT_FOUND)
    # the bid moves up to 30000.0: it crosses and trades as a taker (taker fee 400 ppm)
    events = d.do(AmendOrder, account_id=buyer, order_id=bid, price=px("30000"))
    assert rejection(events) is None
    # notional 3_000_000: taker 1200, maker 300
    assert trades(events) == [(px("30000"), 10_000, first, bid, 300, 1200)]
    assert d.status(bid) is OrderStatus.FILLED
    assert rejection(d.do(AmendOrder, account_id=buyer, order_id=bid, size=20_000)) is (
        Reject.ORDER_NOT_LIVE)
    # a post-only order whose new price would cross is refused
    pbid = d.rest(buyer, BUY, btc("0.0001"), px("29999"), tif=TimeInForce.POST_ONLY)
    events = d.do(AmendOrder, account_id=buyer, order_id=pbid, price=px("30000"))
    assert rejection(events) is Reject.POST_ONLY_WOULD_TAKE
    view = d.ex.order(pbid)
    assert view is not None and view.price == px("29999")
    d.check()


def test_amend_above_filled_and_insufficient_balance() -> None:
    d = Desk()
    seller = d.account(BTC=btc("0.0003"))
    buyer = d.account(USDC=usdc("1000"))
    ask = d.rest(seller, SELL, btc("0.0002"), px("30000"))
    d.place(buyer, BUY, btc("0.0001"), px("30000"))  # fills 0.0001 of the ask
    events = d.do(AmendOrder, account_id=seller, order_id=ask, size=btc("0.0001"))
    assert rejection(events) is Reject.AMEND_SIZE_NOT_ABOVE_FILLED
    # balance 0.0002 BTC, held 0.0001 (the remaining), so 0.0001 is available.
    # size 0.0005 -> remaining 0.0004: the hold grows by 0.0003 > 0.0001: refused
    events = d.do(AmendOrder, account_id=seller, order_id=ask, size=btc("0.0005"))
    assert rejection(events) is Reject.INSUFFICIENT_BALANCE
    assert d.hold(seller, "BTC") == 10_000
    # size 0.0003 -> remaining 0.0002: the hold grows by exactly the available 0.0001
    events = d.do(AmendOrder, account_id=seller, order_id=ask, size=btc("0.0003"))
    assert rejection(events) is None
    assert d.hold(seller, "BTC") == 20_000
    assert d.bal(seller, "BTC") - d.hold(seller, "BTC") == 0
    d.check()


# ---------------------------------------------------------------------------- GTT, market orders


def test_gtt_expires_at_its_time() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    expire = d.ts + 1 + 1000
    ask = d.rest(seller, SELL, btc("0.0001"), px("30000"), tif=TimeInForce.GTT,
                 expire_ts=expire)
    assert d.hold(seller, "BTC") == 10_000
    d.do(Tick, advance=expire - 1 - d.ts)
    assert d.status(ask) is OrderStatus.OPEN
    events = d.do(Tick, advance=1)  # ts == expire_ts
    assert last_view(events, ask).status is OrderStatus.EXPIRED
    assert d.status(ask) is OrderStatus.EXPIRED
    assert d.asks() == [] and d.hold(seller, "BTC") == 0
    # expire_ts must be in the future, and only gtt may carry one
    events = d.place(seller, SELL, btc("0.0001"), px("30000"), tif=TimeInForce.GTT,
                     expire_ts=d.ts + 1)
    assert rejection(events) is Reject.INVALID_EXPIRE_TS  # ts is d.ts + 1 == expire_ts
    events = d.place(seller, SELL, btc("0.0001"), px("30000"), expire_ts=d.ts + 100)
    assert rejection(events) is Reject.INVALID_EXPIRE_TS
    d.check()


def test_market_buy_protective_limit_rounds_up_to_the_tick() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    # best ask 30000.1 -> 30000.1 * 1.05 = 31500.105 -> rounded up to the tick: 31500.2
    for price in ("30000.1", "31500.2", "31500.3"):
        d.rest(seller, SELL, btc("0.0001"), px(price))
    # funds are checked at the protective limit: notional(31500.2, 0.0003) = 315_002 * 3 * 10
    # = 9_450_060, reserve ceil(3780.024) = 3781 -> needs 9_453_841
    buyer = d.account(USDC=9_453_840)
    events = d.place(buyer, BUY, btc("0.0003"), None, type=OrderType.MARKET,
                     tif=TimeInForce.IOC)
    assert rejection(events) is Reject.INSUFFICIENT_BALANCE
    d.deposit(buyer, "USDC", 1)
    events = d.place(buyer, BUY, btc("0.0003"), None, type=OrderType.MARKET,
                     tif=TimeInForce.IOC)
    t = new_order_id(events)
    assert [(p, s) for p, s, *_ in trades(events)] == [(px("30000.1"), 10_000),
                                                       (px("31500.2"), 10_000)]
    view = last_view(events, t)
    assert (view.status, view.filled, view.cancel_reason) == (
        OrderStatus.CANCELLED, 20_000, "ioc_remainder")
    assert d.asks() == [(px("31500.3"), 10_000)]
    assert d.hold(buyer, "USDC") == 0
    d.check()


def test_market_sell_protective_limit_rounds_down() -> None:
    d = Desk()
    buyer = d.account(USDC=usdc("1000"))
    seller = d.account(BTC=btc("1"))
    # best bid 30000.1 -> * 0.95 = 28500.095 -> rounded down: 28500.0
    for price in ("30000.1", "28500", "28499.9"):
        d.rest(buyer, BUY, btc("0.0001"), px(price))
    events = d.place(seller, SELL, btc("0.0003"), None, type=OrderType.MARKET,
                     tif=TimeInForce.IOC)
    assert [p for p, *_ in trades(events)] == [px("30000.1"), px("28500")]
    assert d.bids() == [(px("28499.9"), 10_000)]
    # the limit is at least one tick: best bid 0.1 -> 0.095 -> 0 -> one tick (0.1)
    d2 = Desk()
    b2 = d2.account(USDC=usdc("10"))
    s2 = d2.account(BTC=btc("1"))
    d2.rest(b2, BUY, btc("0.0001"), px("0.1"))
    events = d2.place(s2, SELL, btc("0.0001"), None, type=OrderType.MARKET, tif=TimeInForce.IOC)
    assert rejection(events) is None
    # notional = 1 tick * 1 lot * 10 = 10 units
    assert [(p, s) for p, s, *_ in trades(events)] == [(px("0.1"), 10_000)]
    assert transfers(events)[0] == ("USDC", b2, s2, 10, TRADE)


def test_market_order_without_liquidity_is_refused() -> None:
    d = Desk()
    buyer = d.account(USDC=usdc("1000"))
    events = d.place(buyer, BUY, btc("0.0001"), None, type=OrderType.MARKET, tif=TimeInForce.IOC)
    assert rejection(events) is Reject.NO_LIQUIDITY
    # a market order with its own protective price is accepted and cancelled unfilled
    events = d.place(buyer, BUY, btc("0.0001"), px("30000"), type=OrderType.MARKET,
                     tif=TimeInForce.IOC)
    assert rejection(events) is None
    assert last_view(events, new_order_id(events)).cancel_reason == "ioc_remainder"
    events = d.place(buyer, BUY, btc("0.0001"), None, type=OrderType.MARKET,
                     tif=TimeInForce.GTC)
    assert rejection(events) is Reject.INVALID_TIME_IN_FORCE


# ---------------------------------------------------------------------------- market states


def test_market_states() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"))
    ask = d.rest(seller, SELL, btc("0.0002"), px("30000"), client_order_id="x")
    d.do(SetMarketState, market=BTC_USDC, state=MarketState.HALTED)
    assert rejection(d.do(CancelOrder, account_id=seller, order_id=ask)) is Reject.MARKET_HALTED
    assert rejection(d.do(CancelOrder, account_id=seller, client_order_id="x")) is (
        Reject.MARKET_HALTED)
    assert rejection(d.do(AmendOrder, account_id=seller, order_id=ask, size=10_000)) is (
        Reject.MARKET_HALTED)
    assert rejection(d.place(seller, SELL, btc("0.0001"), px("30000"))) is Reject.MARKET_HALTED
    d.do(CancelAll, account_id=seller)  # outside halted markets only: nothing here
    assert d.status(ask) is OrderStatus.OPEN
    assert d.asks() == [(px("30000"), 20_000)]

    d.do(SetMarketState, market=BTC_USDC, state=MarketState.CANCEL_ONLY)
    assert rejection(d.place(seller, SELL, btc("0.0001"), px("30000"))) is (
        Reject.MARKET_CANCEL_ONLY)
    assert rejection(d.do(AmendOrder, account_id=seller, order_id=ask, size=10_000)) is (
        Reject.MARKET_CANCEL_ONLY)

    d.do(SetMarketState, market=BTC_USDC, state=MarketState.REDUCE_ONLY)
    assert rejection(d.place(seller, SELL, btc("0.0001"), px("30000"))) is (
        Reject.MARKET_REDUCE_ONLY)
    assert rejection(d.do(AmendOrder, account_id=seller, order_id=ask, size=10_000)) is None
    assert rejection(d.do(CancelOrder, account_id=seller, client_order_id="x")) is None
    assert d.status(ask) is OrderStatus.CANCELLED
    assert rejection(d.do(CancelOrder, account_id=seller, order_id=ask)) is Reject.ORDER_NOT_LIVE
    d.check()


def test_finished_orders_are_remembered_for_a_window() -> None:
    """A finished order stays known (ORDER_NOT_LIVE) while it is among the last 10,000
    finished orders; older ones are ORDER_NOT_FOUND to the engine (bounded state), while the
    database keeps every order for queries (docs/orders.md)."""
    d = Desk()
    buyer = d.account(USDC=usdc("1000"))
    first = d.rest(buyer, BUY, btc("0.0001"), px("29000"))
    assert rejection(d.do(CancelOrder, account_id=buyer, order_id=first)) is None
    for _ in range(9_998):  # IOC orders on an empty book: accepted, then cancelled
        d.place(buyer, BUY, btc("0.0001"), px("29000"), tif=TimeInForce.IOC)
    view = d.ex.order(first)
    assert view is not None and view.status is OrderStatus.CANCELLED
    assert rejection(d.do(CancelOrder, account_id=buyer, order_id=first)) is (
        Reject.ORDER_NOT_LIVE)
    for _ in range(2):  # the 10,001st finished order pushes the first one out
        d.place(buyer, BUY, btc("0.0001"), px("29000"), tif=TimeInForce.IOC)
    assert d.ex.order(first) is None
    assert rejection(d.do(CancelOrder, account_id=buyer, order_id=first)) is (
        Reject.ORDER_NOT_FOUND)


def test_an_order_finishing_pushes_the_oldest_out_of_the_window_at_once() -> None:
    """The window moves as orders finish, not when their command ends: a GTT order that
    expires at the start of a command pushes the oldest finished order out before the
    command's cancel looks that one up (ORDER_NOT_FOUND, as for any evicted order)."""
    d = Desk()
    buyer = d.account(USDC=usdc("1000"))
    first = d.rest(buyer, BUY, btc("0.0001"), px("29000"))
    gtt = d.rest(buyer, BUY, btc("0.0001"), px("28000"), tif=TimeInForce.GTT,
                 expire_ts=d.ts + 1_000_000)
    assert rejection(d.do(CancelOrder, account_id=buyer, order_id=first)) is None
    for _ in range(9_999):  # the window is full, `first` its oldest
        d.place(buyer, BUY, btc("0.0001"), px("29000"), tif=TimeInForce.IOC)
    assert len(d.ex.done) == 10_000 and next(iter(d.ex.done)) == first
    events = d.do(CancelOrder, advance=1_000_000, account_id=buyer, order_id=first)
    assert rejection(events) is Reject.ORDER_NOT_FOUND
    expired = d.ex.order(gtt)
    assert expired is not None and expired.status is OrderStatus.EXPIRED
    assert len(d.ex.done) == 10_000 and d.ex.order(first) is None
    assert d.ex.check_invariants() == []


# ---------------------------------------------------------------------------- money


def test_idempotent_deposit_and_withdrawal() -> None:
    d = Desk()
    acct = d.account()
    first = d.deposit(acct, "USDC", 5_000_000, dep_id="d-1")
    original = [e for e in first if isinstance(e, Transfer)]
    assert [(t.asset, t.from_account, t.to_account, t.amount, t.reason) for t in original] == [
        ("USDC", EXTERNAL, acct, 5_000_000, LedgerReason.DEPOSIT)]
    again = d.deposit(acct, "USDC", 5_000_000, dep_id="d-1")
    assert [e for e in again if isinstance(e, IdempotentReplay)] == [
        IdempotentReplay(original=original[0])]
    assert not any(isinstance(e, Transfer) for e in again)
    assert d.bal(acct, "USDC") == 5_000_000
    clash = d.deposit(acct, "USDC", 6_000_000, dep_id="d-1")
    assert rejection(clash) is Reject.DUPLICATE_DEPOSIT_ID
    assert rejection(d.deposit(acct, "USDC", 0)) is Reject.INVALID_AMOUNT
    assert rejection(d.deposit(acct, "DOGE", 1)) is Reject.UNKNOWN_ASSET
    assert rejection(d.deposit(999, "USDC", 1)) is Reject.UNKNOWN_ACCOUNT
    assert d.bal(acct, "USDC") == 5_000_000

    w = d.do(Withdraw, account_id=acct, asset="USDC", amount=2_000_000, withdrawal_id="w-1")
    out = [e for e in w if isinstance(e, Transfer)]
    assert [(t.from_account, t.to_account, t.amount, t.reason) for t in out] == [
        (acct, EXTERNAL, 2_000_000, LedgerReason.WITHDRAWAL)]
    w2 = d.do(Withdraw, account_id=acct, asset="USDC", amount=2_000_000, withdrawal_id="w-1")
    assert [e for e in w2 if isinstance(e, IdempotentReplay)] == [IdempotentReplay(out[0])]
    assert rejection(d.do(Withdraw, account_id=acct, asset="USDC", amount=1,
                          withdrawal_id="w-1")) is Reject.DUPLICATE_WITHDRAWAL_ID
    assert rejection(d.do(Withdraw, account_id=acct, asset="USDC", amount=3_000_001,
                          withdrawal_id="w-2")) is Reject.INSUFFICIENT_BALANCE
    assert d.bal(acct, "USDC") == 3_000_000
    assert d.bal(EXTERNAL, "USDC") == -3_000_000


# ---------------------------------------------------------------------------- batches


def test_batch_items_and_atomic_batches() -> None:
    d = Desk()
    seller = d.account(BTC=btc("1"), USDC=usdc("1000"))
    buyer = d.account(USDC=usdc("1000"))
    d.rest(seller, SELL, btc("0.0001"), px("30000"))

    def leg(**kw: Any) -> PlaceOrder:
        base: dict[str, Any] = {"seq": d.seq + 1, "ts": d.ts + 1, "account_id": buyer,
                                "market": BTC_USDC, "side": BUY, "size": 10_000}
        base.update(kw)
        return PlaceOrder(**base)

    events = d.do(BatchPlace, account_id=buyer, orders=(
        leg(price=px("29000")), leg(size=15_000, price=px("29000")), leg(price=px("29001"))))
    marks = [e.item for e in events if isinstance(e, BatchItem)]
    assert marks == [0, 1, 2]
    reasons = [e.reason for e in events if isinstance(e, Rejected)]
    assert reasons == [Reject.SIZE_NOT_ON_LOT]
    assert d.bids() == [(px("29001"), 10_000), (px("29000"), 10_000)]

    assert rejection(d.do(BatchPlace, account_id=buyer, orders=())) is Reject.BATCH_EMPTY
    assert rejection(d.do(BatchPlace, account_id=buyer, orders=tuple(
        leg(price=px("1")) for _ in range(21)))) is Reject.BATCH_TOO_LARGE
    assert rejection(d.do(BatchPlace, account_id=buyer, atomic=True, orders=(
        leg(price=px("30000")),))) is Reject.ATOMIC_LEG_NOT_IMMEDIATE
    # two IOC legs of 0.0001 at 30000 but only 0.0001 offered: nothing happens
    before = (d.asks(), d.bal(buyer, "USDC"))
    events = d.do(BatchPlace, account_id=buyer, atomic=True, orders=(
        leg(price=px("30000"), tif=TimeInForce.IOC), leg(price=px("30000"), tif=TimeInForce.IOC)))
    assert Reject.ATOMIC_BATCH_FAILED in [e.reason for e in events if isinstance(e, Rejected)]
    assert trades(events) == [] and transfers(events) == []
    assert (d.asks(), d.bal(buyer, "USDC")) == before
    # proceeds of earlier legs count: buy 0.0001 BTC, then sell that 0.0001 into a bid
    d.rest(seller, BUY, btc("0.0001"), px("29500"))  # seller's bid
    events = d.do(BatchPlace, account_id=buyer, atomic=True, orders=(
        leg(price=px("30000"), tif=TimeInForce.FOK),
        leg(side=SELL, price=px("29500"), tif=TimeInForce.IOC)))
    assert rejection(events) is None
    assert [(p, s) for p, s, *_ in trades(events)] == [(px("30000"), 10_000),
                                                       (px("29500"), 10_000)]
    assert d.bal(buyer, "BTC") == 0
    d.check()


def test_atomic_batch_legs_see_what_earlier_legs_did() -> None:
    """Legs are placed in turn: leg 0's STP cancel_maker removes my own bid, so leg 1
    (cancel_taker) no longer meets it and fills; the batch must execute."""
    d = Desk()
    me = d.account(BTC=btc("1"), USDC=usdc("1000"))
    other = d.account(USDC=usdc("1000"))
    own = d.rest(me, BUY, btc("0.0001"), px("30000"))
    theirs = d.rest(other, BUY, btc("0.0002"), px("29999.9"))
    legs = tuple(
        PlaceOrder(seq=d.seq + 1, ts=d.ts + 1, account_id=me, market=BTC_USDC, side=SELL,
                   size=btc("0.0001"), price=px("29999.9"), tif=TimeInForce.FOK, stp=mode)
        for mode in (StpMode.CANCEL_MAKER, StpMode.CANCEL_TAKER))
    events = d.do(BatchPlace, account_id=me, orders=legs, atomic=True)
    assert rejection(events) is None
    # notional 2_999_990 per fill: maker (the other account's one order) ceil(299.999) = 300,
    # then ceil(599.998) - 300 = 300; each taker leg ceil(1199.996) = 1200
    assert trades(events) == [(px("29999.9"), 10_000, theirs, 3, 300, 1200),
                              (px("29999.9"), 10_000, theirs, 4, 300, 1200)]
    assert d.status(own) is OrderStatus.CANCELLED
    d.check()


@pytest.mark.parametrize("rebate", [False, True])
def test_snapshot_restore_small(rebate: bool) -> None:
    cfg = default_config()
    if rebate:
        cfg = dataclasses.replace(cfg, fee_tiers={0: FeeTier(-20, 250)})
    d = Desk(cfg)
    seller = d.account(BTC=btc("1"))
    buyer = d.account(USDC=usdc("1000"))
    d.rest(seller, SELL, btc("0.0003"), px("30000"), tif=TimeInForce.GTT, expire_ts=d.ts + 500)
    d.place(buyer, BUY, btc("0.0001"), px("30000"))
    restored = Exchange.restore(cfg, d.ex.snapshot())
    assert restored.state_hash() == d.ex.state_hash()
    cmd = Tick(seq=d.seq + 1, ts=d.ts + 1000)
    assert restored.apply(cmd) == d.ex.apply(cmd)
    assert restored.state_hash() == d.ex.state_hash()
    assert restored.book_levels(BTC_USDC, SELL) == []
