"""Replay determinism: the same journal always rebuilds the same exchange (DESIGN section 10).

One seeded workload of 22,000+ mixed commands (the differential test's generator:
orders of every type and time in force, cancels, amends, batches, cancel-all,
deposits and withdrawals with retries, market-state changes, ticks, settings;
plus, mixed in here, accounts created mid-run with their own deposits and
orders, extra API keys and revocations, and batch cancels) is run through an
`Exchange`, with a `snapshot()` every 2,000 commands serialized through orjson
(so it is proven to survive JSON, as it does in the snapshot table). Then:

* a second fresh engine fed the same commands gives identical events and the
  same final `state_hash()`;
* for EACH snapshot, `Exchange.restore` + the tail of the commands gives the same
  events for the tail and the same final `state_hash()` as the original run;
* `check_invariants() == []` at the end of every variant.

env `REPLAY_COMMANDS=100000` for a longer run.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from engine.accounts import PNL_CLEARING, TREASURY
from engine.commands import (
    BatchCancel,
    BatchPlace,
    CancelOrder,
    Command,
    CreateAccount,
    CreateApiKey,
    Deposit,
    PlaceOrder,
    RevokeApiKey,
    SetAccountSettings,
    SetOraclePrices,
    Withdraw,
)
from engine.events import (
    BookDelta,
    Event,
    IndexStale,
    IndexUpdated,
    OrderUpdate,
    Rejected,
    TradeEvent,
    Transfer,
)
from engine.exchange import Exchange
from engine.markets import ExchangeConfig
from engine.triggers import STOP_TYPES
from engine.types import LedgerReason, OrderStatus, OrderType, Side, TimeInForce
from tests.test_engine_differential import CENTER, MARKETS, generate, make_config

SEED = 20261121
N_BASE = int(os.environ.get("REPLAY_COMMANDS", "20000"))
EXTRA_EVERY = 25  # one extra command (accounts, keys, batch cancels...) per this many
SNAPSHOT_EVERY = 2000


# ---------------------------------------------------------------------------- workload


class _Extras:
    """Commands the differential generator does not make, aimed with a shadow engine."""

    def __init__(self, cfg: ExchangeConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.shadow = Exchange(cfg)
        self.new_accounts: list[int] = []
        self.funded: set[int] = set()
        self.keys: list[tuple[int, str]] = []  # (account, api key) not yet revoked
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"x{prefix}-{self.n}"

    def make(self) -> Command:
        rng, ex = self.rng, self.shadow
        users = sorted(a for a in ex.accounts if a >= 1000)
        kind = rng.choices(
            ("account", "fund", "order", "key", "revoke", "batch_cancel", "borrow", "oracle",
             "perp", "auto_borrow"),
            (1, 3, 8, 2, 2, 4, 3, 4, 16, 2),
        )[0]
        if kind == "account" or not self.new_accounts:
            key = self._id("key")
            # the engine assigns the next account id; the shadow tells which one it is
            self.new_accounts.append(ex.next_account_id)
            self.keys.append((ex.next_account_id, key))
            return CreateAccount(
                name=self._id("acct"), api_key=key, api_secret="s", tier=rng.choice((0, 1, 2))
            )
        if kind == "fund" or (kind == "order" and not self.funded):
            self.funded.add(acct := rng.choice(self.new_accounts))
            asset = rng.choice(("BTC", "ETH", "USDC"))
            amount = {"BTC": 2_000_000, "ETH": 20_000_000, "USDC": 800_000_000}[asset]
            return Deposit(
                account_id=acct,
                asset=asset,
                amount=amount,
                deposit_id=self._id("dep"),
            )
        if kind == "order":
            market = rng.choice(MARKETS)
            spec = self.cfg.markets[market]
            side = rng.choice((Side.BUY, Side.SELL))
            tif = rng.choice(
                (TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.POST_ONLY)
            )
            return PlaceOrder(
                account_id=rng.choice(sorted(self.funded)),
                market=market,
                side=side,
                size=spec.min_size * rng.randint(1, 4),
                type=OrderType.LIMIT,
                tif=tif,
                price=CENTER[market] + rng.randint(-4, 4) * spec.tick,
                client_order_id=self._id("cid") if rng.random() < 0.5 else None,
            )
        if kind == "auto_borrow" and self.funded:  # orders may then borrow what they lack
            acct = rng.choice(sorted(self.funded))
            if not ex.accounts[acct].auto_borrow or rng.random() < 0.2:
                return SetAccountSettings(account_id=acct, auto_borrow=rng.random() < 0.8)
            market = rng.choice(("BTC-USDC", "ETH-USDC"))  # more than it has: a loan
            spec = self.cfg.markets[market]
            side = rng.choice((Side.BUY, Side.SELL))
            price = CENTER[market] + (4 if side is Side.BUY else -4) * spec.tick
            have = ex.accounts[acct].available(spec.quote if side is Side.BUY else spec.base)
            size = max(have, 0) * spec.base_unit // price if side is Side.BUY else max(have, 0)
            size = (size * rng.randint(11, 15) // 10 // spec.lot + 1) * spec.lot
            return PlaceOrder(account_id=acct, market=market, side=side, size=size,
                              type=OrderType.LIMIT, tif=TimeInForce.IOC, price=price)  # fmt: skip
        if kind == "key":
            acct = rng.choice(users)
            key = self._id("key")
            self.keys.append((acct, key))
            perms = rng.choice((("read",), ("read", "trade"), ("read", "trade", "withdraw")))
            return CreateApiKey(
                account_id=acct,
                api_key=key,
                api_secret="s2",
                permissions=perms,
                label=self._id("label"),
            )
        if kind == "revoke" and self.keys:
            acct, key = self.keys.pop(rng.randrange(len(self.keys)))
            if rng.random() < 0.2:  # wrong owner or already revoked: API_KEY_NOT_FOUND
                acct = rng.choice(users)
                self.keys.append((acct, key))
            return RevokeApiKey(account_id=acct, api_key=key)
        if kind == "perp" and self.funded:  # around the index; margin decides, reduce-only too
            market = rng.choice(("BTC-PERP", "ETH-PERP"))
            spec = self.cfg.markets[market]
            entry = ex.oracle.prices.get(spec.base)
            index = entry.price if entry is not None else {"BTC": 50_000, "ETH": 3_000}[
                spec.base] * 10**6  # fmt: skip
            acct = rng.choice(sorted(self.funded | set(users[:4])))
            pos = ex.accounts[acct].positions.get(market)
            reduce = pos is not None and pos.size != 0 and rng.random() < 0.3
            side = (Side.SELL if pos.size > 0 else Side.BUY) if reduce and pos else rng.choice(
                (Side.BUY, Side.SELL))  # fmt: skip
            size = min(abs(pos.size), spec.min_size * 3) if reduce and pos else (
                spec.min_size * rng.randint(1, 30))  # fmt: skip
            price = (index // spec.tick + rng.randint(-20, 20)) * spec.tick
            if rng.random() < 0.35:  # a stop / take-profit around the index: waits, triggers
                otype = rng.choice(sorted(STOP_TYPES))
                limit = otype in (OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT)
                return PlaceOrder(
                    account_id=acct,
                    market=market,
                    side=side,
                    size=size,
                    type=otype,
                    price=price if limit else None,
                    trigger_price=(index // spec.tick + rng.randint(-60, 60)) * spec.tick,
                    tif=TimeInForce.GTC if limit and rng.random() < 0.5 else TimeInForce.IOC,
                    reduce_only=reduce,
                )
            return PlaceOrder(
                account_id=acct,
                market=market,
                side=side,
                size=size,
                type=OrderType.LIMIT,
                price=price,
                tif=TimeInForce.IOC if rng.random() < 0.4 else TimeInForce.GTC,
                reduce_only=reduce,
            )
        if kind == "oracle":  # index prices; sometimes refused (quote asset, unknown, zero)
            base = {"BTC": 50_000, "ETH": 3_000, "SOL": 150}
            assets = rng.sample(sorted(base), rng.randint(1, 3))
            prices = [(a, base[a] * 10**6 + rng.randint(-5_000, 5_000) * 10**4) for a in assets]
            if rng.random() < 0.1:
                prices.append(rng.choice((("USDC", 10**6), ("DOGE", 10**5), ("BTC", 0))))
            return SetOraclePrices(prices=tuple(prices))
        if kind == "borrow":  # take out more than is available: a loan, when health allows
            acct = rng.choice(users)
            asset = rng.choice(("USDC", "USDC", "BTC", "ETH"))
            extra = max(1, ex.pools[asset].free * rng.randint(5, 60) // 100)  # 5-60% of the pool
            return Withdraw(
                account_id=acct,
                asset=asset,
                amount=max(ex.accounts[acct].available(asset), 0) + extra,
                withdrawal_id=self._id("wd"),
                allow_borrow=True,
            )
        # a batch cancel: mostly live orders of one account, some unknown or foreign ids
        acct = rng.choice(users)
        own = sorted(oid for oid, o in ex.orders.items() if o.account_id == acct)
        picks = rng.sample(own, min(len(own), rng.randint(1, 4)))
        cancels = [CancelOrder(account_id=acct, order_id=oid) for oid in picks]
        if rng.random() < 0.4:
            cancels.append(CancelOrder(account_id=acct, order_id=ex.next_order_id + 7))
        if rng.random() < 0.2:
            cancels.append(CancelOrder(account_id=acct, client_order_id="c3"))
        return BatchCancel(account_id=acct, cancels=tuple(cancels))


def replay_config(rebate: bool) -> ExchangeConfig:
    """The differential config with interest settled every minute, so loans pay and
    suppliers earn within the workload's ~20 minutes, and index prices fresh for a
    minute, so perps trade between (rarer) stale spells."""
    return dataclasses.replace(
        make_config(rebate=rebate), interest_interval_ms=60_000, oracle_stale_ms=60_000
    )


def build_workload(cfg: ExchangeConfig, seed: int, n_base: int) -> list[Command]:
    """The differential generator's commands with extras mixed in, stamped seq 1..N."""
    rng = random.Random(seed + 1)
    extras = _Extras(cfg, rng)
    out: list[Command] = []
    ts = 0
    for i, base in enumerate(generate(cfg, seed, n_base)):
        ts = max(ts, base.ts)
        cmd = dataclasses.replace(base, seq=len(out) + 1, ts=ts)
        extras.shadow.apply(cmd)
        out.append(cmd)
        if i % EXTRA_EVERY == EXTRA_EVERY - 1:
            extra = dataclasses.replace(extras.make(), seq=len(out) + 1, ts=ts)
            extras.shadow.apply(extra)
            out.append(extra)
    return out


