"""Crash simulation for the liquidation engine (issue 5 point 8): a 30% fall in 60 s.

    python loadtests/crash_sim.py [--accounts 1000] [--seed 1] [--depth 100000]
        [--fund 1000000] [--updates 60] [--tail 600] [--check-every 500]
        [--only unified|isolated]

The same seeded world is run twice through `engine.Exchange`, once with unified
(portfolio) margin, once with isolated per-position margin, and the two are
reported side by side.

**The world.** `--accounts` traders (default 1,000), each with a collateral of
1,000-50,000 USDC (log-uniform) and one of four portfolios:

* 40% unhedged perp longs on BTC, ETH or SOL at 2x-7x (SOL 2x-5x: its initial
  price shock is 18%, so 7x is refused);
* 30% basis trades: spot long of notional N = 1x-3.25x the collateral (SOL 1x-2.25x),
  bought with the collateral and a USDC loan (`auto_borrow`), plus a perp short of
  the same size;
* 20% spot longs on a USDC loan at 1.5x-5x (SOL 1.5x-3.5x);
* 10% mixes of two or three legs (perp longs, a SOL-PERP short, spot longs on a loan)
  at a gross leverage of 1.5x-4x.

Half of the traders have a risk plan cure window of 30 s; independently, 40% have
`max_slice_pct` 25% with the hedge groups (X-USDC, X-PERP) for every asset. A third of
the traders with a cure window "cure": each time one of their accounts gets a margin
call, they deposit, 2-15 s later, twice the liquidation-end shortfall the call showed
plus a quarter of the account's starting collateral (at most twice per account).

Around them: three lenders supplying USDC, BTC, ETH and SOL; one market maker per
market with deep capital, quoting 8 levels a side 0.25% apart around the index
(`--depth` USDC per level), cancelling everything and quoting a new ladder every
simulated second; an insurance fund (account 3) seeded with `--fund` USDC. Positions
are opened at the starting index (50,000 / 3,000 / 150) against resting orders of the
market makers.

**The crash.** The index of every asset falls 30% in 60 one-second steps (a straight
line with a little seeded noise; `--updates 3` makes it three 10% gaps 20 s apart),
the makers requote every second after the index, a `Tick` runs every half second;
after the fall the index stays put and time goes on (requotes and Ticks) until no
account is in a margin call or liquidation, at most `--tail` seconds.
`ex.check_invariants()` must be empty every `--check-every` commands and at the end
(the run stops at the first failure). The script exits 1 if a position could not be
opened, a later command was refused, or an account is left in a margin case or paused.

**Isolated per-position margin** is modelled with the same engine by splitting every
trader into one account per leg: each perp position, and each spot long with its loan,
gets its own account holding the trader's collateral pro rata to the leg's notional,
the same risk plan, and opens the same position. Since health is computed per account,
no leg can offset another (a basis trade's perp short no longer covers its spot long),
which is what isolated margin means; single-leg traders are the same in both runs.
Leverages are capped so that every leg can also be opened on its own share. Everything
else (margin calls, cure windows, slices, backstop, bad debt and who shares it) is the
engine's, unchanged.

Figures per trader count a trader once, whatever the number of its accounts:
margin-called (one of its accounts got a margin call), cured (a margin call ended in
`normal` and none of its accounts was ever liquidated), liquidated (one of its accounts
entered `liquidating`), fully closed (after the run, none of its accounts holds a perp
position, a non-USDC balance or a loan) or partly closed (something is left).
Engine time is the time spent in `Exchange.apply` (invariant checks and the script's
own work excluded); "slowest command" is the longest single `apply`, the time the
sequencer would stall on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import heapq
import math
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from loadtests import bench_engine as be
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import bench_engine as be

import app  # noqa: F401  (chooses the engine build, EXCHANGE_ENGINE, before engine loads)
from app import native
from engine import commands as c
from engine.accounts import INSURANCE
from engine.events import BadDebt, LiquidationSlice, MarginStateChanged, Rejected
from engine.exchange import Exchange
from engine.markets import ExchangeConfig, default_config
from engine.risk import Level
from engine.types import MarginState, Side, TimeInForce

USDC = 10**6
UNIT = 10**8  # BTC, ETH, SOL
ASSETS = ("BTC", "ETH", "SOL")
START = {"BTC": 50_000 * USDC, "ETH": 3_000 * USDC, "SOL": 150 * USDC}
MAX_LEV = {"BTC": 7.0, "ETH": 7.0, "SOL": 5.0}  # unhedged perp
SPOT_LEV = {"BTC": 5.0, "ETH": 5.0, "SOL": 3.5}
BASIS_LEV = {"BTC": 3.25, "ETH": 3.25, "SOL": 2.25}
ASSET_WEIGHTS = (("BTC", 45), ("ETH", 35), ("SOL", 20))
HEDGE_GROUPS = tuple((f"{a}-USDC", f"{a}-PERP") for a in ASSETS)
CURE_WINDOW_MS = 30_000
T0 = 1_800_000_000_000  # ms
CRASH_S = 60
FALL_PPM = 300_000
LEVELS = 8
STEP_PPM = 2_500  # 0.25% between ladder levels
WARMUP_S = 5


# ------------------------------------------------------------------ the traders
@dataclass(frozen=True)
class Leg:
    market: str
    side: Side
    notional: int  # USDC atomic, at the starting index


@dataclass
class Trader:
    index: int
    kind: str
    collateral: int  # USDC atomic
    legs: list[Leg]
    cure_window_ms: int
    sliced: bool  # max_slice 25% and hedge groups
    curer: bool

    @property
    def has_plan(self) -> bool:
        return self.cure_window_ms > 0 or self.sliced


def _pick_asset(rng: random.Random) -> str:
    return rng.choices([a for a, _ in ASSET_WEIGHTS], [w for _, w in ASSET_WEIGHTS])[0]


def make_traders(n: int, seed: int) -> list[Trader]:
    rng = random.Random(seed)
    kinds = ["perp"] * (n * 4 // 10) + ["basis"] * (n * 3 // 10) + ["spot"] * (n * 2 // 10)
    kinds += ["mix"] * (n - len(kinds))
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        collateral = int(math.exp(rng.uniform(math.log(1_000), math.log(50_000))) * USDC)
        asset = _pick_asset(rng)
        legs: list[Leg]
        if kind == "perp":
            lev = rng.uniform(2.0, MAX_LEV[asset])
            legs = [Leg(f"{asset}-PERP", Side.BUY, int(collateral * lev))]
        elif kind == "basis":
            notional = int(collateral * rng.uniform(1.0, BASIS_LEV[asset]))
            legs = [Leg(f"{asset}-USDC", Side.BUY, notional),
                    Leg(f"{asset}-PERP", Side.SELL, notional)]  # fmt: skip
        elif kind == "spot":
            lev = rng.uniform(1.5, SPOT_LEV[asset])
            legs = [Leg(f"{asset}-USDC", Side.BUY, int(collateral * lev))]
        else:
            menu = [("BTC-PERP", Side.BUY), ("ETH-PERP", Side.BUY), ("SOL-PERP", Side.SELL),
                    ("BTC-USDC", Side.BUY), ("ETH-USDC", Side.BUY), ("SOL-PERP", Side.BUY)]
            picked = rng.sample(menu, rng.choice((2, 3)))
            if len({m for m, _ in picked}) < len(picked):  # SOL-PERP both ways: one of them
                picked = [p for p in picked if p != ("SOL-PERP", Side.SELL)]
            if all(s is Side.SELL for _, s in picked):
                picked.append(("BTC-PERP", Side.BUY))
            gross = collateral * rng.uniform(1.5, 4.0)
            weights = [rng.uniform(1, 3) for _ in picked]
            total = sum(weights)
            legs = [Leg(m, s, int(gross * w / total))
                    for (m, s), w in zip(picked, weights, strict=True)]  # fmt: skip
        cure = CURE_WINDOW_MS if rng.random() < 0.5 else 0
        sliced = rng.random() < 0.4
        curer = cure > 0 and rng.random() < 1 / 3
        out.append(Trader(i, kind, collateral, legs, cure, sliced, curer))
    return out


def crash_path(seed: int, updates: int = CRASH_S) -> list[dict[str, int] | None]:
    """The index of every asset for seconds 1..CRASH_S: a straight line down 30%, with
    noise of up to +/-0.3% (none at the end), in `updates` evenly spaced steps (None:
    no update that second)."""
    rng = random.Random(seed * 1_000_003 + 17)
    path: list[dict[str, int] | None] = []
    for s in range(1, CRASH_S + 1):
        if s * updates // CRASH_S == (s - 1) * updates // CRASH_S:
            path.append(None)
            continue
        prices = {}
        for a in ASSETS:
            fall = FALL_PPM * s // CRASH_S
            noise = 0 if s == CRASH_S else rng.randint(-3_000, 3_000)
            prices[a] = START[a] * (1_000_000 - fall + noise) // 1_000_000
        path.append(prices)
    return path


# ------------------------------------------------------------------ one run
@dataclass
class Owner:  # one trader and its accounts (several under isolated margin)
    trader: Trader
    accounts: list[int] = field(default_factory=list)
    legs: list[list[Leg]] = field(default_factory=list)
    collateral: list[int] = field(default_factory=list)


@dataclass
class Stats:
    called: set[int] = field(default_factory=set)  # accounts
    cured: set[int] = field(default_factory=set)
    liquidating: set[int] = field(default_factory=set)
    reasons: dict[str, int] = field(default_factory=dict)  # entries into liquidation
    calls: int = 0
    cures: int = 0
    slices: int = 0
    book_notional: int = 0
    backstop_notional: int = 0
    fees: int = 0
    bad_debt: int = 0
    bad_insurance: int = 0
    bad_socialized: int = 0
    bad_debt_events: int = 0
    cure_deposits: int = 0
    cure_deposit_count: int = 0
    rejected_setup: list[str] = field(default_factory=list)
    rejected_mm: int = 0
    rejected_other: list[str] = field(default_factory=list)
    invariant_checks: int = 0


class Sim:
    def __init__(self, traders: list[Trader], isolated: bool, args: argparse.Namespace) -> None:
        self.traders = traders
        self.isolated = isolated
        self.args = args
        cfg: ExchangeConfig = dataclasses.replace(default_config(), oracle_stale_ms=10**12)
        self.ex = Exchange(cfg)
        self.seq = 0
        self.ts = T0
        self.commands = 0
        self.engine_s = 0.0
        self.slowest = (0.0, "")  # the longest single apply, and its command
        self.phase_s: dict[str, float] = {}
        self.st = Stats()
        self.owner: dict[int, Owner] = {}  # account -> its trader
        self.start_collateral: dict[int, int] = {}
        self.cures_asked: dict[int, int] = {}
        self.queue: list[tuple[int, int, c.Command]] = []
        self.qn = 0
        self.index = dict(START)
        self.mm: dict[str, int] = {}
        self.owners: list[Owner] = []
        self.on_reject: Callable[[c.Command, Rejected], None] = self._reject_other

    # ----------------------------------------------------------- commands
    def apply(self, cmd: c.Command, ts: int | None = None) -> list[Any]:
        self.seq += 1
        self.ts = max(self.ts, ts) if ts is not None else self.ts + 1
        c.stamp(cmd, self.seq, self.ts)
        t0 = time.perf_counter()
        events = self.ex.apply(cmd)
        took = time.perf_counter() - t0
        self.engine_s += took
        if took > self.slowest[0]:
            self.slowest = (took, type(cmd).__name__)
        self.commands += 1
        for e in events:
            if isinstance(e, MarginStateChanged):
                self._margin_event(e)
            elif isinstance(e, LiquidationSlice):
                self.st.slices += 1
                self.st.book_notional += e.book_notional
                self.st.backstop_notional += e.backstop_notional
                self.st.fees += e.fee
            elif isinstance(e, BadDebt):
                px = 1 if e.asset == "USDC" else self.index[e.asset]
                unit = 1 if e.asset == "USDC" else UNIT
                self.st.bad_debt_events += 1
                self.st.bad_debt += e.amount * px // unit
                self.st.bad_insurance += e.insurance * px // unit
                self.st.bad_socialized += e.socialized * px // unit
            elif isinstance(e, Rejected):
                self.on_reject(cmd, e)
        every = self.args.check_every
        if every and self.commands % every == 0:
            self.check()
        return events

    def _reject_other(self, cmd: c.Command, r: Rejected) -> None:
        if getattr(cmd, "account_id", None) in self.mm.values():
            self.st.rejected_mm += 1
        else:
            self.st.rejected_other.append(f"{type(cmd).__name__}: {r.reason.name} {r.detail}")

    def check(self) -> None:
        self.st.invariant_checks += 1
        problems = self.ex.check_invariants()
        if problems:
            raise SystemExit(f"invariants broken after command {self.seq}: {problems[:5]}")

    def _margin_event(self, e: MarginStateChanged) -> None:
        st = self.st
        aid = e.account_id
        if e.state is MarginState.MARGIN_CALL:
            st.called.add(aid)
            st.calls += 1
            who = self.owner.get(aid)
            asked = self.cures_asked.get(aid, 0)
            if who is not None and who.trader.curer and asked < 2:
                self.cures_asked[aid] = asked + 1
                leg = who.accounts.index(aid)
                delay = random.Random(f"{self.args.seed}/{who.trader.index}/{leg}/{asked}")
                due = e.ts + delay.randrange(2_000, 15_000)
                amount = 2 * max(-e.liquidation_end, 0) + self.start_collateral[aid] // 4
                amount = max(amount // USDC * USDC, USDC)
                dep = c.Deposit(account_id=aid, asset="USDC", amount=amount,
                                deposit_id=f"cure-{aid}-{asked}")  # fmt: skip
                self.push(due, dep)
        elif e.state is MarginState.LIQUIDATING:
            st.liquidating.add(aid)
            st.reasons[e.reason] = st.reasons.get(e.reason, 0) + 1
        elif e.previous is MarginState.MARGIN_CALL:
            st.cured.add(aid)
            st.cures += 1

    def push(self, ts: int, cmd: c.Command) -> None:
        self.qn += 1
        heapq.heappush(self.queue, (ts, self.qn, cmd))

    def run_until(self, end: int) -> None:
        """Apply the queued commands due before `end`, in time order (cure deposits the
        commands schedule land in the same queue)."""
        while self.queue and self.queue[0][0] < end:
            ts, _, cmd = heapq.heappop(self.queue)
            if isinstance(cmd, c.Deposit) and cmd.deposit_id.startswith("cure-"):
                self.st.cure_deposits += cmd.amount
                self.st.cure_deposit_count += 1
            self.apply(cmd, ts)

    # ------------------------------------------------------------- setup
    def create(self, name: str) -> int:
        aid = self.ex.next_account_id
        self.apply(c.CreateAccount(name=name, api_key=f"k-{name}", api_secret="s"))
        return aid

    def deposit(self, aid: int, asset: str, amount: int, ident: str) -> None:
        self.apply(c.Deposit(account_id=aid, asset=asset, amount=amount, deposit_id=ident))

    def setup(self) -> None:
        ex = self.ex
        self.on_reject = self._reject_setup
        self.apply(c.SetOraclePrices(prices=tuple(sorted(START.items()))), T0)
        for i in range(3):
            aid = self.create(f"lender{i}")
            self.deposit(aid, "USDC", 100_000_000 * USDC, f"lend{i}-USDC")
            for a in ASSETS:
                self.deposit(aid, a, 20_000_000 * USDC * UNIT // START[a], f"lend{i}-{a}")
        for market in sorted(ex.markets):
            aid = self.mm[market] = self.create(f"mm-{market}")
            self.deposit(aid, "USDC", 500_000_000 * USDC, f"mm-{market}-USDC")
            base = ex.markets[market].spec.base
            if market.endswith("-USDC"):
                self.deposit(aid, base, 250_000_000 * USDC * UNIT // START[base], f"mm-{market}")
        self.deposit(INSURANCE, "USDC", self.args.fund * USDC, "insurance-seed")
        for t in self.traders:
            self.owners.append(self.open_trader(t))
        # what makers set out for traders and nobody took (none unless a leg was refused)
        for market, aid in sorted(self.mm.items()):
            self.apply(c.CancelAll(account_id=aid, market=market))
        self.on_reject = self._reject_other

    def _reject_setup(self, cmd: c.Command, r: Rejected) -> None:
        self.st.rejected_setup.append(f"{type(cmd).__name__} {getattr(cmd, 'account_id', '')}: "
                                      f"{r.reason.name} {r.detail}")  # fmt: skip

    def size_of(self, leg: Leg) -> int:
        spec = self.ex.markets[leg.market].spec
        return leg.notional * UNIT // START[spec.base] // spec.lot * spec.lot

    def open_trader(self, t: Trader) -> Owner:
        who = Owner(t)
        total = sum(leg.notional for leg in t.legs)
        groups = [[leg] for leg in t.legs] if self.isolated and len(t.legs) > 1 else [t.legs]
        left = t.collateral
        for k, legs in enumerate(groups):
            share = left if k == len(groups) - 1 else (
                t.collateral * sum(leg.notional for leg in legs) // total)  # fmt: skip
            left -= share
            aid = self.create(f"t{t.index}-{k}")
            who.accounts.append(aid)
            who.legs.append(legs)
            who.collateral.append(share)
            self.owner[aid] = who
            self.start_collateral[aid] = share
            self.deposit(aid, "USDC", share, f"t{t.index}-{k}")
            if any(leg.market.endswith("-USDC") for leg in legs):
                self.apply(c.SetAccountSettings(account_id=aid, auto_borrow=True))
            if t.has_plan:
                self.apply(c.SetRiskPlan(
                    account_id=aid, cure_window_ms=t.cure_window_ms,
                    max_slice_ppm=250_000 if t.sliced else 1_000_000,
                    hedge_groups=HEDGE_GROUPS if t.sliced else ()))  # fmt: skip
            orders = []
            for leg in legs:
                spec = self.ex.markets[leg.market].spec
                price = START[spec.base]
                size = self.size_of(leg)
                maker = self.mm[leg.market]
                self.apply(c.PlaceOrder(account_id=maker, market=leg.market, price=price,
                                        side=leg.side.opposite, size=size))  # fmt: skip
                orders.append(c.PlaceOrder(account_id=aid, market=leg.market, side=leg.side,
                                           size=size, price=price,
                                           tif=TimeInForce.IOC))  # fmt: skip
            if len(orders) == 1:
                self.apply(orders[0])
            else:
                self.apply(c.BatchPlace(account_id=aid, orders=tuple(orders), atomic=True))
        return who

    # ------------------------------------------------------------ the crash
    def quote(self, s_ts: int) -> None:
        """Every maker cancels everything and quotes a new ladder around the index."""
        k = 1
        for market, aid in sorted(self.mm.items()):
            spec = self.ex.markets[market].spec
            index = self.index[spec.base]
            size = max(self.args.depth * USDC * UNIT // index // spec.lot * spec.lot, spec.lot)
            orders = []
            for lv in range(1, LEVELS + 1):
                bid = index * (1_000_000 - lv * STEP_PPM) // 1_000_000 // spec.tick * spec.tick
                ask = -(-index * (1_000_000 + lv * STEP_PPM) // 1_000_000 // spec.tick) * spec.tick
                orders.append(c.PlaceOrder(account_id=aid, market=market, side=Side.BUY,
                                           size=size, price=bid))  # fmt: skip
                orders.append(c.PlaceOrder(account_id=aid, market=market, side=Side.SELL,
                                           size=size, price=ask))  # fmt: skip
            self.push(s_ts + k, c.CancelAll(account_id=aid, market=market))
            self.push(s_ts + k + 1, c.BatchPlace(account_id=aid, orders=tuple(orders)))
            k += 2

    def second(self, s_ts: int, prices: dict[str, int] | None) -> None:
        if prices is not None:
            self.index = dict(prices)
            self.push(s_ts, c.SetOraclePrices(prices=tuple(sorted(prices.items()))))
        self.quote(s_ts)
        self.push(s_ts + 500, c.Tick())
        self.run_until(s_ts + 1_000)

    def crash(self) -> int:
        """Warm-up, the fall, then time until no margin case is left; returns the seconds
        simulated after the fall."""
        s_ts = (self.ts // 1_000 + 1) * 1_000
        for _ in range(WARMUP_S):
            self.second(s_ts, None)
            s_ts += 1_000
        for prices in crash_path(self.args.seed, self.args.updates):
            self.second(s_ts, prices)
            s_ts += 1_000
        tail = 0
        while tail < self.args.tail and (self.ex.margin_cases or self.queue):
            self.second(s_ts, None)
            s_ts += 1_000
            tail += 1
        return tail

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        e0 = self.engine_s
        self.setup()
        self.phase_s["setup"] = self.engine_s - e0
        setup_cmds = self.commands
        ins = self.ex.accounts[INSURANCE]
        fund_start = ins.balance("USDC")
        fund_equity_start = self.ex.health(INSURANCE)[Level.EQUITY] or 0
        equity_start = self.traders_equity()
        e0 = self.engine_s
        tail = self.crash()
        self.phase_s["crash"] = self.engine_s - e0
        self.check()
        wall = time.perf_counter() - t0
        return self.report(tail, setup_cmds, fund_start, fund_equity_start, equity_start, wall)

    # ------------------------------------------------------------ figures
    def traders_equity(self) -> int:
        return sum(self.ex.health(aid)[Level.EQUITY] or 0 for aid in self.owner)

    def exposed(self, aid: int) -> bool:
        acct = self.ex.accounts[aid]
        if any(p.size for p in acct.positions.values()):
            return True
        return any(b < 0 or (a != "USDC" and b > 0) for a, b in acct.balances.items())

    def report(self, tail: int, setup_cmds: int, fund_start: int, fund_eq_start: int,
               equity_start: int, wall: float) -> dict[str, Any]:  # fmt: skip
        st, ex = self.st, self.ex
        called = liquidated = cured = full = part = 0
        acc_full = acc_part = 0
        by_kind = {k: 0 for k in ("perp", "basis", "spot", "mix")}
        for who in self.owners:
            accts = who.accounts
            liq = any(a in st.liquidating for a in accts)
            called += any(a in st.called for a in accts)
            cured += (not liq) and any(a in st.cured for a in accts)
            if liq:
                liquidated += 1
                by_kind[who.trader.kind] += 1
                if any(self.exposed(a) for a in accts):
                    part += 1
                else:
                    full += 1
        for aid in st.liquidating:
            if self.exposed(aid):
                acc_part += 1
            else:
                acc_full += 1
        ins = ex.accounts[INSURANCE]
        left = {a: b for a, b in sorted(ins.balances.items()) if b and a != "USDC"}
        fund_pos = {m: p.size for m, p in sorted(ins.positions.items()) if p.size}
        stuck = sorted(ex.margin_cases)
        return {
            "trader accounts": len(self.owner),
            "traders margin-called": called,
            "traders cured (call -> normal, never liquidated)": cured,
            "traders liquidated": liquidated,
            "  fully closed (nothing left)": full,
            "  partly closed (exposure left)": part,
            "  perp / basis / spot / mix": " / ".join(str(v) for v in by_kind.values()),
            "accounts margin-called": len(st.called),
            "margin calls / cures (events)": f"{st.calls} / {st.cures}",
            "cure deposits (count, USDC)": f"{st.cure_deposit_count}, "
                                           f"{_usd(st.cure_deposits)}",
            "accounts liquidated (full / partial)": f"{len(st.liquidating)} "
                                                    f"({acc_full} / {acc_part})",
            "entries into liquidation": sum(st.reasons.values()),
            "  no window / window expired / below floor": " / ".join(
                str(st.reasons.get(r, 0))
                for r in ("no_cure_window", "cure_window_expired", "below_backstop_floor")),
            "liquidation slices": st.slices,
            "notional through the book (USDC)": _usd(st.book_notional),
            "notional to the backstop (USDC)": _usd(st.backstop_notional),
            "liquidation fees to the fund (USDC)": _usd(st.fees),
            "bad debt (USDC, events)": f"{_usd(st.bad_debt)}, {st.bad_debt_events}",
            "  paid by the insurance fund": _usd(st.bad_insurance),
            "  socialized": _usd(st.bad_socialized),
            "insurance fund USDC start / end": f"{_usd(fund_start)} / "
                                               f"{_usd(ins.balance('USDC'))}",
            "insurance fund value at the index, end": _usd(ex.health(INSURANCE)[Level.EQUITY]
                                                           or 0),
            "fund holds after (backstop)": ", ".join(
                [f"{_units(b)} {a}" for a, b in left.items()]
                + [f"{_units(s)} {m}" for m, s in fund_pos.items()]) or "nothing",
            "traders' equity start / end (USDC)": f"{_usd(equity_start)} / "
                                                  f"{_usd(self.traders_equity())}",
            "still in a margin case at the end": len(stuck),
            "seconds simulated after the fall": tail,
            "commands (setup + crash)": f"{setup_cmds:,} + {self.commands - setup_cmds:,}",
            "engine time setup / crash (s)": f"{self.phase_s['setup']:.2f} / "
                                             f"{self.phase_s['crash']:.2f}",
            "slowest command (ms)": f"{self.slowest[0] * 1000:.0f} ({self.slowest[1]})",
            "invariant checks (all empty)": st.invariant_checks,
            "wall time of the run (s)": f"{wall:.1f}",
            "_stuck": stuck,
            "_rejected_setup": st.rejected_setup,
            "_rejected_other": st.rejected_other,
            "_rejected_mm": st.rejected_mm,
            "_unknown": sorted(ex.margin_unknown),
        }  # fmt: skip


def _usd(atomic: int) -> str:
    return f"{atomic / USDC:,.0f}"


def _units(atomic: int) -> str:
    return f"{atomic / UNIT:,.4f}".rstrip("0").rstrip(".")


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in results[names[0]]:
        if key.startswith("_"):
            continue
        lines.append(f"| {key} | " + " | ".join(str(results[n][key]) for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--accounts", type=int, default=1_000, help="traders")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--depth", type=int, default=100_000,
                    help="USDC per ladder level per market maker")  # fmt: skip
    ap.add_argument("--fund", type=int, default=1_000_000, help="insurance fund seed, USDC")
    ap.add_argument("--updates", type=int, default=CRASH_S,
                    help="index updates during the fall (60: one a second; fewer: gaps)")
    ap.add_argument("--tail", type=int, default=600, help="seconds after the fall, at most")
    ap.add_argument("--check-every", type=int, default=500,
                    help="check the invariants every N commands (0: only at the end)")
    ap.add_argument("--only", choices=("unified", "isolated"), default=None)
    args = ap.parse_args(argv)
    print(f"# crash simulation, {datetime.date.today().isoformat()}")
    print()
    print(f"- machine: {be.machine()}")
    print(f"- python: {platform.python_version()}; engine build: {native.running()} "
          f"({native.reason})")  # fmt: skip
    print(f"- engine revision: {be.engine_revision()}")
    print(f"- command: `python loadtests/crash_sim.py {' '.join(sys.argv[1:])}`".rstrip())
    traders = make_traders(args.accounts, args.seed)
    kinds = {k: sum(1 for t in traders if t.kind == k) for k in ("perp", "basis", "spot", "mix")}
    print(f"- traders: {kinds}; cure window 30 s: "
          f"{sum(1 for t in traders if t.cure_window_ms)}; slices 25% + hedge groups: "
          f"{sum(1 for t in traders if t.sliced)}; curers: "
          f"{sum(1 for t in traders if t.curer)}; collateral "
          f"{_usd(sum(t.collateral for t in traders))} USDC, notional "
          f"{_usd(sum(leg.notional for t in traders for leg in t.legs))} USDC")  # fmt: skip
    print()
    results: dict[str, dict[str, Any]] = {}
    for name in ("unified", "isolated"):
        if args.only not in (None, name):
            continue
        t0 = time.perf_counter()
        sim = Sim(traders, name == "isolated", args)
        results[name] = sim.run()
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(table(results))
    bad = False
    for name, r in results.items():
        for key, what in (("_rejected_setup", "refused while opening positions"),
                          ("_rejected_other", "refused later"),
                          ("_stuck", "still in a margin case"),
                          ("_unknown", "paused for a stale index")):  # fmt: skip
            if r[key]:
                bad = True
                print(f"\n{name}: {len(r[key])} {what}: {r[key][:5]}")
        if r["_rejected_mm"]:
            print(f"\n{name}: {r['_rejected_mm']} market-maker commands refused")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
