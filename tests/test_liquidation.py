"""Margin calls and liquidation in the engine (DESIGN section 9, engine/liquidation.py):
cure windows, slices along the plan, the backstop, bad debt and socialized loss. Every
amount is exact; every scenario ends with every invariant holding."""

from __future__ import annotations

import dataclasses

from engine.accounts import INSURANCE
from engine.commands import (
    CancelAll,
    Command,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetMarketState,
    SetOraclePrices,
    SetRiskPlan,
    Tick,
    Withdraw,
)
from engine.events import (
    BadDebt,
    Event,
    LiquidationSlice,
    MarginStateChanged,
    OrderUpdate,
    TradeEvent,
    Transfer,
)
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.markets import default_config
from engine.risk import AssetRisk, Level
from engine.snapshot import restore_snapshot, take_snapshot
from engine.types import LedgerReason, MarginState, MarketState, Reject, Side, TimeInForce
from tests.engine_helpers import rejections
from tests.engine_helpers import run as apply_all

USDC, BTC, ETH = 10**6, 10**8, 10**8
MM, T, L1, L2 = 1000, 1001, 1002, 1003
PERP = "BTC-PERP"


LOG: dict[int, list[Event]] = {}  # every event of each exchange, for fills_equal_positions


def run(ex: Exchange, *cmds: Command, ts: int | None = None) -> list[Event]:
    out = apply_all(ex, *cmds, ts=ts)
    LOG.setdefault(id(ex), []).extend(out)
    return out


def world() -> Exchange:
    """A market maker with deep pockets, a trader with 10,000 USDC, two idle lenders."""
    cfg = dataclasses.replace(  # (no funding: not what this is about)
        default_config(), oracle_stale_ms=10**12, funding=FundingParams(10**9, 10**9, 1)
    )
    ex = Exchange(cfg)
    LOG[id(ex)] = []
    setup: list[Command] = [
        *[CreateAccount(name=n, api_key=n, api_secret="s") for n in ("mm", "t", "l1", "l2")],
        Deposit(account_id=MM, asset="USDC", amount=1_000_000 * USDC, deposit_id="mm"),
        Deposit(account_id=MM, asset="BTC", amount=100 * BTC, deposit_id="mmb"),
        Deposit(account_id=T, asset="USDC", amount=10_000 * USDC, deposit_id="t"),
        SetOraclePrices(prices=(("BTC", 50_000 * USDC), ("ETH", 3_000 * USDC))),
    ]
    assert rejections(run(ex, *setup, ts=1000)) == []
    return ex


def order(account: int, market: str, side: Side, size: int, price: int, **kw: object) -> PlaceOrder:
    return PlaceOrder(account_id=account, market=market, side=side, size=size, price=price,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def plan(window_ms: int = 0, slice_ppm: int = 1_000_000, order_: tuple[str, ...] = (),
         groups: tuple[tuple[str, ...], ...] = ()) -> SetRiskPlan:  # fmt: skip
    return SetRiskPlan(account_id=T, cure_window_ms=window_ms, max_slice_ppm=slice_ppm,
                       order=order_, hedge_groups=groups, keep_last=())  # fmt: skip


def long_one_btc(ex: Exchange, *more: Command) -> None:
    """T buys 1 BTC-PERP at 50,000 from the maker (5x on 10,000 USDC)."""
    assert rejections(run(ex, order(MM, PERP, Side.SELL, BTC, 50_000 * USDC),
                          order(T, PERP, Side.BUY, BTC, 50_000 * USDC, tif=TimeInForce.IOC),
                          *more, ts=1000)) == []  # fmt: skip


def spot_on_a_loan(ex: Exchange, *more: Command) -> None:
    """T buys 1 BTC spot at 50,000 with auto_borrow: a ~40,030 USDC loan from L1's supply."""
    assert rejections(run(ex, Deposit(account_id=L1, asset="USDC", amount=100_000 * USDC,
                                      deposit_id="l1"),
                          SetAccountSettings(account_id=T, auto_borrow=True),
                          order(MM, "BTC-USDC", Side.SELL, BTC, 50_000 * USDC),
                          order(T, "BTC-USDC", Side.BUY, BTC, 50_000 * USDC,
                                tif=TimeInForce.IOC), *more, ts=1000)) == []  # fmt: skip


def requote(ex: Exchange, mid: int, depth: int = BTC, market: str = PERP) -> None:
    """The maker quotes `depth` at mid -/+ 100 on `market`."""
    assert rejections(run(ex, CancelAll(account_id=MM, market=market),
                          order(MM, market, Side.BUY, depth, mid - 100 * USDC),
                          order(MM, market, Side.SELL, depth, mid + 100 * USDC),
                          ts=1500)) == []  # fmt: skip


def crash(ex: Exchange, price: int, ts: int = 2000) -> list[Event]:
    return run(ex, SetOraclePrices(prices=(("BTC", price),)), ts=ts)


def of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


def states(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.previous.value, e.state.value, e.reason) for e in of(events, MarginStateChanged)]