# ---------------------------------------------------------------------------- the runs


def typed(events: list[Event]) -> list[tuple[str, Event]]:
    """Events with their type: NamedTuples of different types with equal fields are equal."""
    return [(type(e).__name__, e) for e in events]


@dataclass
class Original:
    cfg: ExchangeConfig
    commands: list[Command]
    events: list[list[Event]]
    final_hash: str
    snapshots: dict[int, dict[str, Any]]  # commands applied -> snapshot after JSON
    hashes: dict[int, str]  # commands applied -> state hash at that point


@pytest.fixture(scope="module")
def original() -> Original:
    cfg = replay_config(rebate=False)
    commands = build_workload(cfg, SEED, N_BASE)
    ex = Exchange(cfg)
    events: list[list[Event]] = []
    snapshots: dict[int, dict[str, Any]] = {}
    hashes: dict[int, str] = {}
    for i, cmd in enumerate(commands, start=1):
        events.append(ex.apply(cmd))
        if i % SNAPSHOT_EVERY == 0:
            snapshots[i] = orjson.loads(orjson.dumps(ex.snapshot()))
            hashes[i] = ex.state_hash()
    assert ex.check_invariants() == []
    return Original(cfg, commands, events, ex.state_hash(), snapshots, hashes)


def test_workload_is_mixed(original: Original) -> None:
    """Guard the meaning of the other tests: every kind of command, trades and refusals."""
    kinds = Counter(type(c).__name__ for c in original.commands)
    assert len(original.commands) >= 20_000
    for name in (
        "CreateAccount",
        "CreateApiKey",
        "RevokeApiKey",
        "SetAccountSettings",
        "Deposit",
        "Withdraw",
        "PlaceOrder",
        "CancelOrder",
        "CancelAll",
        "AmendOrder",
        "BatchPlace",
        "BatchCancel",
        "SetMarketState",
        "SetOraclePrices",
        "Tick",
    ):
        assert kinds[name] > 0, f"no {name} in the workload: {kinds}"
    placed = [c for c in original.commands if isinstance(c, PlaceOrder)]
    assert {c.type for c in placed} >= {OrderType.LIMIT, OrderType.MARKET}
    assert {c.tif for c in placed} == set(TimeInForce)
    assert any(isinstance(c, BatchPlace) and c.atomic for c in original.commands)
    flat = [e for evs in original.events for e in evs]
    assert sum(isinstance(e, TradeEvent) for e in flat) > 2_000
    assert sum(isinstance(e, Rejected) for e in flat) > 500
    assert sum(isinstance(e, IndexUpdated) for e in flat) > 50
    assert sum(isinstance(e, IndexStale) for e in flat) > 3
    interest = [e for e in flat if isinstance(e, Transfer) and e.reason is LedgerReason.INTEREST]
    assert sum(t.to_account == TREASURY for t in interest) > 2  # borrowers paid
    assert sum(t.from_account == TREASURY for t in interest) > 2  # suppliers earned
    perp_trades = [e for e in flat if isinstance(e, TradeEvent) and e.market.endswith("-PERP")]
    assert len(perp_trades) > 10
    pnl = [
        e
        for e in flat
        if isinstance(e, Transfer) and PNL_CLEARING in (e.from_account, e.to_account)
    ]
    assert len(pnl) > 2  # positions reduced or flipped: PnL through clearing
    borrowers = {
        c.account_id
        for c in original.commands
        if isinstance(c, SetAccountSettings) and c.auto_borrow
    }
    order_loans = [  # a trade that took an auto_borrow account's balance below 0
        e
        for e in flat
        if isinstance(e, Transfer)
        and e.reason is LedgerReason.TRADE
        and e.from_account in borrowers
        and e.from_balance < 0 <= e.from_balance + e.amount
    ]
    assert len(order_loans) > 2
    triggered = [  # stop / take-profit orders that left "untriggered" by their trigger
        e.order
        for e in flat
        if isinstance(e, OrderUpdate)
        and e.order.type in STOP_TYPES
        and e.order.status is not OrderStatus.UNTRIGGERED
        and e.order.cancel_reason != "user"
    ]
    assert len(triggered) > 5
    assert len(original.snapshots) >= 10


