"""Hypothesis stateful runs over the whole unified account: spot and perp orders
(stops, reduce-only, atomic hedges), borrowing by withdrawal and by auto_borrow,
index moves, time passing through funding and interest settlements. After every
command every invariant holds (engine/invariants.py: per-asset conservation to the
atomic unit, perp positions summing to zero, pools, holds, funding clearing back
at 0, reduce-only and trigger books), and a snapshot restores to the same state.

Funding here samples every second and settles every 3 s, interest every 5 s.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from engine.commands import (
    BatchPlace,
    CancelAll,
    CancelOrder,
    Command,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetOraclePrices,
    Tick,
    Withdraw,
)
from engine.events import (
    FundingSettled,
    LiquidationSlice,
    MarginStateChanged,
    OrderUpdate,
    PositionChanged,
    Rejected,
    Transfer,
)
from engine.exchange import Exchange
from engine.funding import FundingParams
from engine.markets import default_config
from engine.snapshot import take_snapshot
from engine.triggers import STOP_TYPES
from engine.types import LedgerReason, MarginState, OrderStatus, OrderType, Side, TimeInForce

USDC = 10**6
TRADERS = (1000, 1001, 1002, 1003)
MM = 1004
START = {"BTC": 50_000 * USDC, "ETH": 3_000 * USDC}
SPOT = ("BTC-USDC", "ETH-USDC")
PERPS = ("BTC-PERP", "ETH-PERP")
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
T = TypeVar("T")


Data = Any  # a hypothesis DataObject, or a random.Random in the seeded guard run


def integer(data: Data, lo: int, hi: int) -> int:
    if isinstance(data, random.Random):
        return data.randint(lo, hi)
    return int(data.draw(st.integers(lo, hi)))


def pick(data: Data, options: Sequence[T]) -> T:
    if isinstance(data, random.Random):
        return data.choice(list(options))
    return data.draw(st.sampled_from(list(options)))  # type: ignore[no-any-return]


def flip(data: Data) -> bool:
    if isinstance(data, random.Random):
        return data.random() < 0.5
    return bool(data.draw(st.booleans()))


def config() -> object:
    return dataclasses.replace(
        default_config(),
        oracle_stale_ms=60_000,
        interest_interval_ms=5_000,
        funding=FundingParams(1_000, 3_000, 1_000 * USDC),
    )


class PortfolioMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ex = Exchange(config())  # type: ignore[arg-type]
        self.ts = 1_000
        self.settled = {"funding": 0, "interest": 0, "rejected": 0, "perp_fills": 0,
                        "triggered": 0, "loans": 0, "margin_calls": 0, "slices": 0}  # fmt: skip

    def run(self, cmd: Command, step_ms: int = 7) -> None:
        self.ts += step_ms
        cmd = dataclasses.replace(cmd, seq=self.ex.last_seq + 1, ts=self.ts)
        if currently_in_test_context():
            note(repr(cmd))
        events = self.ex.apply(cmd)
        for e in events:
            if isinstance(e, FundingSettled):
                self.settled["funding"] += 1
            elif isinstance(e, Transfer) and e.reason is LedgerReason.INTEREST:
                self.settled["interest"] += 1
            elif isinstance(e, Transfer) and e.from_account in TRADERS and e.from_balance < 0:
                self.settled["loans"] += 1
            elif isinstance(e, Rejected):
                self.settled["rejected"] += 1
            elif isinstance(e, PositionChanged):
                self.settled["perp_fills"] += 1
            elif isinstance(e, MarginStateChanged) and e.previous is MarginState.NORMAL:
                self.settled["margin_calls"] += 1
            elif isinstance(e, LiquidationSlice):
                self.settled["slices"] += 1
            elif (
                isinstance(e, OrderUpdate)
                and e.order.type in STOP_TYPES
                and e.order.status is not OrderStatus.UNTRIGGERED
                and e.order.cancel_reason is None
            ):
                self.settled["triggered"] += 1
        problems = self.ex.check_invariants()
        assert problems == [], problems

    @initialize()
    def setup(self) -> None:
        for i in range(len(TRADERS) + 1):
            self.run(CreateAccount(name=f"a{i}", api_key=f"k{i}", api_secret="s"))
        self.run(SetOraclePrices(prices=tuple(sorted(START.items()))))
        for aid in TRADERS:
            self.run(Deposit(account_id=aid, asset="USDC", amount=20_000 * USDC,
                             deposit_id=f"u{aid}"))  # fmt: skip
        self.run(Deposit(account_id=TRADERS[0], asset="BTC", amount=10**8, deposit_id="b"))
        self.run(Deposit(account_id=TRADERS[1], asset="ETH", amount=10 * 10**8, deposit_id="e"))
        self.run(Deposit(account_id=MM, asset="USDC", amount=500_000 * USDC, deposit_id="m"))
        self.run(Deposit(account_id=MM, asset="BTC", amount=5 * 10**8, deposit_id="mb"))
        self.run(Deposit(account_id=MM, asset="ETH", amount=50 * 10**8, deposit_id="me"))

    def _near(self, market: str, data: Data, spread: int) -> int:
        spec = self.ex.markets[market].spec
        entry = self.ex.oracle.prices.get(spec.base)
        index = entry.price if entry is not None else START[spec.base]
        ticks = integer(data, -spread, spread)
        return max(index // spec.tick + ticks, 1) * spec.tick

    def _size(self, market: str, data: Data) -> int:
        spec = self.ex.markets[market].spec
        return spec.min_size * integer(data, 1, 40)

    @rule(data=st.data(), asset=st.sampled_from(sorted(START)))
    def move_index(self, data: Data, asset: str) -> None:
        entry = self.ex.oracle.prices.get(asset)
        price = entry.price if entry is not None else START[asset]
        move = integer(data, -500, 500)  # up to 5%
        self.run(SetOraclePrices(prices=((asset, max(price * (10_000 + move) // 10_000, 1)),)))

    @rule(data=st.data())
    def market_maker_quotes(self, data: Data) -> None:
        market = pick(data, SPOT + PERPS)
        side = pick(data, (Side.BUY, Side.SELL))
        spec = self.ex.markets[market].spec
        offset = integer(data, 1, 200) * spec.tick * (-1 if side is Side.BUY else 1)
        price = max(self._near(market, data, 0) + offset, spec.tick)
        self.run(PlaceOrder(account_id=MM, market=market, side=side, price=price,
                            size=self._size(market, data) * 5))  # fmt: skip

    @rule(data=st.data(), trader=st.sampled_from(TRADERS))
    def spot_order(self, data: Data, trader: int) -> None:
        market = pick(data, SPOT)
        self.run(PlaceOrder(
            account_id=trader, market=market, side=pick(data, list(Side)),
            size=self._size(market, data), price=self._near(market, data, 300),
            tif=pick(data, (TimeInForce.GTC, TimeInForce.IOC))))  # fmt: skip

    @rule(data=st.data(), trader=st.sampled_from(TRADERS))
    def perp_order(self, data: Data, trader: int) -> None:
        market = pick(data, PERPS)
        side = pick(data, list(Side))
        pos = self.ex.accounts[trader].positions.get(market)
        reduce = pos is not None and pos.size != 0 and flip(data)
        if reduce and pos is not None:
            side = Side.SELL if pos.size > 0 else Side.BUY
        size = self._size(market, data)
        if reduce and pos is not None:
            size = min(size, abs(pos.size))
        otype = pick(data, [OrderType.LIMIT] * 3 + sorted(STOP_TYPES))
        limit = otype in (OrderType.LIMIT, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT)
        self.run(PlaceOrder(
            account_id=trader, market=market, side=side, size=size, type=otype,
            price=self._near(market, data, 300) if limit else None,
            trigger_price=None if otype is OrderType.LIMIT else self._near(market, data, 800),
            tif=pick(data, (TimeInForce.GTC, TimeInForce.IOC)) if limit
            else TimeInForce.IOC, reduce_only=reduce))  # fmt: skip

    @rule(data=st.data(), trader=st.sampled_from(TRADERS))
    def basis_trade(self, data: Data, trader: int) -> None:
        base = pick(data, sorted(START))
        size = self._size(f"{base}-PERP", data)
        price = self._near(f"{base}-USDC", data, 200)
        legs = (
            PlaceOrder(account_id=trader, market=f"{base}-USDC", side=Side.BUY, size=size,
                       price=price, tif=TimeInForce.IOC),
            PlaceOrder(account_id=trader, market=f"{base}-PERP", side=Side.SELL, size=size,
                       price=self._near(f"{base}-PERP", data, 200), tif=TimeInForce.IOC),
        )  # fmt: skip
        self.run(BatchPlace(account_id=trader, orders=legs, atomic=True))

    @rule(data=st.data(), trader=st.sampled_from(TRADERS))
    def borrow_by_withdrawal(self, data: Data, trader: int) -> None:
        asset = pick(data, ("USDC", "BTC", "ETH"))
        unit = 10 ** self.ex.config.assets[asset].decimals
        amount = integer(data, 1, 20) * unit // 10
        self.run(Withdraw(account_id=trader, asset=asset, amount=amount,
                          withdrawal_id=f"w{self.ex.last_seq}",
                          allow_borrow=flip(data)))  # fmt: skip

    @rule(trader=st.sampled_from(TRADERS), on=st.booleans())
    def auto_borrow(self, trader: int, on: bool) -> None:
        self.run(SetAccountSettings(account_id=trader, auto_borrow=on))

    @rule(data=st.data(), trader=st.sampled_from((*TRADERS, MM)))
    def cancel(self, data: Data, trader: int) -> None:
        live = sorted(self.ex.accounts[trader].live)
        if live and flip(data):
            self.run(CancelOrder(account_id=trader, order_id=pick(data, live)))
        else:
            self.run(CancelAll(account_id=trader))

    @rule(ms=st.integers(200, 4_000))
    def time_passes(self, ms: int) -> None:
        self.run(Tick(), step_ms=ms)

    @invariant()
    def snapshot_restores_the_same_state(self) -> None:
        if self.ex.last_seq % 25 == 0:
            back = Exchange.restore(self.ex.config, take_snapshot(self.ex))
            assert back.state_hash() == self.ex.state_hash()

    def teardown(self) -> None:
        note(f"settled {self.settled}")


TestPortfolioMachine = PortfolioMachine.TestCase
TestPortfolioMachine.settings = settings(
    max_examples=300 if LONG else 60,
    stateful_step_count=150 if LONG else 80,
    deadline=None,
    phases=tuple(Phase) if LONG else (Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_a_seeded_run_reaches_every_part_of_the_account() -> None:
    """Guard the meaning of the machine: one seeded run of its rules (invariants after
    every command) must trade perps, borrow, settle funding and interest, trigger
    stops and liquidate."""
    rng = random.Random(20261121)
    m = PortfolioMachine()
    m.setup()
    for _ in range(1500):
        trader = rng.choice(TRADERS)
        kind = rng.choice(["index", "quote", "quote", "spot", "perp", "perp", "perp", "basis",
                           "borrow", "auto", "cancel", "time"])  # fmt: skip
        if kind == "index":
            m.move_index(rng, rng.choice(sorted(START)))
        elif kind == "quote":
            m.market_maker_quotes(rng)
        elif kind == "spot":
            m.spot_order(rng, trader)
        elif kind == "perp":
            m.perp_order(rng, trader)
        elif kind == "basis":
            m.basis_trade(rng, trader)
        elif kind == "borrow":
            m.borrow_by_withdrawal(rng, trader)
        elif kind == "auto":
            m.auto_borrow(trader, rng.random() < 0.7)
        elif kind == "cancel":
            m.cancel(rng, rng.choice((*TRADERS, MM)))
        else:
            m.time_passes(rng.randint(200, 4_000))
    total = m.settled
    assert total["funding"] > 20, total
    assert total["interest"] > 5, total
    assert total["perp_fills"] > 20, total
    assert total["triggered"] > 0, total
    assert total["loans"] > 5, total
    assert total["margin_calls"] > 0 and total["slices"] > 0, total  # liquidation too