def slices(events: list[Event]) -> list[tuple[str, str, int, int, int]]:
    return [(e.market, e.side.value, e.size, e.book_size, e.backstop_size)
            for e in of(events, LiquidationSlice)]  # fmt: skip


def fills_equal_positions(ex: Exchange) -> None:
    """Every account's BTC-PERP position is the sum of its own fills (book trades and, for
    the insurance fund and the liquidated, the backstop's takeovers)."""
    moved: dict[int, int] = {}
    for e in LOG[id(ex)]:
        if isinstance(e, TradeEvent) and e.market == PERP:
            buyer, seller = ((e.taker_account, e.maker_account) if e.taker_side is Side.BUY
                             else (e.maker_account, e.taker_account))  # fmt: skip
            moved[buyer] = moved.get(buyer, 0) + e.size
            moved[seller] = moved.get(seller, 0) - e.size
        if isinstance(e, LiquidationSlice) and e.market == PERP and e.backstop_size:
            sign = 1 if e.side is Side.BUY else -1
            moved[e.account_id] = moved.get(e.account_id, 0) + sign * e.backstop_size
            moved[INSURANCE] = moved.get(INSURANCE, 0) - sign * e.backstop_size
    for aid, acct in ex.accounts.items():
        pos = acct.positions.get(PERP)
        assert (pos.size if pos else 0) == moved.get(aid, 0), aid


def test_without_a_window_slices_go_step_by_step_to_liquidation_end_and_no_further() -> None:
    ex = world()
    long_one_btc(ex, plan(slice_ppm=250_000))
    requote(ex, 43_000 * USDC)
    # at 43,000: equity 2,980, maintenance -657.8, liquidation-end -1,513.5; each step aims
    # at a quarter of 1,513.5 (378.375), sold at the maker's 42,900 bid
    events = crash(ex, 43_000 * USDC)
    assert states(events) == [("normal", "liquidating", "no_cure_window")]
    (first,) = of(events, MarginStateChanged)
    assert (first.maintenance, first.liquidation_end, first.equity) == (
        -657_800_000, -1_513_500_000, 2_980_000_000)  # fmt: skip
    assert slices(events) == [(PERP, "sell", 8_870_000, 8_870_000, 0)]
    assert ex.accounts[T].margin is not None and ex.next_deadline() == 3000
    for ts, size in ((3000, 8_870_000), (4000, 8_870_000)):
        assert slices(step := run(ex, Tick(), ts=ts)) == [(PERP, "sell", size, size, 0)]
        events += step
    last = run(ex, Tick(), ts=5000)
    events += last
    assert slices(last) == [(PERP, "sell", 8_850_000, 8_850_000, 0)]
    assert states(last) == [("liquidating", "normal", "liquidation_end_restored")]
    (done,) = of(last, MarginStateChanged)
    assert done.liquidation_end == 319_314  # >= 0, and under one lot's worth: no further
    assert ex.accounts[T].positions[PERP].size == BTC - 35_460_000
    assert [e.fee for e in of(events, LiquidationSlice)] == [9_513_075] * 3 + [9_491_625]
    assert ex.accounts[INSURANCE].balance("USDC") == 3 * 9_513_075 + 9_491_625
    assert all(t.reason is LedgerReason.LIQUIDATION for t in of(events, Transfer)
               if INSURANCE in (t.from_account, t.to_account))  # fmt: skip
    assert run(ex, Tick(), ts=6000) == []
    fills_equal_positions(ex)
    assert ex.check_invariants() == []