def test_second_engine_same_events_and_hash(original: Original) -> None:
    ex = Exchange(original.cfg)
    for i, (cmd, want) in enumerate(zip(original.commands, original.events, strict=True), 1):
        got = ex.apply(cmd)
        assert typed(got) == typed(want), f"command {i} ({type(cmd).__name__}): events differ"
        if i in original.hashes:
            assert ex.state_hash() == original.hashes[i], f"state hash differs after {i}"
    assert ex.state_hash() == original.final_hash
    assert ex.check_invariants() == []


def test_replay_without_book_deltas_reaches_the_same_state(original: Original) -> None:
    """Recovery applies with deltas=False: every other event and every state the same."""
    ex = Exchange(original.cfg)
    deltas = 0
    for i, (cmd, want) in enumerate(zip(original.commands, original.events, strict=True), 1):
        got = ex.apply(cmd, deltas=False)
        kept = [e for e in want if not isinstance(e, BookDelta)]
        deltas += len(want) - len(kept)
        assert typed(got) == typed(kept), f"command {i} ({type(cmd).__name__}): events differ"
        if i in original.hashes:
            assert ex.state_hash() == original.hashes[i], f"state hash differs after {i}"
    assert deltas > 5000
    assert ex.state_hash() == original.final_hash
    assert ex.check_invariants() == []


