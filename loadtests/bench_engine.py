"""In-process engine benchmark: ops/s and per-op latency, against a pure-Python ceiling and peers.

    python loadtests/bench_engine.py [--ops 200000] [--runs 5] [--seed 1]
                                     [--impls engine,ceiling,pyorderbook,fastlob,order-matching]
                                     [--order-matching-ops 20000] [--cpu-time] [--profile]

One seeded workload (`loadtests/workload.py`: 62% resting limits, 8% crossing IOC
limits, 30% cancels of live orders) drives every implementation:

* `engine`: our `Exchange.apply` on BTC-USDC, accounts created and funded before the
  clock starts, every op a stamped command; full output (events, ledger transfers,
  fees, holds, STP checks). `check_invariants()` must be `[]` after each run (untimed).
* `ceiling`: a minimal pure-Python price-time book written below (SortedDict of
  FIFO levels, lazy cancel, trades as tuples; no ledger, no fees, no events): about
  the fastest a straightforward pure-Python book gets, so `engine / ceiling` says
  what our bookkeeping costs.
* `pyorderbook`, `fastlob`: PyPI order books, if importable (the `bench` extra, which
  `make bench` installs: `pip install -e '.[bench]'`). Neither has IOC, so the adapter
  cancels an IOC remainder right after matching; that cancel is timed as part of the op.
* `order-matching`: a third PyPI book (in the `bench` extra too), fed only the first
  `--order-matching-ops` ops (default 20,000) of the same workload: it finds orders by
  scanning the whole book, so an op costs O(resting orders) and the full workload would
  make the benchmark much longer. Its row is compared with a second row of our engine
  run on the same prefix (`engine (ours), first N ops`), never with the full-workload row.

Runs are interleaved (run 1 of every implementation, then run 2, ...) so a noisy
neighbour hurts all rows alike. ops/s = ops / wall time of the whole loop (timer
calls included); latency = `perf_counter_ns` around each op, from the run with the
median ops/s (`--cpu-time` adds the on-CPU tail, which leaves out preemption by
other processes). GC stays enabled (it is part of real latency). After every run the
final book is compared with the workload's model: same resting orders, same
remaining sizes, same number of fills.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import types
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sortedcontainers import SortedDict

try:
    from loadtests import workload as wl
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import workload as wl

import app  # noqa: F401  (chooses the engine build, EXCHANGE_ENGINE, before engine loads)
from app import native
from engine import commands as c
from engine.events import Rejected
from engine.exchange import Exchange
from engine.markets import default_config
from engine.types import OrderType, Side, TimeInForce

MARKET = "BTC-USDC"
FIRST_ACCOUNT = 1000  # engine account ids are assigned from here, in creation order
USDC_DEPOSIT = 10**9 * 10**6  # 1e9 USDC per account: ample
BTC_DEPOSIT = 10**5 * 10**8  # 1e5 BTC per account: ample
TS0 = 1_795_000_000_000  # ms; each op is stamped 1 ms after the previous one

Step = tuple[Callable[[Any], Any], Any]


# --------------------------------------------------------------------------- our engine
class EngineRunner:
    name = "engine (ours)"

    def __init__(self, ops: list[wl.Op]) -> None:
        self.config = default_config()
        spec = self.config.markets[MARKET]
        self.tick, self.lot = spec.tick, spec.lot
        self.setup_cmds: list[c.Command] = []
        seqs = iter(range(1, 10**12))  # seq n is stamped ts = TS0 + n (1 ms apart)

        for i in range(wl.N_ACCOUNTS):
            seq = next(seqs)
            self.setup_cmds.append(c.CreateAccount(
                seq=seq, ts=TS0 + seq, name=f"bench{i}", api_key=f"bench-key-{i}",
                api_secret=f"s{i}"))
        for i in range(wl.N_ACCOUNTS):
            for asset, amount in (("USDC", USDC_DEPOSIT), ("BTC", BTC_DEPOSIT)):
                seq = next(seqs)
                self.setup_cmds.append(c.Deposit(
                    seq=seq, ts=TS0 + seq, account_id=FIRST_ACCOUNT + i, asset=asset, amount=amount,
                    deposit_id=f"bench-{i}-{asset}"))
        self.cmds: list[c.Command] = []
        for op in ops:
            seq = next(seqs)
            if op.kind == wl.CANCEL:
                self.cmds.append(c.CancelOrder(
                    seq=seq, ts=TS0 + seq, account_id=FIRST_ACCOUNT + op.account,
                    order_id=op.order_id))
            else:
                self.cmds.append(c.PlaceOrder(
                    seq=seq, ts=TS0 + seq, account_id=FIRST_ACCOUNT + op.account, market=MARKET,
                    side=Side.BUY if op.side == wl.BUY else Side.SELL, size=op.size * self.lot,
                    type=OrderType.LIMIT, price=op.price * self.tick,
                    tif=TimeInForce.GTC if op.kind == wl.LIMIT else TimeInForce.IOC))
        self.ex: Exchange | None = None

    def setup(self) -> list[Step]:
        ex = self.ex = Exchange(self.config)
        for cmd in self.setup_cmds:
            events = ex.apply(cmd)
            if any(isinstance(e, Rejected) for e in events):
                raise RuntimeError(f"setup command refused: {cmd} -> {events}")
        apply = ex.apply
        return [(apply, cmd) for cmd in self.cmds]

    def check(self, outcome: wl.Outcome) -> tuple[int | None, list[str]]:
        ex = self.ex
        assert ex is not None
        problems = [f"invariant: {p}" for p in ex.check_invariants()]
        placed = outcome.n_limit + outcome.n_ioc
        if ex.next_order_id - 1 != placed:
            problems.append(f"{ex.next_order_id - 1} orders accepted, {placed} placed")
        live = {oid: o.remaining // self.lot for oid, o in sorted(ex.orders.items())}
        if live != outcome.live:
            problems.append(f"final book differs from the model ({len(live)} vs "
                            f"{len(outcome.live)} resting orders)")
        trades = ex.next_trade_id - 1
        if trades != outcome.trades:
            problems.append(f"{trades} trades, the model has {outcome.trades}")
        return trades, problems

    def teardown(self) -> None:
        self.ex = None


# ------------------------------------------------------------------ pure-Python ceiling
class _COrder:
    __slots__ = ("oid", "account", "is_buy", "price", "remaining", "level")

    def __init__(self, oid: int, account: int, is_buy: bool, price: int, size: int) -> None:
        self.oid = oid
        self.account = account
        self.is_buy = is_buy
        self.price = price
        self.remaining = size
        self.level: _CLevel | None = None


class _CLevel:
    __slots__ = ("queue", "live")

    def __init__(self) -> None:
        self.queue: deque[_COrder] = deque()
        self.live = 0


class CeilingBook:
    """Minimal price-time book: SortedDict price -> FIFO level; cancel marks and skips.

    No ledger, no fees, no holds, no validation, no events: a trade is a tuple
    (maker id, taker id, price, size) in the list each call returns.
    """

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # best = last
        self.asks: SortedDict = SortedDict()  # best = first
        self.orders: dict[int, _COrder] = {}
        self.fills = 0

    def _match(self, t: _COrder) -> list[tuple[int, int, int, int]]:
        trades: list[tuple[int, int, int, int]] = []
        buying = t.is_buy
        levels = self.asks if buying else self.bids
        idx = 0 if buying else -1
        remaining, limit = t.remaining, t.price
        while remaining and levels:
            price, level = levels.peekitem(idx)
            if price > limit if buying else price < limit:
                break
            queue = level.queue
            while remaining and queue:
                m = queue[0]
                if m.remaining == 0:  # cancelled
                    queue.popleft()
                    continue
                q = remaining if remaining < m.remaining else m.remaining
                m.remaining -= q
                remaining -= q
                trades.append((m.oid, t.oid, price, q))
                if m.remaining == 0:
                    queue.popleft()
                    level.live -= 1
                    del self.orders[m.oid]
            if level.live == 0:
                del levels[price]
        t.remaining = remaining
        self.fills += len(trades)
        return trades

    def place(self, args: tuple[int, int, bool, int, int]) -> list[tuple[int, int, int, int]]:
        """A good-till-cancelled limit order: match, then rest the remainder."""
        o = _COrder(*args)
        trades = self._match(o)
        if o.remaining:
            levels = self.bids if o.is_buy else self.asks
            level = levels.get(o.price)
            if level is None:
                level = levels[o.price] = _CLevel()
            level.queue.append(o)
            level.live += 1
            o.level = level
            self.orders[o.oid] = o
        return trades

    def ioc(self, args: tuple[int, int, bool, int, int]) -> list[tuple[int, int, int, int]]:
        """An immediate-or-cancel limit order: match, drop the remainder."""
        return self._match(_COrder(*args))

    def cancel(self, oid: int) -> bool:
        o = self.orders.pop(oid, None)
        if o is None:
            return False
        o.remaining = 0
        level = o.level
        assert level is not None
        level.live -= 1
        if level.live == 0:
            del (self.bids if o.is_buy else self.asks)[o.price]
        return True


class CeilingRunner:
    name = "pure-Python ceiling"

    def __init__(self, ops: list[wl.Op]) -> None:
        spec = default_config().markets[MARKET]  # same integer units as the engine
        self.lot = spec.lot
        tick, lot = spec.tick, spec.lot
        self.ops = [
            (op.kind, op.order_id if op.kind == wl.CANCEL else (
                op.order_id, op.account, op.side == wl.BUY, op.price * tick, op.size * lot))
            for op in ops
        ]
        self.book: CeilingBook | None = None

    def setup(self) -> list[Step]:
        book = self.book = CeilingBook()
        fns: dict[str, Callable[[Any], Any]] = {
            wl.LIMIT: book.place, wl.IOC: book.ioc, wl.CANCEL: book.cancel}
        return [(fns[kind], arg) for kind, arg in self.ops]

    def check(self, outcome: wl.Outcome) -> tuple[int | None, list[str]]:
        book = self.book
        assert book is not None
        problems = []
        live = {oid: o.remaining // self.lot for oid, o in sorted(book.orders.items())}
        if live != outcome.live:
            problems.append("final book differs from the model")
        if book.fills != outcome.trades:
            problems.append(f"{book.fills} fills, the model has {outcome.trades}")
        return book.fills, problems

    def teardown(self) -> None:
        self.book = None


# ----------------------------------------------------------------------- PyPI peers
class PyOrderBookRunner:
    """pyorderbook: Decimal prices, a heap of levels, dict-as-queue per level, uuid4 ids.

    Orders are built before the clock starts (its `Order` is the input message, like
    our `PlaceOrder`); prices in ticks and sizes in lots (it is unit-agnostic).
    """

    name = "pyorderbook"

    def __init__(self, ops: list[wl.Op]) -> None:
        import pyorderbook

        self.mod = pyorderbook
        self.ops = ops
        self.book: Any = None
        self.by_id: dict[int, Any] = {}
        self.fills = 0

    def _place(self, order: Any) -> None:
        self.fills += len(self.book.match(order).trades)

    def _ioc(self, order: Any) -> None:
        self.fills += len(self.book.match(order).trades)
        if order.quantity:  # no IOC in pyorderbook: cancel what rested
            self.book.cancel(order)

    def setup(self) -> list[Step]:
        pob = self.mod
        self.book = pob.Book()
        self.fills = 0
        self.by_id = {}
        steps: list[Step] = []
        for op in self.ops:
            if op.kind == wl.CANCEL:
                steps.append((self.book.cancel, self.by_id[op.order_id]))
                continue
            side = pob.Side.BID if op.side == wl.BUY else pob.Side.ASK
            order = pob.Order(side, MARKET, op.price, op.size)
            self.by_id[op.order_id] = order
            steps.append((self._place if op.kind == wl.LIMIT else self._ioc, order))
        return steps

    def check(self, outcome: wl.Outcome) -> tuple[int | None, list[str]]:
        problems = []
        resting = {id(o) for o in self.book.order_map.values()}
        live = {oid: o.quantity for oid, o in self.by_id.items() if id(o) in resting}
        if live != outcome.live:
            problems.append("final book differs from the model")
        if self.fills != outcome.trades:
            problems.append(f"{self.fills} fills, the model has {outcome.trades}")
        return self.fills, problems

    def teardown(self) -> None:
        self.book = None
        self.by_id = {}


class FastLobRunner:
    """fastlob: Decimal prices and sizes, SortedDict of deque levels, random string ids.

    `Orderbook.start()` runs a background thread (GTD expiry, every 0.1 s); it is
    stopped after each run. `OrderParams` are built before the clock starts; the
    engine-assigned string id of each placed order is recorded (timed) so cancels can
    name it. Its results do not count fills exactly (only whole-order matches), so
    the fills column is left empty; the final book is still compared order by order.
    """

    name = "fastlob"

    def __init__(self, ops: list[wl.Op]) -> None:
        import fastlob

        self.mod = fastlob
        self.ops = ops
        self.params: list[Any] = []
        for op in ops:
            if op.kind == wl.CANCEL:
                self.params.append(None)
                continue
            side = fastlob.OrderSide.BID if op.side == wl.BUY else fastlob.OrderSide.ASK
            self.params.append(fastlob.OrderParams(side, op.price, op.size))
        self._rested = (fastlob.ResultType.LIMIT, fastlob.ResultType.PARTIAL_MARKET)
        self.ob: Any = None
        self.ids: dict[int, str] = {}

    def _place(self, arg: tuple[int, Any]) -> None:
        oid, params = arg
        self.ids[oid] = self.ob.process(params).orderid()

    def _ioc(self, params: Any) -> None:
        result = self.ob.process(params)
        if result.kind() in self._rested:  # no IOC in fastlob: cancel what rested
            self.ob.cancel(result.orderid())

    def _cancel(self, oid: int) -> None:
        self.ob.cancel(self.ids[oid])

    def setup(self) -> list[Step]:
        self.ob = self.mod.Orderbook("bench", start=True)
        self.ids = {}
        steps: list[Step] = []
        for op, params in zip(self.ops, self.params, strict=True):
            if op.kind == wl.CANCEL:
                steps.append((self._cancel, op.order_id))
            else:
                steps.append((self._place, (op.order_id, params)) if op.kind == wl.LIMIT
                             else (self._ioc, params))
        return steps

    def check(self, outcome: wl.Outcome) -> tuple[int | None, list[str]]:
        # Read the book itself (the level queues), not `_orders`: fastlob 0.0.24 never
        # marks a maker FILLED when `engine.fill_whole_orders` consumes it, so `_orders`
        # keeps such makers "pending" although they left the book.
        problems = []
        gen_id = {sid: oid for oid, sid in self.ids.items()}
        cancelled = self.mod.OrderStatus.CANCELED
        live = {}
        for side in (self.ob._bidside, self.ob._askside):
            for lim in side.limits():
                for o in lim._orderqueue:
                    if o.status() is not cancelled:
                        live[gen_id.get(o.id(), -1)] = int(o.quantity())
        if dict(sorted(live.items())) != outcome.live:
            problems.append(f"final book differs from the model ({len(live)} vs "
                            f"{len(outcome.live)} resting orders)")
        return None, problems

    def teardown(self) -> None:
        if self.ob is not None and self.ob.is_running():
            self.ob.stop()
        self.ob = None
        self.ids = {}


class _StandIn:
    """Accepts whatever order_matching does with polars/pandera names at import time
    (subclass, subscript, call); nothing on its matching path ever uses them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __class_getitem__(cls, item: Any) -> Any:
        return cls


