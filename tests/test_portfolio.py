"""The basis trade with auto_borrow, what-if, per-asset contributions and liquidation
prices, by hand (DESIGN sections 6 and 7).

Fees tier 0: taker 0.04%. BTC risk: initial 12%, maintenance 8%, slippage 0.5%.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from engine.commands import (
    BatchPlace,
    CancelAll,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetOraclePrices,
)
from engine.exchange import Exchange
from engine.lending import STABLE, borrow_rate_ppm
from engine.markets import default_config
from engine.portfolio import WhatIfOrder
from engine.risk import BORROW_HORIZON_MS, YEAR_MS, Level
from engine.types import OrderType, Reject, Side, TimeInForce
from tests.engine_helpers import rejections, run

USDC, BTC = 10**6, 10**8
LENDER, MM, TRADER, BOB = 1000, 1001, 1002, 1003
PX = 50_000 * USDC


def ioc(account: int, market: str, side: Side, size: int, price: int = PX) -> PlaceOrder:
    return PlaceOrder(account_id=account, market=market, side=side, size=size, price=price,
                      tif=TimeInForce.IOC)  # fmt: skip


def world() -> Exchange:
    """A lender supplies 100,000 USDC; the market maker offers 0.2 BTC spot and bids
    0.2 BTC-PERP at 50,000; the trader has 1,000 USDC and auto_borrow on."""
    ex = Exchange(dataclasses.replace(default_config(), oracle_stale_ms=10**12))
    setup = [
        *(CreateAccount(name=n, api_key=n, api_secret="s") for n in ("l", "m", "t", "b")),
        Deposit(account_id=LENDER, asset="USDC", amount=100_000 * USDC, deposit_id="l"),
        Deposit(account_id=MM, asset="USDC", amount=10_000 * USDC, deposit_id="m1"),
        Deposit(account_id=MM, asset="BTC", amount=BTC, deposit_id="m2"),
        Deposit(account_id=TRADER, asset="USDC", amount=1_000 * USDC, deposit_id="t"),
        Deposit(account_id=BOB, asset="USDC", amount=1_000 * USDC, deposit_id="b"),
        SetAccountSettings(account_id=TRADER, auto_borrow=True),
        SetOraclePrices(prices=(("BTC", PX),)),
        PlaceOrder(account_id=MM, market="BTC-USDC", side=Side.SELL, size=BTC // 5, price=PX),
        PlaceOrder(account_id=MM, market="BTC-PERP", side=Side.BUY, size=BTC // 5, price=PX),
    ]
    assert rejections(run(ex, *setup)) == []
    return ex


def loan_factor(supplied: int, borrowed: int) -> Fraction:
    """1 + borrow rate * 10 days, the weight of a loan in health (DESIGN section 7)."""
    rate = borrow_rate_ppm(STABLE, supplied, borrowed)
    return 1 + Fraction(rate * BORROW_HORIZON_MS, 10**6 * YEAR_MS)


def test_the_spot_leg_alone_is_refused_for_margin() -> None:
    ex = world()
    (r,) = rejections(run(ex, ioc(TRADER, "BTC-USDC", Side.BUY, BTC // 5)))
    # filled: USDC 1,000 - 10,000 - 4 fee = -9,004, a loan of 9,004 from a pool of
    # 112,000 supplied; BTC 0.2 worth, at the -12% shock, 0.2 * 44,000 * (1 - 0.5%) = 8,756
    usdc = -9_004 * USDC * loan_factor(112_000 * USDC, 9_004 * USDC)
    want = (usdc + 8_756 * USDC).__floor__()
    assert -250 * USDC < want < -248 * USDC
    assert (r.reason, r.detail) == (
        Reject.INSUFFICIENT_MARGIN, f"initial health with the order filled would be {want}")
    assert ex.balance(TRADER, "USDC") == 1_000 * USDC and ex.pools["USDC"].borrowed == 0


def test_the_basis_trade_borrows_ten_times_its_capital_in_one_atomic_batch() -> None:
    ex = world()
    legs = (ioc(TRADER, "BTC-USDC", Side.BUY, BTC // 5), ioc(TRADER, "BTC-PERP", Side.SELL,
                                                               BTC // 5))  # fmt: skip
    assert rejections(run(ex, BatchPlace(account_id=TRADER, orders=legs, atomic=True))) == []
    # 10,000 of BTC bought with 1,000 of capital: USDC 1,000 - 10,000 - 4 - 4 = -9,008
    assert ex.balance(TRADER, "USDC") == -9_008 * USDC
    assert ex.balance(TRADER, "BTC") == BTC // 5
    assert ex.accounts[TRADER].positions["BTC-PERP"].size == -BTC // 5
    assert ex.pools["USDC"].borrowed == 9_008 * USDC
    assert ex.check_invariants() == []
    now = ex.what_if(TRADER, [], {})["before"]
    # maintenance: BTC 0.2 spot + perp -0.2 marked at 50,000: value(P) = 10,000 - 0.002 P,
    # worst at +8% (54,000): 9,892; the loan at the pool's rate for 10 days
    # the lender, Bob, and the maker: 10,000 + 10,000 - two 0.01% maker fees of 1
    supplied = 100_000 * USDC + 1_000 * USDC + 19_998 * USDC
    loan = -9_008 * USDC * loan_factor(supplied, 9_008 * USDC)
    assert now["health"][Level.MAINTENANCE] == (loan + 9_892 * USDC).__floor__()
    assert now["health"][Level.EQUITY] == 992 * USDC
    assert now["health_by_asset"]["BTC"][Level.MAINTENANCE] == 9_892 * USDC
    assert now["health_by_asset"]["USDC"][Level.EQUITY] == -9_008 * USDC  # perp PnL 0
    for price in (40_000, 60_000):
        moved = ex.what_if(TRADER, [], {"BTC": price * USDC})["after"]
        # equity: -9,008 + 0.2 * P + 0.2 * (50,000 - P) = 992 whatever P: hedged
        assert moved["health"][Level.EQUITY] == 992 * USDC
        assert moved["health"][Level.MAINTENANCE] > 0
    # at 40,000: perp PnL +2,000; value(P) = 8,000 - 0.002 P, worst at 43,200: 7,913.6
    at_40k = ex.what_if(TRADER, [], {"BTC": 40_000 * USDC})["after"]
    assert at_40k["health"][Level.MAINTENANCE] == (loan + 9_913_600_000).__floor__()
    # liquidation: health(X) = -9,008 * f + 10,000 - 0.2 X + 0.2 X - 0.002 * 1.08 X
    # = 0 at X = (10,000 - 9,008 f) / 0.00216: about nine times the price
    zero = (10_000 * USDC + loan) / Fraction(216, 100_000)
    assert abs(now["liquidation_prices"]["BTC"] - zero) < USDC // 100


def test_liquidation_prices_of_unhedged_positions() -> None:
    ex = world()
    assert rejections(run(ex, ioc(BOB, "BTC-PERP", Side.SELL, BTC // 10))) == []  # to the MM
    view = ex.account_state(BOB)
    assert view is not None
    # Bob short 0.1 at 50,000 with 998 USDC: maintenance(X) = 998 + 5,000 - 0.1 X
    # - (0.1 * 0.08 + 0.005 * 0.1 * 1.08) X = 5,998 - 0.10854 X -> X = 55,260.7...
    zero = Fraction(5_998 * USDC * 100_000, 10_854)
    assert abs(view["liquidation_prices"]["BTC"] - zero) < USDC // 100
    (pos,) = view["positions"]
    assert (pos["base"], pos["size"]) == ("BTC", -BTC // 10)

    ex = world()
    assert rejections(run(ex, CancelAll(account_id=MM, market="BTC-PERP"),
                          PlaceOrder(account_id=MM, market="BTC-PERP", side=Side.SELL,
                                     size=BTC // 10, price=PX),
                          ioc(BOB, "BTC-PERP", Side.BUY, BTC // 10))) == []  # fmt: skip
    view = ex.account_state(BOB)
    assert view is not None
    # Bob long 0.1: maintenance(X) = 998 + 0.1 X - 5,000 - (0.1 * 0.08 + 0.005 * 0.1 * 0.92) X
    # = 0.09154 X - 4,002 -> X = 43,718.59...
    zero = Fraction(4_002 * USDC * 100_000, 9_154)
    assert abs(view["liquidation_prices"]["BTC"] - zero) < USDC // 100
    assert view["health_by_asset"]["BTC"][Level.EQUITY] == 0  # the perp's PnL is in USDC


def test_what_if_orders_and_refusals() -> None:
    ex = world()
    # Bob asks: buy 0.1 BTC-PERP at 50,000 (fee 2): maintenance = 994 + 0.1*... at the mark
    out = ex.what_if(BOB, [WhatIfOrder("BTC-PERP", Side.BUY, BTC // 10, PX)], {})
    after = out["after"]
    # long 0.1 at 50,000, USDC 998: worst at -8%: 0.1 * -4,000 - 0.5% * 4,600 = -423
    assert after["health"][Level.MAINTENANCE] == 998 * USDC - 423 * USDC
    assert out["before"]["health"][Level.MAINTENANCE] == 1_000 * USDC
    # a market order walks the book: buying 0.2 BTC spot takes the MM's 0.2 at 50,000
    out = ex.what_if(BOB, [WhatIfOrder("BTC-USDC", Side.BUY, BTC // 5, None)], {})
    assert out["after"]["health_by_asset"]["USDC"][Level.EQUITY] == 1_000 * USDC - 10_004 * USDC
    assert ex.what_if(BOB, [WhatIfOrder("BTC-USDC", Side.BUY, BTC, None)], {}) == {
        "error": (Reject.NO_LIQUIDITY, "order 0: the book cannot fill it")}  # fmt: skip
    assert ex.what_if(BOB, [WhatIfOrder("DOGE-PERP", Side.BUY, BTC, PX)], {}) == {
        "error": (Reject.UNKNOWN_MARKET, "order 0: unknown market DOGE-PERP")}  # fmt: skip
    assert ex.what_if(BOB, [], {"USDC": 1}) == {
        "error": (Reject.UNKNOWN_ASSET, "no index for USDC")}  # fmt: skip
    assert ex.balance(BOB, "USDC") == 1_000 * USDC  # nothing placed
    assert ex.check_invariants() == []


def test_turning_auto_borrow_off_is_refused_while_orders_borrow() -> None:
    ex = world()
    # a resting bid for 0.1 BTC at 49,000 holds 4,901.96 USDC of the trader's 1,000
    resting = PlaceOrder(account_id=TRADER, market="BTC-USDC", side=Side.BUY, size=BTC // 100,
                         price=49_000 * USDC, type=OrderType.LIMIT)  # fmt: skip
    assert rejections(run(ex, resting)) == []
    small = dataclasses.replace(resting, size=BTC // 10)
    assert rejections(run(ex, small)) == []  # 4,900 + fee: more than it has: a future loan
    assert ex.accounts[TRADER].available("USDC") < 0
    (r,) = rejections(run(ex, SetAccountSettings(account_id=TRADER, auto_borrow=False)))
    assert r.reason is Reject.INSUFFICIENT_BALANCE
    assert ex.check_invariants() == []
