"""Funding: premium samples, the hourly rate, payments through clearing (by hand).

Funding here samples every 1 s and settles every 3 s (the same rate a real hour
pays); impact notional 1,000 USDC; BTC index 50,000.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from engine.accounts import FUNDING, TREASURY
from engine.commands import (
    Command,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetOraclePrices,
    Tick,
)
from engine.events import (
    Event,
    FundingPayment,
    FundingSampled,
    FundingSettled,
    Rejected,
    Transfer,
)
from engine.exchange import Exchange
from engine.funding import FundingParams, impact_price, payment, premium, settlement_rate
from engine.markets import default_config
from engine.snapshot import take_snapshot
from engine.types import LedgerReason, Side, TimeInForce
from tests.engine_helpers import run as run_cmds

USDC, BTC = 10**6, 10**8
PERP = "BTC-PERP"
ALICE, BOB, DAVE, MM = 1000, 1001, 1002, 1003


def test_rate_formula_clamp_and_cap() -> None:
    assert settlement_rate(0) == 12_500  # F = 0.01% / 8h -> 0.00125% a settlement
    # avg 0.1%: F = 0.1% + clamp(0.01% - 0.1%) = 0.1% - 0.05% = 0.05% -> /8 = 0.00625%
    assert settlement_rate(1_000_000) == 62_500
    # avg -0.2%: F = -0.2% + 0.05% = -0.15% -> /8 = -0.01875%
    assert settlement_rate(-2_000_000) == -187_500
    # avg 0.03%: F = 0.03% + clamp(-0.02%) = 0.01% exactly (inside the clamp)
    assert settlement_rate(300_000) == 12_500
    # avg 40%: F = 39.95% -> /8 = 4.99375%, capped at 4%
    assert settlement_rate(400_000_000) == 40_000_000
    assert settlement_rate(-400_000_000) == -40_000_000


def test_impact_prices_and_premium() -> None:
    bids = [(50_100 * USDC, BTC // 100), (50_000 * USDC, BTC)]  # 501 USDC at 50,100 first
    # 1,000 USDC: 0.01 BTC at 50,100 (501) + 499 / 50,000 BTC at 50,000
    qty = Fraction(BTC // 100) + Fraction(499 * USDC * BTC, 50_000 * USDC)
    assert impact_price(bids, 1_000 * USDC, BTC) == Fraction(1_000 * USDC * BTC) / qty
    assert impact_price(bids[:1], 1_000 * USDC, BTC) is None  # too thin
    # a bid above the index pushes the premium up: (50,100 - 50,000) / 50,000 = 0.2%
    assert premium(50_000 * USDC, Fraction(50_100 * USDC), Fraction(50_300 * USDC)) == 2_000_000
    # an ask below the index pushes it down
    assert premium(50_000 * USDC, Fraction(49_700 * USDC), Fraction(49_900 * USDC)) == -2_000_000
    assert premium(50_000 * USDC, None, None) == 0
    # payers round up, receivers down: 0.0003 BTC * 50,000 * 0.01875% = 2,812.5 units
    assert payment(3 * BTC // 10_000, 50_000 * USDC, 187_500, BTC) == 2_813
    assert payment(-3 * BTC // 10_000, 50_000 * USDC, 187_500, BTC) == -2_812


def run(ex: Exchange, ts: int, *cmds: Command) -> list[Event]:
    return run_cmds(ex, *cmds, ts=ts)


def perp(account: int, side: Side, size: int, price: int, **kw: object) -> PlaceOrder:
    return PlaceOrder(account_id=account, market=PERP, side=side, size=size, price=price,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def world(bid: int, ask: int) -> Exchange:
    """Alice long 0.2 BTC-PERP; Bob short 0.1999 and Dave short 0.0001, all at 50,000;
    the market maker quotes 1 BTC at `bid` / `ask`."""
    cfg = dataclasses.replace(
        default_config(),
        oracle_stale_ms=10**9,
        funding=FundingParams(1_000, 3_000, 1_000 * USDC),
    )
    ex = Exchange(cfg)
    setup = [
        *(CreateAccount(name=n, api_key="k" + n, api_secret="s") for n in ("a", "b", "d", "m")),
        *(
            Deposit(account_id=a, asset="USDC", amount=10_000 * USDC, deposit_id=str(a))
            for a in (ALICE, BOB, DAVE, MM)
        ),  # fmt: skip
        SetOraclePrices(prices=(("BTC", 50_000 * USDC),)),
        perp(BOB, Side.SELL, 1999 * BTC // 10_000, 50_000 * USDC),
        perp(DAVE, Side.SELL, BTC // 10_000, 50_000 * USDC),
        perp(ALICE, Side.BUY, BTC // 5, 50_000 * USDC, tif=TimeInForce.IOC),
        perp(MM, Side.BUY, BTC // 10, bid),
        perp(MM, Side.SELL, BTC // 10, ask),
    ]
    assert [e for e in run(ex, 100, *setup) if isinstance(e, Rejected)] == []
    return ex


def test_longs_pay_shorts_with_the_dust_to_the_treasury() -> None:
    ex = world(50_100 * USDC, 50_300 * USDC)
    assert ex.open_interest[PERP] == BTC // 5
    assert (ex.next_sample_ts, ex.next_funding_ts) == (1_000, 3_000)
    assert ex.next_deadline() == 1_000
    balances = {a: ex.balance(a, "USDC") for a in (ALICE, BOB, DAVE)}
    # each sample: impact bid 50,100 (0.1 BTC = 5,010 USDC covers 1,000), impact ask
    # 50,300 > index: premium 0.2%; F = 0.2% - 0.05% = 0.15%; a settlement pays 0.01875%
    first = run(ex, 1_000, Tick())
    # basis: (mid 50,200 - 50,000) * 1 s / 150 s = 1.333333 USDC (truncated)
    assert first == [FundingSampled(PERP, 2_000_000, 187_500, 1_333_333, BTC // 5, 3_000, 1_000)]
    run(ex, 2_000, Tick())
    settled = run(ex, 3_000, Tick())
    sampled = settled.pop(0)
    assert isinstance(sampled, FundingSampled) and sampled.premium == 2_000_000
    ref = f"funding:{PERP}:3000"
    alice_pays = 1_875_000  # 0.2 * 50,000 * 0.01875% = 1.875 USDC
    bob_gets = 1_874_062  # 0.1999 * 50,000 * 0.01875% = 1.8740625, rounded down
    dave_gets = 937  # 0.0001 * 50,000 * 0.01875% = 0.0009375, rounded down
    dust = alice_pays - bob_gets - dave_gets
    assert dust == 1
    n = ex.next_transfer_id
    assert settled == [
        Transfer(n - 4, "USDC", ALICE, FUNDING, alice_pays, LedgerReason.FUNDING, ref,
                 balances[ALICE] - alice_pays, alice_pays, 3_000),
        FundingPayment(ALICE, PERP, BTC // 5, 50_000 * USDC, 187_500, alice_pays, 3_000),
        Transfer(n - 3, "USDC", FUNDING, BOB, bob_gets, LedgerReason.FUNDING, ref,
                 alice_pays - bob_gets, balances[BOB] + bob_gets, 3_000),
        FundingPayment(BOB, PERP, -1999 * BTC // 10_000, 50_000 * USDC, 187_500, -bob_gets,
                       3_000),
        Transfer(n - 2, "USDC", FUNDING, DAVE, dave_gets, LedgerReason.FUNDING, ref,
                 dust, balances[DAVE] + dave_gets, 3_000),
        FundingPayment(DAVE, PERP, -BTC // 10_000, 50_000 * USDC, 187_500, -dave_gets, 3_000),
        Transfer(n - 1, "USDC", FUNDING, TREASURY, dust, LedgerReason.FUNDING, ref, 0, dust,
                 3_000),
        FundingSettled(PERP, 187_500, 2_000_000, 50_000 * USDC, 3, BTC // 5, dust, 3_000),
    ]  # fmt: skip
    assert ex.funding[PERP].last_rate == 187_500
    assert (ex.funding[PERP].samples, ex.funding[PERP].premium_sum) == (0, 0)
    assert (ex.next_sample_ts, ex.next_funding_ts) == (4_000, 6_000)
    assert ex.check_invariants() == []


def test_negative_funding_runs_from_shorts_to_longs() -> None:
    ex = world(49_700 * USDC, 49_900 * USDC)  # the book trades below the index
    for ts in (1_000, 2_000):
        run(ex, ts, Tick())
    events = run(ex, 3_000, Tick())
    pays = {e.account_id: e.amount for e in events if isinstance(e, FundingPayment)}
    # premium -0.2%: F = -0.2% + 0.05% = -0.15%, -0.01875% a settlement: shorts pay
    assert pays == {ALICE: -1_875_000, BOB: 1_874_063, DAVE: 938}
    (done,) = [e for e in events if isinstance(e, FundingSettled)]
    assert (done.rate, done.dust) == (-187_500, 1)
    assert ex.balance(FUNDING, "USDC") == 0
    assert ex.check_invariants() == []


def test_no_samples_without_a_fresh_index_and_no_settlement_without_samples() -> None:
    ex = world(50_100 * USDC, 50_300 * USDC)
    ex.oracle.going_stale(10**9 + 100)  # as if the feed had stopped long ago
    assert ex.next_deadline() is None  # nothing to sample, nothing to settle
    assert run(ex, 1_000, Tick()) == []
    assert run(ex, 3_000, Tick()) == []
    assert ex.funding[PERP].last_rate is None
    # an index again: sampling resumes at the next multiple of the sample interval
    run(ex, 3_500, SetOraclePrices(prices=(("BTC", 50_000 * USDC),)))
    assert ex.next_deadline() == 4_000


def test_a_missed_stretch_samples_once_and_settles_once() -> None:
    ex = world(50_100 * USDC, 50_300 * USDC)
    events = run(ex, 7_500, Tick())  # the process was down from 100 to 7,500
    assert [type(e).__name__ for e in events if not isinstance(e, Transfer)] == [
        "FundingSampled", "FundingPayment", "FundingPayment", "FundingPayment", "FundingSettled",
    ]  # fmt: skip
    assert (ex.next_sample_ts, ex.next_funding_ts) == (8_000, 9_000)


def test_funding_state_survives_a_snapshot() -> None:
    from engine.snapshot import restore_snapshot

    ex = world(50_100 * USDC, 50_300 * USDC)
    run(ex, 1_000, Tick())
    copy = restore_snapshot(Exchange(ex.config), take_snapshot(ex))
    assert take_snapshot(copy) == take_snapshot(ex)
    assert copy.open_interest == ex.open_interest
    a, b = run(ex, 3_000, Tick()), run(copy, 3_000, Tick())
    assert a == b and len(a) == 9