_ORDER_MATCHING: list[tuple[types.SimpleNamespace, str | None]] = []  # imported once


def _import_order_matching() -> tuple[types.SimpleNamespace, str | None]:
    """The order_matching names the adapter uses, and a note if stand-ins were needed.

    order-matching 0.12.0 imports polars and pandera at module load
    (`order_book.py`, `schemas.py`) but declares them only in its `polars` extra, so a
    plain `pip install order-matching` cannot be imported. They serve only its
    summary/imbalance/export features; `place`, `match` and `cancel_order` never touch
    them. If they are missing, empty stand-in modules are put in `sys.modules` for the
    duration of the import (and removed after), so the matching code that runs is the
    library's own, unchanged. `pip install "order-matching[polars]"` makes this moot.
    """
    from importlib.metadata import version

    if _ORDER_MATCHING:
        return _ORDER_MATCHING[0]
    note = None
    try:
        from order_matching import enums, matching_engine, order, orders  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("polars", "pandera"):
            raise
        names = ("polars", "pandera", "pandera.polars", "pandera.typing", "pandera.typing.polars")
        stand_ins = {name: types.ModuleType(name) for name in names}
        for mod in stand_ins.values():  # any attribute (pl.LazyFrame, Field, ...) resolves
            mod.__getattr__ = lambda attr: _StandIn  # type: ignore[method-assign]
        saved = {name: sys.modules.get(name) for name in names}
        sys.modules.update(stand_ins)
        try:
            from order_matching import enums, matching_engine, order, orders  # noqa: F401
        finally:
            for name, previous in saved.items():
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous
        note = (f"order-matching {version('order-matching')} imports polars and pandera "
                f"when loaded but lists them only in its `polars` extra ({exc.name} is not "
                f"installed here), so the benchmark gave it empty stand-in modules for that "
                f"import; its place/match/cancel code never uses them")
    from loguru import logger

    logger.disable("order_matching")  # it logs (DEBUG, to stderr by default) on every op
    _ORDER_MATCHING.append((types.SimpleNamespace(
        MatchingEngine=matching_engine.MatchingEngine, LimitOrder=order.LimitOrder,
        Orders=orders.Orders, Side=enums.Side), note))
    return _ORDER_MATCHING[0]