def test_a_margin_call_is_cured_by_a_deposit_inside_the_window() -> None:
    ex = world()
    long_one_btc(ex, plan(window_ms=60_000),
                 order(T, PERP, Side.BUY, BTC // 10, 30_000 * USDC),  # adds risk: cancelled
                 order(T, PERP, Side.SELL, BTC // 10, 60_000 * USDC, reduce_only=True))
    requote(ex, 43_000 * USDC)
    events = crash(ex, 43_000 * USDC)
    assert states(events) == [("normal", "margin_call", "maintenance_below_zero")]
    assert of(events, MarginStateChanged)[0].deadline == 62_000 == ex.next_deadline()
    assert [(e.order.order_id, e.order.cancel_reason) for e in of(events, OrderUpdate)] == [
        (3, "margin_call")]  # fmt: skip
    # only what does not lower initial health passes: more risk and withdrawals do not
    (r,) = rejections(run(ex, order(T, PERP, Side.BUY, BTC // 10, 43_100 * USDC,
                                    tif=TimeInForce.IOC)))  # fmt: skip
    assert r.reason is Reject.INSUFFICIENT_MARGIN
    (r,) = rejections(run(ex, Withdraw(account_id=T, asset="USDC", amount=10 * USDC,
                                       withdrawal_id="w")))  # fmt: skip
    assert r.reason is Reject.INSUFFICIENT_MARGIN
    # 1,000 more is not enough (liquidation-end still -513.5); 2,000 is
    assert states(run(ex, Deposit(account_id=T, asset="USDC", amount=1_000 * USDC,
                                  deposit_id="t2"))) == []  # fmt: skip
    cured = run(ex, Deposit(account_id=T, asset="USDC", amount=1_000 * USDC, deposit_id="t3"))
    assert states(cured) == [("margin_call", "normal", "liquidation_end_restored")]
    assert of(cured, MarginStateChanged)[0].liquidation_end == 486_500_000
    assert ex.accounts[T].positions[PERP].size == BTC  # intact
    assert ex.accounts[T].margin is None and T in ex.breach.entries
    assert run(ex, Tick(), ts=62_000) == []
    assert ex.check_invariants() == []


def test_a_margin_call_is_cured_by_a_hedge_inside_the_window() -> None:
    ex = world()
    long_one_btc(ex, plan(window_ms=60_000),
                 Deposit(account_id=L1, asset="BTC", amount=5 * BTC, deposit_id="l1b"),
                 SetAccountSettings(account_id=T, auto_borrow=True))  # fmt: skip
    requote(ex, 43_000 * USDC)
    requote(ex, 43_000 * USDC, market="BTC-USDC")
    assert states(crash(ex, 43_000 * USDC)) == [
        ("normal", "margin_call", "maintenance_below_zero")]  # fmt: skip
    # selling 1 borrowed BTC spot against the long perp: the position stays, the risk goes
    hedge = run(ex, order(T, "BTC-USDC", Side.SELL, BTC, 42_900 * USDC, tif=TimeInForce.IOC))
    assert rejections(hedge) == []
    assert states(hedge) == [("margin_call", "normal", "liquidation_end_restored")]
    assert ex.accounts[T].positions[PERP].size == BTC and ex.accounts[T].balance("BTC") == -BTC
    assert ex.check_invariants() == []


def called_at_43k() -> Exchange:
    """T, long 1 BTC-PERP with a 60 s cure window, margin-called by a fall to 43,000."""
    ex = world()
    long_one_btc(ex, plan(window_ms=60_000))
    requote(ex, 43_000 * USDC)
    assert states(crash(ex, 43_000 * USDC)) == [
        ("normal", "margin_call", "maintenance_below_zero")]  # fmt: skip
    return ex


def test_the_window_expires_into_liquidation() -> None:
    ex = called_at_43k()
    assert run(ex, Tick(), ts=61_999) == []
    events = run(ex, Tick(), ts=62_000)
    assert states(events) == [("margin_call", "liquidating", "cure_window_expired"),
                              ("liquidating", "normal", "liquidation_end_restored")]  # fmt: skip
    assert slices(events) == [(PERP, "sell", 35_460_000, 35_460_000, 0)]
    assert ex.check_invariants() == []


def test_below_the_backstop_floor_liquidation_is_immediate_whatever_the_window() -> None:
    ex = world()
    long_one_btc(ex, plan(window_ms=60_000))
    requote(ex, 41_500 * USDC)
    # at 41,500: equity 1,480 <= half the requirement (1,480 + 2,030.9) / 2
    events = crash(ex, 41_500 * USDC)
    assert states(events) == [("normal", "liquidating", "below_backstop_floor"),
                              ("liquidating", "normal", "liquidation_end_restored")]  # fmt: skip
    assert slices(events) == [(PERP, "sell", 69_400_000, 69_400_000, 0)]
    assert ex.check_invariants() == []


def test_slices_follow_the_plan_order() -> None:
    def liquidated(order_: tuple[str, ...]) -> list[tuple[str, str, int, int, int]]:
        ex = world()
        long_one_btc(ex, Deposit(account_id=T, asset="USDC", amount=2_000 * USDC,
                                 deposit_id="t2"),
                     order(MM, "ETH-PERP", Side.SELL, 10 * ETH, 3_000 * USDC),
                     order(T, "ETH-PERP", Side.BUY, 10 * ETH, 3_000 * USDC, tif=TimeInForce.IOC),
                     plan(order_=order_))  # fmt: skip
        requote(ex, 43_000 * USDC)
        assert rejections(run(ex, order(MM, "ETH-PERP", Side.BUY, 100 * ETH, 2_590 * USDC),
                              ts=1500)) == []  # fmt: skip
        events = run(ex, SetOraclePrices(prices=(("BTC", 43_000 * USDC),
                                                 ("ETH", 2_600 * USDC))), ts=2000)  # fmt: skip
        assert ex.check_invariants() == []
        return slices(events)

    # same shocks for both: the greedy order ties and goes by name; the plan puts ETH first
    assert liquidated(()) == [(PERP, "sell", BTC, BTC, 0),
                              ("ETH-PERP", "sell", 776_400_000, 776_400_000, 0)]  # fmt: skip
    assert liquidated(("ETH-PERP",)) == [("ETH-PERP", "sell", 10 * ETH, 10 * ETH, 0),
                                         (PERP, "sell", 86_690_000, 86_690_000, 0)]  # fmt: skip


def test_a_hedge_group_is_reduced_pro_rata() -> None:
    ex = world()
    # 1 BTC spot on a 40,030 USDC loan, half of it hedged by a short perp
    spot_on_a_loan(ex, order(MM, PERP, Side.BUY, BTC // 2, 50_000 * USDC),
                   order(T, PERP, Side.SELL, BTC // 2, 50_000 * USDC, tif=TimeInForce.IOC),
                   plan(groups=(("BTC-USDC", PERP),)))  # fmt: skip
    requote(ex, 32_000 * USDC, depth=10 * BTC)
    requote(ex, 32_000 * USDC, depth=10 * BTC, market="BTC-USDC")
    events = crash(ex, 32_000 * USDC)
    # both legs in one step, the same share of each (0.5548 of 1 BTC, 0.2774 of 0.5)
    assert slices(events) == [("BTC-USDC", "sell", 55_480_000, 55_480_000, 0),
                              (PERP, "buy", 27_740_000, 27_740_000, 0)]  # fmt: skip
    assert ex.accounts[T].balance("BTC") == BTC - 55_480_000
    assert ex.accounts[T].positions[PERP].size == -(BTC // 2 - 27_740_000)
    assert ex.check_invariants() == []


def test_what_a_thin_book_cannot_take_the_insurance_fund_takes_over_at_the_limit() -> None:
    ex = world()
    long_one_btc(ex)
    requote(ex, 43_000 * USDC, depth=BTC // 10)
    events = crash(ex, 43_000 * USDC)
    (s,) = of(events, LiquidationSlice)
    # 0.1 from the book at 42,900, 0.308 by the fund at 43,000 - 2% = 42,140
    assert (s.size, s.book_size, s.book_notional, s.backstop_size, s.limit_price) == (
        40_800_000, 10_000_000, 4_290_000_000, 30_800_000, 42_140 * USDC)  # fmt: skip
    assert s.backstop_notional == 12_979_120_000 and s.fee == 43_172_800
    assert ex.accounts[INSURANCE].positions[PERP].size == 30_800_000
    assert ex.accounts[INSURANCE].balance("USDC") == 43_172_800
    assert states(events)[-1] == ("liquidating", "normal", "liquidation_end_restored")
    fills_equal_positions(ex)
    assert ex.check_invariants() == []


def deep_loss(fund: int) -> tuple[Exchange, list[Event]]:
    """T's 1 BTC long meets a gap to 38,000 (equity -2,020) with 0.1 BTC bid."""
    ex = world()
    run(ex, Deposit(account_id=L1, asset="USDC", amount=60_000 * USDC, deposit_id="l1"),
        Deposit(account_id=L2, asset="USDC", amount=40_000 * USDC, deposit_id="l2"),
        ts=1000)  # fmt: skip
    if fund:
        run(ex, Deposit(account_id=INSURANCE, asset="USDC", amount=fund, deposit_id="i"))
    long_one_btc(ex)
    requote(ex, 38_000 * USDC, depth=BTC // 10)
    return ex, crash(ex, 38_000 * USDC)


def test_a_deep_loss_is_paid_by_the_insurance_fund() -> None:
    ex, events = deep_loss(10_000 * USDC)
    assert slices(events) == [(PERP, "sell", BTC, 10_000_000, 90_000_000)]
    (debt,) = of(events, BadDebt)
    assert (debt.asset, debt.amount, debt.insurance, debt.socialized) == (
        "USDC", 2_808_781_000, 2_808_781_000, 0)  # fmt: skip
    # the fund: 10,000 + the 93.265 fee - the 2,808.781 debt
    assert ex.accounts[INSURANCE].balance("USDC") == 10_000 * USDC + 93_265_000 - 2_808_781_000
    assert ex.accounts[T].balances == {"USDC": 0} and ex.accounts[T].margin is None
    assert (ex.accounts[L1].balance("USDC"), ex.accounts[L2].balance("USDC")) == (
        60_000 * USDC, 40_000 * USDC)  # fmt: skip
    fills_equal_positions(ex)
    assert ex.check_invariants() == []


def test_with_the_fund_empty_suppliers_share_the_loss_pro_rata() -> None:
    ex, events = deep_loss(0)
    (debt,) = of(events, BadDebt)
    # the fund is worth only the slice's 93.265 fee and the 684 its takeover (0.9 BTC at
    # 37,240, index 38,000) is up: it pays 777.265, the three suppliers share 2,031.516
    assert (debt.amount, debt.insurance, debt.socialized, debt.suppliers) == (
        2_808_781_000, 777_265_000, 2_031_516_000, 3)  # fmt: skip
    written_off = {t.from_account: t.amount for t in of(events, Transfer)
                   if t.reason is LedgerReason.SOCIALIZED_LOSS}  # fmt: skip
    assert sum(written_off.values()) == 2_031_516_000
    supplied = {a: ex.accounts[a].balance("USDC") + written_off[a] for a in written_off}
    total = sum(supplied.values())
    for a, amount in written_off.items():  # pro rata to the last unit
        assert abs(amount * total - 2_031_516_000 * supplied[a]) < total
    assert written_off[L1] == 110_688_747 and written_off[L2] == 73_792_498
    # its quote balance went negative by what its position is worth: equity 0
    assert ex.accounts[INSURANCE].balance("USDC") == -684 * USDC
    assert ex.accounts[INSURANCE].positions[PERP].size == 90_000_000
    assert ex.accounts[T].balances == {"USDC": 0}
    assert ex.check_invariants() == []


def test_margin_cases_and_the_breach_index_survive_a_snapshot() -> None:
    ex = called_at_43k()
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    assert copy.state_hash() == ex.state_hash()
    assert copy.margin_cases == {T} and copy.breach.entries == ex.breach.entries
    assert run(copy, Tick(), ts=62_000) == run(ex, Tick(), ts=62_000)
    assert copy.state_hash() == ex.state_hash()


def test_a_stale_index_pauses_margin_calls() -> None:
    cfg = dataclasses.replace(default_config(), oracle_stale_ms=5_000,
                              funding=FundingParams(10**9, 10**9, 1))  # fmt: skip
    ex = Exchange(cfg)
    run(ex, *[CreateAccount(name=n, api_key=n, api_secret="s") for n in ("mm", "t")],
        Deposit(account_id=MM, asset="USDC", amount=1_000_000 * USDC, deposit_id="mm"),
        Deposit(account_id=T, asset="USDC", amount=10_000 * USDC, deposit_id="t"),
        SetOraclePrices(prices=(("BTC", 50_000 * USDC),)), ts=1000)  # fmt: skip
    long_one_btc(ex)
    requote(ex, 43_000 * USDC)
    run(ex, SetOraclePrices(prices=(("ETH", 3_000 * USDC),)), ts=7_000)  # BTC went stale
    assert ex.oracle.index("BTC") is None
    # T sells 0.1 at a loss with no BTC index: T cannot be judged, so it waits
    assert states(run(ex, order(T, PERP, Side.SELL, BTC // 10, 42_900 * USDC, reduce_only=True,
                                tif=TimeInForce.IOC), ts=7_100)) == []  # fmt: skip
    assert T in ex.margin_unknown and ex.accounts[T].margin is None
    events = crash(ex, 43_000 * USDC, ts=8_000)  # a fresh price: judged at once
    assert states(events)[0] == ("normal", "liquidating", "no_cure_window")
    assert T not in ex.margin_unknown
    assert ex.check_invariants() == []


def settle_funding(ex: Exchange, premium_ppb: int, ts: int) -> list[Event]:
    """One funding settlement of BTC-PERP at the next command, from one premium sample."""
    mf = ex.funding[PERP]
    mf.premium_sum, mf.samples = premium_ppb, 1
    ex.next_funding_ts = ex.next_sample_ts = ts
    return run(ex, Tick(), ts=ts)


def test_funding_within_the_allowance_needs_no_new_look_and_beyond_it_does() -> None:
    ex = world()
    long_one_btc(ex)
    # maintenance 5,750 less 3 units of rounding: a quarter is kept for payments
    spare = (5_750 * USDC - 3) // 4
    assert ex.allowance[T] == spare
    entries = ex.breach.entries[T]
    # the sample and the settling Tick's own (0) average to 0.1%: F = 0.05%, 0.00625% an
    # hour, so T pays 3.125 USDC: within the allowance
    paid = [e.amount for e in settle_funding(ex, 2_000_000, 3000) if isinstance(e, Transfer)
            and e.from_account == T]  # fmt: skip
    assert paid == [3_125_000]
    worst = 3_125_000 + -(-3_125_000 * ex._loan_extra_ppm // 1_000_000)  # as if borrowed
    assert ex.allowance[T] == spare - worst
    assert ex.breach.entries[T] is entries  # not looked at again
    # 4% an hour (the cap): 2,000 USDC is beyond the allowance, so T is indexed anew
    paid = [e.amount for e in settle_funding(ex, 10**9, 4000) if isinstance(e, Transfer)
            and e.from_account == T]  # fmt: skip
    assert paid == [2_000 * USDC]
    assert ex.breach.entries[T] != entries
    assert ex.allowance[T] == (5_750 * USDC - 3_125_000 - 2_000 * USDC - 3) // 4
    assert ex.check_invariants() == []


def test_a_trigger_recomputed_to_the_same_price_is_not_lost() -> None:
    ex = world()
    spot_on_a_loan(ex)
    # at 44,100 T's cushion is gone (its trigger is the price itself); the oracle then
    # publishes the same price again: the trigger fires and is put back unchanged
    run(ex, SetOraclePrices(prices=(("BTC", 44_100 * USDC),)))
    run(ex, SetOraclePrices(prices=(("BTC", 44_100 * USDC),)))
    assert ex.breach.entries[T] == (("BTC", 44_100 * USDC, False),)
    assert any(aid == T for _, aid in ex.breach.falls["BTC"])
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    crashed = run(ex, SetOraclePrices(prices=(("BTC", 40_000 * USDC),)))
    assert states(crashed)[0] == ("normal", "liquidating", "no_cure_window")
    assert run(copy, SetOraclePrices(prices=(("BTC", 40_000 * USDC),)), ts=ex.last_ts) == crashed
    assert copy.state_hash() == ex.state_hash()
    assert ex.check_invariants() == []


def test_a_lender_whose_share_of_a_loss_leaves_its_orders_unfunded_loses_them() -> None:
    ex = world()
    run(ex, Deposit(account_id=L1, asset="USDC", amount=60_000 * USDC, deposit_id="l1"),
        Deposit(account_id=L2, asset="USDC", amount=40_000 * USDC, deposit_id="l2"),
        ts=1000)  # fmt: skip
    # L2 bids 0.8159 BTC at 49,000: it holds 39,995.09 of its 40,000
    bid = run(ex, order(L2, "BTC-USDC", Side.BUY, 81_590_000, 49_000 * USDC), ts=1000)
    (placed,) = of(bid, OrderUpdate)
    long_one_btc(ex)
    requote(ex, 38_000 * USDC, depth=BTC // 10)
    events = crash(ex, 38_000 * USDC)
    assert of(events, BadDebt)[0].socialized == 2_031_516_000
    cancelled = [e.order for e in of(events, OrderUpdate)
                 if e.order.order_id == placed.order.order_id]  # fmt: skip
    assert [(o.status.value, o.cancel_reason) for o in cancelled] == [("cancelled", "margin")]
    assert ex.accounts[L2].hold("USDC") == 0 and ex.accounts[L2].balance("USDC") > 0
    assert ex.check_invariants() == []


# ------------------------------------------------ from the second read (each failed before)
def long_two_btc(ex: Exchange, *more: Command) -> None:
    """T holds 0.2 BTC spot and buys 2 BTC-PERP at 50,000: at 44,000 it is breached."""
    assert rejections(run(ex, Deposit(account_id=T, asset="BTC", amount=BTC // 5,
                                      deposit_id="tb"),
                          order(MM, PERP, Side.SELL, 2 * BTC, 50_000 * USDC),
                          order(T, PERP, Side.BUY, 2 * BTC, 50_000 * USDC, tif=TimeInForce.IOC),
                          *more, ts=1000)) == []  # fmt: skip


def test_orders_placed_while_liquidating_are_cancelled_by_the_next_step() -> None:
    ex = world()
    long_two_btc(ex, plan(slice_ppm=100_000, order_=("BTC-USDC",)))
    requote(ex, 44_000 * USDC, depth=10 * BTC)
    assert rejections(run(ex, order(MM, "BTC-USDC", Side.BUY, 10 * BTC, 43_900 * USDC),
                          ts=1500)) == []  # fmt: skip
    assert states(crash(ex, 44_000 * USDC)) == [("normal", "liquidating", "no_cure_window")]
    # the trader offers what BTC is left (it raises initial health: accepted)
    left = ex.accounts[T].balance("BTC")
    assert rejections(run(ex, order(T, "BTC-USDC", Side.SELL, left, 46_000 * USDC))) == []
    step = run(ex, Tick(), ts=3000)
    assert [(e.order.cancel_reason) for e in of(step, OrderUpdate)][0] == "liquidation"
    assert ex.accounts[T].hold("BTC") == 0 and not ex.accounts[T].live
    assert ex.check_invariants() == []


def test_the_plan_order_is_kept_when_legs_on_one_asset_point_the_same_way() -> None:
    ex = world()
    long_two_btc(ex, plan(order_=("BTC-USDC",)))
    requote(ex, 44_000 * USDC, depth=10 * BTC)
    assert rejections(run(ex, order(MM, "BTC-USDC", Side.BUY, 10 * BTC, 43_900 * USDC),
                          ts=1500)) == []  # fmt: skip
    events = crash(ex, 44_000 * USDC)
    # the spot first, all of it, as the plan says (not a pro rata pair with the long perp)
    assert [e.market for e in of(events, LiquidationSlice)][0] == "BTC-USDC"
    assert ex.accounts[T].balance("BTC") == 0
    assert ex.check_invariants() == []


def test_a_hedge_group_waits_for_a_closed_member_market() -> None:
    ex = world()
    assert rejections(run(ex, Deposit(account_id=T, asset="BTC", amount=BTC, deposit_id="tb"),
                          plan(groups=(("BTC-USDC", PERP),)),
                          order(MM, PERP, Side.BUY, 3 * BTC, 50_000 * USDC),
                          order(T, PERP, Side.SELL, 3 * BTC, 50_000 * USDC,
                                tif=TimeInForce.IOC), ts=1000)) == []  # fmt: skip
    requote(ex, 76_000 * USDC, depth=10 * BTC)
    run(ex, SetMarketState(market="BTC-USDC", state=MarketState.HALTED), ts=1600)
    events = crash(ex, 76_000 * USDC)
    assert states(events) == [("normal", "liquidating", "no_cure_window")]
    assert of(events, LiquidationSlice) == []  # not the perp leg alone
    assert ex.accounts[T].positions[PERP].size == -3 * BTC
    run(ex, SetMarketState(market="BTC-USDC", state=MarketState.OPEN), ts=2500)
    assert rejections(run(ex, order(MM, "BTC-USDC", Side.BUY, 10 * BTC, 75_900 * USDC),
                          ts=2600)) == []  # fmt: skip
    step = run(ex, Tick(), ts=3000)
    assert {e.market for e in of(step, LiquidationSlice)} == {"BTC-USDC", PERP}
    assert ex.check_invariants() == []


def test_a_thin_quote_far_from_the_index_does_not_move_the_slice_limit() -> None:
    ex = world()
    long_one_btc(ex, Deposit(account_id=L1, asset="USDC", amount=1_000 * USDC, deposit_id="l1"))
    # one lot each side 10% above where BTC is going pulls the perp mark up there
    assert rejections(run(ex, order(L1, PERP, Side.BUY, 10_000, 47_300 * USDC),
                          order(L1, PERP, Side.SELL, 10_000, 47_400 * USDC), ts=1500)) == []
    (s,) = of(crash(ex, 43_000 * USDC), LiquidationSlice)
    assert s.limit_price == 42_140 * USDC  # the index - 2%, not the pushed mark's
    fund = ex.accounts[INSURANCE].positions[PERP]
    assert fund.open_notional == 42_140 * USDC * fund.size // BTC  # taken over at the limit
    assert ex.check_invariants() == []


def test_a_chain_of_liquidations_longer_than_any_pass_limit_ends_in_the_same_command() -> None:
    """71 accounts, each breached by its own liquidation's fills: account k's slice sells
    BTC-PERP into account k+1's stale bid, which breaches it in turn."""
    n = 70
    risk = dict(default_config().risk)
    for a in ("BTC", "ETH"):
        risk[a] = AssetRisk(120_000, 80_000, 80_000, 5_000)  # liquidation-end = maintenance
    ex = Exchange(dataclasses.replace(default_config(), oracle_stale_ms=10**12, risk=risk,
                                      funding=FundingParams(10**9, 10**9, 1)))  # fmt: skip
    LOG[id(ex)] = []
    run(ex, CreateAccount(name="mm", api_key="mm", api_secret="s"),
        Deposit(account_id=MM, asset="USDC", amount=10**8 * USDC, deposit_id="mm"),
        SetOraclePrices(prices=(("BTC", 50_000 * USDC), ("ETH", 3_000 * USDC))),
        ts=1000)  # fmt: skip
    ids = list(range(MM + 1, MM + n + 2))
    for i in range(len(ids)):
        run(ex, CreateAccount(name=f"a{i}", api_key=f"a{i}", api_secret="s"), ts=1000)
    first = ids[0]
    assert rejections(run(ex, Deposit(account_id=first, asset="USDC", amount=26_100 * USDC,
                                      deposit_id="a0"),
                          order(MM, PERP, Side.SELL, 2 * BTC, 50_000 * USDC),
                          order(first, PERP, Side.BUY, 2 * BTC, 50_000 * USDC,
                                tif=TimeInForce.IOC), ts=1000)) == []  # fmt: skip
    for i, aid in enumerate(ids[1:], 1):
        assert rejections(run(
            ex, Deposit(account_id=aid, asset="USDC", amount=5_100 * USDC, deposit_id=f"a{i}"),
            order(MM, "ETH-PERP", Side.SELL, 10 * ETH, 3_000 * USDC),
            order(aid, "ETH-PERP", Side.BUY, 10 * ETH, 3_000 * USDC, tif=TimeInForce.IOC),
            order(aid, PERP, Side.BUY, BTC // 5, (49_990 - 10 * i) * USDC),
            SetRiskPlan(account_id=aid, cure_window_ms=0, max_slice_ppm=1_000_000,
                        order=(PERP,), hedge_groups=(), keep_last=()), ts=1000)) == []
    # ETH to where accounts 1..n have about 1 USDC of maintenance left
    rates = ex.borrow_rates()

    def cushion(eth: int) -> int | None:
        b, p = ex._portfolio(ex.accounts[ids[1]], {})
        return ex._health_of(b, p, rates, Level.MAINTENANCE, {"BTC": 50_000 * USDC, "ETH": eth})

    lo, hi = 2_000 * USDC, 3_000 * USDC
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if (cushion(mid) or 0) >= USDC else (mid, hi)
    run(ex, SetOraclePrices(prices=(("ETH", hi),)), ts=1500)
    events = crash(ex, 40_000 * USDC)
    liquidated = {e.account_id for e in of(events, MarginStateChanged)
                  if e.state is MarginState.LIQUIDATING}  # fmt: skip
    assert liquidated == set(ids)
    assert ex._touched == set() and ex.check_invariants() == []
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    assert run(ex, Tick(), ts=2500) == run(copy, Tick(), ts=2500)
    assert copy.state_hash() == ex.state_hash()