def test_snapshot_json_roundtrip_is_lossless(original: Original) -> None:
    """The JSON-roundtripped snapshot hashes like the live state it was taken from."""
    for at, snap in original.snapshots.items():
        restored = Exchange.restore(original.cfg, snap)
        assert restored.state_hash() == original.hashes[at], f"snapshot after {at} commands"
        assert restored.last_seq == original.commands[at - 1].seq
        assert restored.check_invariants() == [], f"snapshot after {at} commands"
        # a snapshot of the restored engine is the same document again
        assert orjson.loads(orjson.dumps(restored.snapshot())) == snap


@pytest.mark.parametrize("k", range(1, (N_BASE + N_BASE // EXTRA_EVERY) // SNAPSHOT_EVERY + 1))
def test_restore_snapshot_plus_tail(original: Original, k: int) -> None:
    at = k * SNAPSHOT_EVERY
    if at not in original.snapshots:
        pytest.skip(f"no snapshot after {at} commands")
    ex = Exchange.restore(original.cfg, original.snapshots[at])
    tail = original.commands[at:]
    for j, (cmd, want) in enumerate(zip(tail, original.events[at:], strict=True), at + 1):
        got = ex.apply(cmd)
        assert typed(got) == typed(want), (
            f"snapshot after {at}: command {j} ({type(cmd).__name__}) differs"
        )
        if j in original.hashes:
            assert ex.state_hash() == original.hashes[j], f"snapshot after {at}: hash at {j}"
    assert ex.state_hash() == original.final_hash
    assert ex.check_invariants() == []