class OrderMatchingRunner:
    """order-matching (PyPI `order-matching`): float prices and sizes, a dict of price
    levels per side whose orders sit in a list re-sorted by timestamp on every insert;
    `place` and `cancel_order` find orders by scanning every resting order, and a trade
    id is a Faker `uuid4()`.

    Its API queues orders (`place`) and matches the queue (`match(timestamp)`); each op
    is one order placed and matched at once, with timestamps 1 µs apart so the queue
    and the levels keep arrival order. No IOC: the adapter cancels an IOC remainder
    (`cancel_order`) right after matching, inside the timed op. Orders (and their
    one-order `Orders` wrappers) are built before the clock starts; prices in ticks and
    sizes in lots as floats, which stay exact integers here. Only the first
    `--order-matching-ops` ops run (see the module docstring).
    """

    name = "order-matching"
    max_ops = 20_000

    def __init__(self, ops: list[wl.Op]) -> None:
        self.mod, self.note = _import_order_matching()
        self.ops = ops
        self.engine: Any = None
        self.fills = 0
        self.t0 = datetime.datetime(2026, 1, 1)

    def _place(self, arg: tuple[Any, Any]) -> None:
        order, batch = arg
        self.engine.place(batch)
        self.fills += len(self.engine.match(timestamp=order.timestamp).trades)

    def _ioc(self, arg: tuple[Any, Any]) -> None:
        order, batch = arg
        self.engine.place(batch)
        self.fills += len(self.engine.match(timestamp=order.timestamp).trades)
        if order.size > 0:  # no IOC in order-matching: cancel what rested
            self.engine.cancel_order(order.order_id)

    def setup(self) -> list[Step]:
        m = self.mod
        self.engine = m.MatchingEngine(seed=1)
        self.fills = 0
        steps: list[Step] = []
        for k, op in enumerate(self.ops):
            if op.kind == wl.CANCEL:
                steps.append((self.engine.cancel_order, str(op.order_id)))
                continue
            order = m.LimitOrder(
                side=m.Side.BUY if op.side == wl.BUY else m.Side.SELL, price=float(op.price),
                size=float(op.size), timestamp=self.t0 + datetime.timedelta(microseconds=k),
                order_id=str(op.order_id), trader_id=str(op.account))
            steps.append((self._place if op.kind == wl.LIMIT else self._ioc,
                          (order, m.Orders([order]))))
        return steps

    def check(self, outcome: wl.Outcome) -> tuple[int | None, list[str]]:
        problems = []
        book = self.engine.unprocessed_orders
        live: dict[int, int] = {}
        for side in (book.bids, book.offers):
            for level in side.values():
                for o in level:
                    if o.size > 0:
                        live[int(o.order_id)] = int(o.size)
        if dict(sorted(live.items())) != outcome.live:
            problems.append(f"final book differs from the model ({len(live)} vs "
                            f"{len(outcome.live)} resting orders)")
        if self.fills != outcome.trades:
            problems.append(f"{self.fills} fills, the model has {outcome.trades}")
        return self.fills, problems

    def teardown(self) -> None:
        self.engine = None


# ------------------------------------------------------------------------- running
class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ops_per_s: list[float] = []
        self.latencies: list[array[int]] = []
        self.cpu_latencies: list[array[int]] = []
        self.fills: int | None = None
        self.problems: list[str] = []
        self.skipped: str | None = None
        self.n_ops = 0  # ops this row ran (a prefix of the workload for some peers)
        self.prefix = False  # True: not the whole workload, so no ÷ ceiling
        self.ref = EngineRunner.name  # the engine row its "ours ÷ it" divides by


def timed_run(steps: list[Step], cpu: bool = False) -> tuple[float, list[int], list[int]]:
    """(ops/s, per-op wall ns, per-op on-CPU ns if `cpu` else []) for one pass over the steps.

    On-CPU time (`thread_time_ns`) leaves out the time the OS ran something else: on a
    shared machine the wall-clock tail is mostly preemption. It costs two more clock
    calls per op, so ops/s are a little lower with it.
    """
    clock = time.perf_counter_ns
    lat: list[int] = []
    cpu_lat: list[int] = []
    append = lat.append
    gc.collect()
    if cpu:
        thread_clock = time.thread_time_ns
        cpu_append = cpu_lat.append
        start = clock()
        for fn, arg in steps:
            t0, c0 = clock(), thread_clock()
            fn(arg)
            cpu_append(thread_clock() - c0)
            append(clock() - t0)
        total = clock() - start
        return len(steps) * 1e9 / total, lat, cpu_lat
    start = clock()
    for fn, arg in steps:
        t0 = clock()
        fn(arg)
        append(clock() - t0)
    total = clock() - start
    return len(steps) * 1e9 / total, lat, cpu_lat


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    k = max(0, min(len(sorted_ns) - 1, int(-(-p * len(sorted_ns) // 100)) - 1))
    return sorted_ns[k] / 1000


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, nproc={os.cpu_count()}, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.release()}")


IMPLS: dict[str, Callable[[list[wl.Op]], Any]] = {
    "engine": EngineRunner, "ceiling": CeilingRunner,
    "pyorderbook": PyOrderBookRunner, "fastlob": FastLobRunner,
    "order-matching": OrderMatchingRunner,
}


def dist_versions(*dists: str) -> list[str]:
    """"name version" (or "name not installed") for each distribution; every benchmark's
    report line uses it."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in dists:
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist} not installed")
    return found


def versions() -> str:
    return ", ".join(dist_versions("sortedcontainers", "pyorderbook", "fastlob",
                                   "order-matching"))


def engine_revision() -> str:
    """HEAD and whether engine/ differs from it (read-only git calls; no index refresh)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "diff", "--quiet", "HEAD", "--",
             "engine"], capture_output=True, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    state = " with uncommitted changes in engine/" if dirty else ", engine/ clean"
    warn_if_stale_build()
    return f"{head}{state}; engine build: {native.running()} ({native.reason})"


def warn_if_stale_build() -> None:
    """Say it loudly when a stale compiled build made this run use the interpreted engine
    (the servers a benchmark starts choose the same way): figures 3-4x off."""
    if native.running() == "python" and "stale" in native.reason:
        print("WARNING: the compiled engine is stale, so this run uses the interpreted "
              "engine (and so do the servers it starts); `make native` first",
              file=sys.stderr, flush=True)


def prefix_name(name: str, n: int) -> str:
    return f"{name}, first {n:,} ops"


def make_runners(names: list[str], ops: list[wl.Op], outcome: wl.Outcome, seed: int,
                 prefix_ops: int) -> tuple[list[Any], list[Result]]:
    """The runners, each with `n_ops`, `outcome` (what its book must end with) and `ref`
    (the engine row its ratio uses). A runner class with `max_ops` gets only the first
    `prefix_ops` ops; then, if `engine` is among `names`, our engine runs that same
    prefix too, in a row of its own placed just before it."""
    runners: list[Any] = []
    skipped: list[Result] = []
    engine_on: dict[int, Any] = {}
    for name in names:
        cls = IMPLS[name]
        n = min(len(ops), prefix_ops) if getattr(cls, "max_ops", None) else len(ops)
        sub, sub_outcome = ops, outcome
        if n < len(ops):
            sub, sub_outcome = wl.generate_with_outcome(n, seed)
            assert sub == ops[:n], "the workload generator is not prefix-stable"
        try:
            runner = cls(sub)
        except ImportError as exc:
            r = Result(name)
            r.skipped = f"not measured: {name} is not importable ({exc.msg}); " \
                        f"`make bench` installs the peers (the `bench` extra)"
            skipped.append(r)
            continue
        runner.n_ops, runner.outcome, runner.ref = n, sub_outcome, EngineRunner.name
        if n < len(ops):
            runner.name = prefix_name(cls.name, n)
            if "engine" in names:
                runner.ref = prefix_name(EngineRunner.name, n)
                if n not in engine_on:
                    ours = engine_on[n] = EngineRunner(sub)
                    ours.name = runner.ref
                    ours.n_ops, ours.outcome, ours.ref = n, sub_outcome, ours.name
                    runners.append(ours)
        runners.append(runner)
    # pyorderbook calls logging.basicConfig(level=INFO) on import; fastlob logs at INFO
    # on every op. Keep the root logger at its default (WARNING) so neither prints.
    logging.getLogger().setLevel(logging.WARNING)
    return runners, skipped


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def table(results: list[Result]) -> str:
    by = {r.name: r for r in results}
    ceiling = by.get(CeilingRunner.name)
    c_med = statistics.median(ceiling.ops_per_s) if ceiling and ceiling.ops_per_s else None
    cpu = any(any(len(a) for a in r.cpu_latencies) for r in results)
    head = ("| implementation | ops/s median | ops/s min | ops/s max | p50 µs | p90 µs | p99 µs "
            "| p99.9 µs |" + (" p99 on-CPU µs | p99.9 on-CPU µs |" if cpu else "")
            + " fills | ÷ ceiling | ours ÷ it |")
    ncols = 13 if cpu else 11
    lines = [head, "|" + "---|" * ncols]
    for r in results:
        if r.skipped or not r.ops_per_s:
            lines.append(f"| {r.name} | {r.skipped or 'not measured'} |" + " |" * (ncols - 2))
            continue
        med = statistics.median(r.ops_per_s)
        lat = sorted(median_run(r))
        pct = " | ".join(f"{percentile(lat, p):.1f}" for p in (50, 90, 99, 99.9))
        if cpu:
            on_cpu = sorted(median_run(r, on_cpu=True))
            pct += " | " + " | ".join(f"{percentile(on_cpu, p):.1f}" for p in (99, 99.9))
        vs_c = f"{med / c_med:.2f}" if c_med and not r.prefix else "-"
        ref = by.get(r.ref)
        ours_vs = f"{statistics.median(ref.ops_per_s) / med:.2f}" if ref and ref.ops_per_s else "-"
        fills = fmt_int(r.fills) if r.fills is not None else "n/a"
        lines.append(f"| {r.name} | {fmt_int(med)} | {fmt_int(min(r.ops_per_s))} | "
                     f"{fmt_int(max(r.ops_per_s))} | {pct} | {fills} | {vs_c} | {ours_vs} |")
    return "\n".join(lines)


def median_run(r: Result, on_cpu: bool = False) -> array[int]:
    """Per-op latencies (wall, or on-CPU) of the run whose ops/s is closest to the median."""
    med = statistics.median(r.ops_per_s)
    i = min(range(len(r.ops_per_s)), key=lambda k: abs(r.ops_per_s[k] - med))
    return (r.cpu_latencies if on_cpu else r.latencies)[i]


def table_by_kind(results: list[Result], ops: list[wl.Op]) -> str:
    """p50 / p99 latency per kind of op, from each implementation's median run."""
    kinds = (wl.LIMIT, wl.IOC, wl.CANCEL)
    head = "| implementation | " + " | ".join(
        f"{k} p50 µs | {k} p99 µs | {k} mean µs" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(kinds))]
    for r in results:
        if r.skipped or not r.ops_per_s:
            continue
        by_kind: dict[str, list[int]] = {k: [] for k in kinds}
        for op, ns in zip(ops[:r.n_ops], median_run(r), strict=True):
            by_kind[op.kind].append(ns)
        cells = []
        for k in kinds:
            lat = sorted(by_kind[k])
            if not lat:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{percentile(lat, 50):.1f}", f"{percentile(lat, 99):.1f}",
                      f"{sum(lat) / len(lat) / 1000:.1f}"]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_engine(ops: list[wl.Op], outcome: wl.Outcome, top: int = 25) -> str:
    runner = EngineRunner(ops)
    steps = runner.setup()
    prof = cProfile.Profile()
    gc.collect()
    prof.enable()
    for fn, arg in steps:
        fn(arg)
    prof.disable()
    _, problems = runner.check(outcome)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    if problems:
        out.write("PROBLEMS: " + "; ".join(problems) + "\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--impls", default="engine,ceiling,pyorderbook,fastlob,order-matching",
                    help="comma-separated subset of " + ",".join(IMPLS))
    ap.add_argument("--order-matching-ops", type=int, default=OrderMatchingRunner.max_ops,
                    help="order-matching runs only this prefix of the workload (O(book) per "
                         "op); our engine runs it too, in a row of its own")
    ap.add_argument("--cpu-time", action="store_true",
                    help="also time each op on-CPU (thread_time_ns): p99/p99.9 without preemption")
    ap.add_argument("--profile", action="store_true",
                    help="run cProfile on one engine run and print the top 25 by tottime")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    ops, outcome = wl.generate_with_outcome(args.ops, args.seed)
    print(f"# engine benchmark, {datetime.date.today().isoformat()}")
    print()
    print(f"- machine: {machine()}")
    print(f"- engine revision: {engine_revision()}; {versions()}")
    print(f"- command: `python loadtests/bench_engine.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"- workload (seed {args.seed}, generated in {time.perf_counter() - t:.1f} s): "
          f"{wl.describe(ops, outcome)}")
    if args.profile:
        print()
        print("## cProfile: one engine run, top 25 by tottime")
        print()
        print("```")
        print(profile_engine(ops, outcome).rstrip())
        print("```")
        return 0

    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = sorted(set(names) - set(IMPLS))
    if unknown:
        ap.error(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(IMPLS)}")
    runners, skipped = make_runners(names, ops, outcome, args.seed, args.order_matching_ops)
    results = {r.name: Result(r.name) for r in runners}
    prefixes: dict[int, wl.Outcome] = {}
    for runner in runners:
        res = results[runner.name]
        res.n_ops, res.ref, res.prefix = runner.n_ops, runner.ref, runner.n_ops < len(ops)
        if res.prefix:
            prefixes[runner.n_ops] = runner.outcome
    for n, sub_outcome in sorted(prefixes.items()):
        print(f"- rows marked \"first {n:,} ops\": the same workload cut after op {n:,}: "
              f"{wl.describe(ops[:n], sub_outcome)}")
    print(f"- {args.runs} runs per implementation, interleaved; latency from the median run")
    print()
    cpu_time = args.cpu_time
    for run in range(args.runs):
        for runner in runners:
            res = results[runner.name]
            steps = runner.setup()
            try:
                rate, lat, cpu_lat = timed_run(steps, cpu=cpu_time)
            except Exception as exc:  # a peer blowing up must not hide the other rows
                if isinstance(runner, EngineRunner):
                    raise  # an engine exception is a bug: show the traceback
                res.skipped = f"not measured: run {run + 1} raised {exc!r}"
                runner.teardown()
                continue
            del steps
            fills, problems = runner.check(runner.outcome)
            runner.teardown()
            res.ops_per_s.append(rate)
            res.latencies.append(array("q", lat))
            res.cpu_latencies.append(array("q", cpu_lat))
            res.fills = fills
            res.problems += [f"run {run + 1}: {p}" for p in problems]
            print(f"  run {run + 1}/{args.runs} {runner.name}: {fmt_int(rate)} ops/s"
                  + (f"  PROBLEMS: {problems[:3]}" if problems else ""), file=sys.stderr)
            gc.collect()

    ordered = [results[r.name] for r in runners] + skipped
    print(table(ordered))
    print()
    print("÷ ceiling: the row's median ops/s over the ceiling's; ours ÷ it: our engine's median "
          "ops/s over the row's. Latency is per op, in µs, from the row's median run.")
    if prefixes:
        print("Rows marked \"first N ops\" ran only the workload's first N ops (order-matching "
              "finds orders by scanning the whole book); ÷ ceiling is left out for them"
              + (", and their ours ÷ it is against our engine on the same N ops (its own row)."
                 if "engine" in names else "."))
    notes = {getattr(r, "note", None) for r in runners} - {None}
    for note in sorted(notes):
        print(f"Note: {note}.")
    print()
    print("Latency by kind of op (same median runs):")
    print()
    print(table_by_kind(ordered, ops))
    print()
    bad = [r for r in ordered if r.problems]
    for r in bad:
        print(f"- **{r.name}: {len(r.problems)} problems**, first: {r.problems[0]}")
    if not bad:
        print("- every measured run ended with the model's book "
              "(same resting orders and sizes; same fills where counted)"
              + ("; engine `check_invariants() == []` after every run"
                 if EngineRunner.name in results else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
