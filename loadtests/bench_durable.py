"""Durable throughput: commands/s and trades/s through the real sequencer with group commit,
on PostgreSQL and SQLite, against the database's own write ceiling for the same rows.

    python loadtests/bench_durable.py [--commands 30000] [--runs 3] [--seed 1]
                                      [--mix workload,cross] [--concurrency 256]
                                      [--backends postgres,sqlite] [--postgres-url URL]
                                      [--sqlite-dir DIR] [--loop uvloop|asyncio] [--profile]

No HTTP and no WebSocket: this is the sequencer, the engine, the store and the
publishing step of one server process, driven in-process (bench_engine.py measures the
engine alone; the REST and WebSocket benchmarks are separate). Issue target: at least
50,000 trades/s on PostgreSQL with a commit p99 of at most 10 ms.

**Ours.** For each measurement a fresh database is created (SQLite: a file in
`--sqlite-dir`; PostgreSQL: a throwaway database `exch_bench_<hex>` on the server of
`--postgres-url` / EXCHANGE_TEST_POSTGRES_URL, dropped right after) and migrated with
`app.db.upgrade`, the function `exchange db upgrade` runs. Then `app.runtime.Runtime`
starts on it exactly as `exchange serve` starts it (store, recovery of the empty
journal, `Sequencer(engine, store.write_batch, runtime.publish, runtime.rebuild,
batch_max=EXCHANGE_BATCH_MAX)`, snapshots every EXCHANGE_SNAPSHOT_EVERY commands,
read models and the WebSocket hub with nobody subscribed), on uvloop as uvicorn runs
it. 20 accounts are created and funded (not timed); then `--concurrency` asyncio tasks
share one iterator over the workload and each loops `await sequencer.submit(cmd)`,
which is what an HTTP handler does after parsing and auth. Every command is enqueued
synchronously when it is taken from the iterator, so the queue holds the commands in
workload order and the engine gives the k-th placement order id k, as the workload's
cancels assume. Measured:

* commands/s and trades/s: workload commands (trades: `TradeEvent`s, one per maker
  fill; each writes a trade row and two fill rows) over the wall time from the first
  submit to the last acknowledgement;
* commit latency: each `Store.write_batch` call timed by a wrapper around it (the same
  interval the sequencer's commit histogram observes: row building, SQL, COMMIT);
  batch size is the number of commands per call; "ack" is submit-to-result per command;
* where the time goes: engine apply (the sequencer's own `apply_seconds_total`),
  `write_batch`, `publish` (timed by a wrapper), and the rest (submitters waking up,
  futures, the event loop).

After each run the final book must equal the workload model's (same resting orders,
sizes and trade count), the invariants must hold, the journal must end at the last
seq, and the balances projection must match the engine (`app.recovery.verify_balances`),
or the script exits non-zero.

**Peer: the database's write ceiling for the same rows.** The batches ours committed
(same commands, same events, same batch boundaries) are turned into the exact SQL and
parameter tuples `Store.write_batch` sends (`Store.batch_statements`, untimed), and
then written into another fresh, migrated database of the same backend through the
same driver connection settings (asyncpg with `synchronous_commit=on`; aiosqlite with
WAL and `synchronous=FULL`): per batch one transaction and a COMMIT, back to back,
nothing else; on PostgreSQL through the function ours uses (`write_asyncpg`: one
statement reading each table's rows from a jsonb parameter, or for a batch with an
update a transaction of statements with COPY for large inserts), on SQLite
`executemany`. No
engine, no row building, no SQLAlchemy, no event loop contention. "ours ÷ peer" is the
share of that ceiling the exchange reaches; the rest of the wall time is the engine,
building the rows, publishing, and acknowledging, all on one core-bound thread that
cannot overlap with the commit (the sequencer applies the next batch only after the
previous one is durable). The peer does not write the engine snapshots ours writes
(a few per run, off the sequencer).

Mixes (`--mix`): `workload` is loadtests/workload.py (62% resting limits, 8% crossing
IOC, 30% cancels; ~0.36 trades per command); `cross` is trade-heavy: 60% crossing IOC
takers (2 ticks through the best, ~1.4 fills each), 35% resting makers, 5% cancels
(~0.85 trades per command), generated the same way (simulated book, no self-trades,
every cancel live).

Runs are interleaved (run 1 of every backend and mix, ours then its peer, then run 2);
the table shows medians (min-max) and the latencies of the median run. On a 2-core box
the defaults (30,000 commands, 3 runs, both mixes, both backends) take 2-3 minutes;
`--commands 5000 --runs 1` is a smoke test of under 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import io
import os
import pstats
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

try:
    from loadtests import workload as wl
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import workload as wl

from app import native
from app.config import Settings, load_exchange_config
from app.db import upgrade_async
from app.recovery import verify_balances
from app.runtime import Runtime
from app.sequencer import Sequencer
from app.store import Store
from app.store.store import Statement, write_asyncpg
from engine import commands as c
from engine.commands import Command
from engine.events import Rejected
from engine.exchange import Exchange
from engine.markets import ExchangeConfig
from engine.types import OrderType, Side, TimeInForce
from loadtests.bench_engine import dist_versions, machine, warn_if_stale_build
from tests.dbutil import create_database, drop_database

MARKET = "BTC-USDC"
FIRST_ACCOUNT = 1000
USDC_DEPOSIT = 10**9 * 10**6
BTC_DEPOSIT = 10**5 * 10**8
TARGET_TRADES_PER_S = 50_000  # the issue: >= 50k trades/s on PostgreSQL ...
TARGET_COMMIT_P99_S = 0.010  # ... with a commit p99 <= 10 ms

# The trade-heavy mix ("cross")
CROSS_P_TAKE = 0.60  # IOC takers
CROSS_P_CANCEL = 0.05  # cancels of live orders; the rest are resting makers
CROSS_TAKER_SIZE_MEAN = 10.0  # lots
CROSS_MAKER_SIZE_MEAN = 20.0  # lots: makers bigger than takers keeps the book stocked
CROSS_THROUGH = 2  # ticks an IOC limit goes through the opposite best
CROSS_MAKER_OFFSET_MEAN = 2.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ workloads
def _bounded_exp(rng: random.Random, mean: float, cap: int) -> int:
    return min(1 + int(rng.expovariate(1.0 / mean)), cap)


def cross_mix(n_ops: int, seed: int) -> tuple[list[wl.Op], wl.Outcome]:
    """A trade-heavy mix: most orders are IOC takers that cross (see the module docstring).

    Built like workload.py: a simulated price-time book decides every price, so takers
    always find a maker, makers never cross, every cancel targets a live order, and
    accounts 0-15 only make while 16-19 only take (no self-trade prevention)."""
    rng = random.Random(seed)
    book = wl._Model()
    ops: list[wl.Op] = []
    mid = wl.START_MID
    next_id = 1
    n_limit = n_ioc = n_cancel = max_live = 0
    for _ in range(n_ops):
        if rng.random() < wl.MID_STEP_PROB:
            mid += 1 if rng.random() < 0.5 else -1
        r = rng.random()
        is_buy = rng.random() < 0.5
        bid, ask = book.best_bid(), book.best_ask()
        opposite = ask if is_buy else bid
        side = wl.BUY if is_buy else wl.SELL
        if r < CROSS_P_TAKE and opposite is not None:
            price = opposite + CROSS_THROUGH if is_buy else max(opposite - CROSS_THROUGH, 1)
            size = _bounded_exp(rng, CROSS_TAKER_SIZE_MEAN, 200)
            account = wl.MAKER_ACCOUNTS + rng.randrange(wl.N_ACCOUNTS - wl.MAKER_ACCOUNTS)
            ops.append(wl.Op(wl.IOC, next_id, account, side, price, size))
            book.take(is_buy, price, size)
            next_id += 1
            n_ioc += 1
        elif r < CROSS_P_TAKE + CROSS_P_CANCEL and book.live_ids:
            oid = book.live_ids[rng.randrange(len(book.live_ids))]
            buy, price, remaining, account = book.orders[oid]
            ops.append(wl.Op(wl.CANCEL, oid, account, wl.BUY if buy else wl.SELL, price,
                             remaining))
            book.cancel(oid)
            n_cancel += 1
        else:
            offset = _bounded_exp(rng, CROSS_MAKER_OFFSET_MEAN, 20)
            size = _bounded_exp(rng, CROSS_MAKER_SIZE_MEAN, 500)
            if is_buy:
                price = mid - offset if ask is None else min(mid - offset, ask - 1)
            else:
                price = mid + offset if bid is None else max(mid + offset, bid + 1)
            price = max(price, 1)
            account = rng.randrange(wl.MAKER_ACCOUNTS)
            ops.append(wl.Op(wl.LIMIT, next_id, account, side, price, size))
            book.rest(next_id, is_buy, price, size, account)
            next_id += 1
            n_limit += 1
            max_live = max(max_live, len(book.live_ids))
    live = {oid: o[2] for oid, o in sorted(book.orders.items())}
    return ops, wl.Outcome(
        n_limit=n_limit, n_ioc=n_ioc, n_cancel=n_cancel, trades=book.trades,
        filled_lots=book.filled, live=live,
        live_bid_lots=sum(o[2] for o in book.orders.values() if o[0]),
        live_ask_lots=sum(o[2] for o in book.orders.values() if not o[0]),
        max_live=max_live, stale_cancels=0,
    )


MIXES = {"workload": wl.generate_with_outcome, "cross": cross_mix}


def setup_commands() -> list[Command]:
    """20 accounts, each funded with ample USDC and BTC (submitted before timing)."""
    cmds: list[Command] = [
        c.CreateAccount(name=f"bench{i}", api_key=f"bench-key-{i}", api_secret=f"s{i}")
        for i in range(wl.N_ACCOUNTS)
    ]
    for i in range(wl.N_ACCOUNTS):
        for asset, amount in (("USDC", USDC_DEPOSIT), ("BTC", BTC_DEPOSIT)):
            cmds.append(c.Deposit(account_id=FIRST_ACCOUNT + i, asset=asset, amount=amount,
                                  deposit_id=f"bench-{i}-{asset}"))
    return cmds


def workload_commands(ops: list[wl.Op], tick: int, lot: int) -> list[Command]:
    """Unstamped commands, as a handler submits them (the sequencer stamps seq and ts)."""
    out: list[Command] = []
    for op in ops:
        account = FIRST_ACCOUNT + op.account
        if op.kind == wl.CANCEL:
            out.append(c.CancelOrder(account_id=account, order_id=op.order_id))
        else:
            out.append(c.PlaceOrder(
                account_id=account, market=MARKET,
                side=Side.BUY if op.side == wl.BUY else Side.SELL, size=op.size * lot,
                type=OrderType.LIMIT, price=op.price * tick,
                tif=TimeInForce.GTC if op.kind == wl.LIMIT else TimeInForce.IOC))
    return out


# ------------------------------------------------------------------------------ databases
@dataclass
class Backend:
    name: str  # "PostgreSQL" | "SQLite"
    base: str  # PostgreSQL: server URL; SQLite: directory

    @contextlib.asynccontextmanager
    async def fresh(self) -> AsyncIterator[str]:
        """A new, migrated, empty database URL, removed afterwards."""
        if self.name == "PostgreSQL":
            url = await create_database(self.base, prefix="exch_bench_")
        else:
            path = Path(self.base) / f"exch_bench_{secrets.token_hex(6)}.db"
            url = f"sqlite+aiosqlite:///{path}"
        try:
            await upgrade_async(url)  # what `exchange db upgrade` runs
            yield url
        finally:
            if self.name == "PostgreSQL":
                await drop_database(url)
            else:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)


def pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_server_info(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(url), timeout=10)
    try:
        ver = await conn.fetchval("SHOW server_version")
        rows = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[]) "
            "ORDER BY name",
            ["fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
             "shared_buffers", "commit_delay"])
    finally:
        await conn.close()
    host = make_url(url).host or "local socket"
    settings = ", ".join(
        f"{r['name']}={r['setting']}" + (f" ({r['unit']})" if r["unit"] else "") for r in rows)
    return f"PostgreSQL {ver} at {host}; {settings}"


def filesystem_of(path: str) -> str:
    """The filesystem type holding `path` (ext4, tmpfs, ...), from /proc/mounts."""
    best, fstype = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) \
                        and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


# ------------------------------------------------------------------------------ measuring
@dataclass
class OursRun:
    wall_s: float
    commands: int
    trades: int
    setup_batches: list[list[Command]]  # the commands of each commit (stamped in place)
    batches: list[list[Command]]
    state_hash: str
    commit_s: list[float]
    ack_ns: array[int]
    apply_s: float
    publish_s: float
    snapshots: int

    @property
    def write_s(self) -> float:
        return sum(self.commit_s)


@dataclass
class PeerRun:
    wall_s: float
    commit_s: list[float]
    build_s: float  # untimed preparation: Store.write_batch's row building for these batches
    rows: dict[str, int]  # rows written per table (inserts, upserts and updates)


@dataclass
class Cell:
    """One (backend, mix, concurrency): its ours and peer runs."""

    backend: str
    mix: str
    concurrency: int
    ours: list[OursRun] = field(default_factory=list)
    peer: list[PeerRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def run_ours(url: str, ops: list[wl.Op], outcome: wl.Outcome, concurrency: int,
                   data_dir: str, problems: list[str],
                   profile: cProfile.Profile | None = None) -> OursRun:
    settings = Settings(database_url=url, data_dir=data_dir, admin_key="bench-admin",
                        admin_secret="0" * 64, rate_limits="off")
    rt = Runtime(settings)
    await rt.start()  # opens the store; recovery and the sequencer start in a task
    store = rt.store
    assert store is not None
    # Only the commands of each batch are kept (the events are rebuilt for the peer): holding
    # every event of the run would grow the heap the garbage collector walks, which the
    # server does not have to do.
    batches: list[list[Command]] = []
    commit_s: list[float] = []
    publish_s = [0.0]
    write_inner, publish_inner = store.write_batch, rt.publish
    clock = time.perf_counter

    async def write_batch(entries: Sequence[Any]) -> None:
        t0 = clock()
        await write_inner(entries)
        commit_s.append(clock() - t0)
        batches.append([cmd for _seq, _ts, cmd, _events in entries])

    def publish(entries: Sequence[Any]) -> None:
        t0 = clock()
        publish_inner(entries)
        publish_s[0] += clock() - t0

    snapshots = [0]
    save_inner = store.save_snapshot

    async def save_snapshot(*args: Any) -> None:
        snapshots[0] += 1
        await save_inner(*args)

    # Instance attributes, set before the startup task builds the Sequencer from them
    store.write_batch = write_batch  # type: ignore[method-assign]
    store.save_snapshot = save_snapshot  # type: ignore[method-assign]
    rt.publish = publish  # type: ignore[method-assign]
    try:
        await rt.wait_ready()
        seq = rt.sequencer
        if seq is None or rt.status != "ready":
            raise RuntimeError(f"runtime did not open: {rt.status} {rt.startup_error}")
        assert isinstance(seq, Sequencer)
        for events in await asyncio.gather(*(seq.submit(cmd) for cmd in setup_commands())):
            if any(isinstance(e, Rejected) for e in events):
                raise RuntimeError(f"setup command refused: {events}")
        market = rt.config.markets[MARKET]
        cmds = workload_commands(ops, market.tick, market.lot)
        setup_batches = list(batches)
        batches.clear()
        commit_s.clear()
        publish_s[0] = 0.0
        snapshots[0] = 0
        apply0 = seq.stats.apply_seconds_total
        first_seq = seq.seq + 1
        it = iter(cmds)
        ack = array("q")

        async def submitter() -> None:
            submit, now, record = seq.submit, time.perf_counter_ns, ack.append
            for cmd in it:  # next() and the enqueue in submit() happen with no await between
                t0 = now()
                await submit(cmd)
                record(now() - t0)

        if profile is not None:
            profile.enable()
        t0 = clock()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        wall = clock() - t0
        if profile is not None:
            profile.disable()
        apply_s = seq.stats.apply_seconds_total - apply0
        if rt._snapshot_task is not None:  # let a snapshot in flight finish before closing
            await rt._snapshot_task
        # ---- checks (untimed)
        engine: Exchange = seq.engine
        last = await store.max_seq()
        if last != seq.seq or seq.committed_seq != seq.seq:
            problems.append(f"journal ends at {last}, sequencer at {seq.seq}")
        ticks = sum(1 for batch in batches for cmd in batch if isinstance(cmd, c.Tick))
        if seq.seq - first_seq + 1 != len(cmds) + ticks:
            problems.append(f"{seq.seq - first_seq + 1} commands journaled, {len(cmds)} sent")
        live = {oid: o.remaining // market.lot for oid, o in sorted(engine.orders.items())}
        if live != outcome.live:
            problems.append(f"final book differs from the model ({len(live)} vs "
                            f"{len(outcome.live)} resting orders)")
        trades = engine.next_trade_id - 1  # the setup makes none
        if trades != outcome.trades:
            problems.append(f"{trades} trades, the model has {outcome.trades}")
        problems.extend(f"invariant: {p}" for p in engine.check_invariants()[:3])
        problems.extend(f"projection: {p}" for p in (await verify_balances(store, engine))[:3])
        return OursRun(wall, len(cmds), trades, setup_batches, batches, engine.state_hash(),
                       commit_s, ack, apply_s, publish_s[0], snapshots[0])
    finally:
        await rt.stop()


async def run_peer(url: str, config: ExchangeConfig, ours: OursRun) -> PeerRun:
    """The same rows as `ours` wrote, in the same batches, through the bare driver."""
    store = await Store.open(url)
    try:
        # Rebuild ours' entries: the same stamped commands applied in the same order to a
        # fresh engine give the same events (the engine is deterministic; checked by hash).
        ex = Exchange(config)

        def entries_of(cmds: list[Command]) -> list[tuple[int, int, Command, list[Any]]]:
            return [(cmd.seq, cmd.ts, cmd, ex.apply(cmd)) for cmd in cmds]

        for cmds in ours.setup_batches:  # as ours: written before the clock starts
            await store.write_batch(entries_of(cmds))
        # The exact statements and parameter tuples Store.write_batch sends for each batch
        prepared: list[list[Statement]] = []
        build_s = 0.0
        for cmds in ours.batches:
            entries = entries_of(cmds)
            t0 = time.perf_counter()
            prepared.append(store.batch_statements(entries))
            build_s += time.perf_counter() - t0
        if ex.state_hash() != ours.state_hash:
            raise RuntimeError("peer: the rebuilt events differ from ours (state hash)")
        rows: dict[str, int] = {}
        for calls in prepared:
            for sql, params, *_ in calls:
                words = sql.split()
                table = (words[2] if words[0].upper() == "INSERT" else words[1]).strip('"')
                rows[table] = rows.get(table, 0) + len(params)
        commit_s: list[float] = []
        clock = time.perf_counter
        async with store.engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            started = clock()
            if store.dialect == "postgresql":
                for calls in prepared:
                    t0 = clock()
                    if driver.is_in_transaction():
                        raise RuntimeError("peer: connection already in a transaction")
                    await write_asyncpg(driver, calls)  # as ours
                    commit_s.append(clock() - t0)
            else:
                for calls in prepared:
                    t0 = clock()
                    if driver.in_transaction:
                        raise RuntimeError("peer: connection already in a transaction")
                    await driver.execute("BEGIN")
                    for sql, params, *_ in calls:
                        await driver.executemany(sql, params)
                    await driver.commit()
                    commit_s.append(clock() - t0)
            wall = clock() - started
        last = await store.max_seq()
        expected = ours.batches[-1][-1].seq if ours.batches else 0
        if last != expected:
            raise RuntimeError(f"peer: journal ends at {last}, expected {expected}")
        return PeerRun(wall, commit_s, build_s, rows)
    finally:
        await store.close()


# ------------------------------------------------------------------------------ report
def pct(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, int(-(-p * len(sorted_xs) // 100)) - 1))
    return sorted_xs[k]


def median_index(xs: list[float]) -> int:
    med = statistics.median(xs)
    return min(range(len(xs)), key=lambda i: abs(xs[i] - med))


def fmt_range(xs: list[float]) -> str:
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def ms(s: float) -> str:
    return f"{s * 1000:.2f}"


def results_table(cells: list[Cell]) -> list[str]:
    lines = [
        "| backend | mix | submitters | implementation | commands/s median (min-max) "
        "| trades/s median | commands per commit (mean) | commit p50 ms | commit p99 ms "
        "| ack p50 ms | ack p99 ms | ours ÷ peer |",
        "|" + "---|" * 12,
    ]
    for cell in cells:
        if not cell.ours:
            continue
        o_rate = [r.commands / r.wall_s for r in cell.ours]
        o_trade = [r.trades / r.wall_s for r in cell.ours]
        o = cell.ours[median_index(o_rate)]
        commits = sorted(o.commit_s)
        acks = sorted(o.ack_ns)
        size = o.commands / max(len(o.commit_s), 1)
        lead = f"| {cell.backend} | {cell.mix} | {cell.concurrency} "
        p_rate = [cell.ours[i].commands / r.wall_s for i, r in enumerate(cell.peer)]
        ratio = (f"{statistics.median(o_rate) / statistics.median(p_rate):.2f}"
                 if p_rate else "-")
        lines.append(
            f"{lead}| ours: sequencer, engine, store, publish | {fmt_range(o_rate)} "
            f"| {statistics.median(o_trade):,.0f} | {size:.0f} | {ms(pct(commits, 50))} "
            f"| {ms(pct(commits, 99))} | {pct(acks, 50) / 1e6:.2f} | {pct(acks, 99) / 1e6:.2f} "
            f"| {ratio} |")
        if cell.peer:
            p_trade = [cell.ours[i].trades / r.wall_s for i, r in enumerate(cell.peer)]
            p = cell.peer[median_index(p_rate)]
            pc = sorted(p.commit_s)
            lines.append(
                f"{lead}| peer: same rows, same batches, driver only | {fmt_range(p_rate)} "
                f"| {statistics.median(p_trade):,.0f} | {size:.0f} | {ms(pct(pc, 50))} "
                f"| {ms(pct(pc, 99))} | - | - | 1.00 |")
    return lines


def split_table(cells: list[Cell]) -> list[str]:
    lines = [
        "| backend | mix | submitters | wall s | engine apply | write_batch "
        "| of which row building | of which SQL + COMMIT | publish | rest: submitters, acks, "
        "loop | peer: the same SQL alone s | snapshots written |",
        "|" + "---|" * 12,
    ]

    def share(x: float, total: float) -> str:
        return f"{x:.2f} s ({100 * x / total:.0f}%)"

    for cell in cells:
        if not cell.ours:
            continue
        i = median_index([r.commands / r.wall_s for r in cell.ours])
        o = cell.ours[i]
        peer = cell.peer[i] if i < len(cell.peer) else None
        build = peer.build_s if peer else float("nan")
        rest = o.wall_s - o.apply_s - o.write_s - o.publish_s
        peer_s = f"{peer.wall_s:.2f}" if peer else "-"
        lines.append(
            f"| {cell.backend} | {cell.mix} | {cell.concurrency} | {o.wall_s:.2f} "
            f"| {share(o.apply_s, o.wall_s)} | {share(o.write_s, o.wall_s)} "
            f"| {share(build, o.wall_s)} | {share(o.write_s - build, o.wall_s)} "
            f"| {share(o.publish_s, o.wall_s)} | {share(rest, o.wall_s)} "
            f"| {peer_s} | {o.snapshots} |")
    return lines


def target_lines(cells: list[Cell]) -> list[str]:
    pg = [cell for cell in cells if cell.backend == "PostgreSQL" and cell.ours]
    if not pg:
        return ["Target (PostgreSQL): not measured."]
    out = []
    for cell in pg:
        rates = [r.trades / r.wall_s for r in cell.ours]
        o = cell.ours[median_index([r.commands / r.wall_s for r in cell.ours])]
        p99 = pct(sorted(o.commit_s), 99)
        ok = statistics.median(rates) >= TARGET_TRADES_PER_S and p99 <= TARGET_COMMIT_P99_S
        out.append(
            f"- {cell.mix} mix, {cell.concurrency} submitters: "
            f"{statistics.median(rates):,.0f} trades/s, commit p99 {ms(p99)} ms: "
            f"**{'met' if ok else 'NOT met'}**")
    return [f"Target (>= {TARGET_TRADES_PER_S:,} trades/s on PostgreSQL with commit p99 <= "
            f"{TARGET_COMMIT_P99_S * 1000:.0f} ms):", "", *out]


def revision() -> str:
    """HEAD, whether engine/ or app/ differ from it (read-only git calls), the engine build."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = [d for d in ("engine", "app") if subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "diff", "--quiet", "HEAD", "--", d],
            capture_output=True, timeout=10).returncode]
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    state = (f"uncommitted changes in {' and '.join(d + '/' for d in dirty)}" if dirty
             else "engine/ and app/ clean")
    warn_if_stale_build()
    return f"{head or 'unknown'}, {state}; engine build: {native.running()} ({native.reason})"


def versions(loop: str) -> str:
    import sqlite3

    found = [f"Python {sys.version.split()[0]}",
             *dist_versions("sqlalchemy", "asyncpg", "aiosqlite", "alembic", "orjson", "uvloop")]
    found.append(f"SQLite library {sqlite3.sqlite_version}")
    return ", ".join(found) + f"; event loop: {loop}"


# ------------------------------------------------------------------------------ main
async def amain(args: argparse.Namespace, loop_name: str) -> int:
    backends: list[Backend] = []
    skipped: list[str] = []
    sqlite_dir = Path(tempfile.mkdtemp(prefix="bench-durable-", dir=args.sqlite_dir))
    data_dir = str(sqlite_dir / "data")
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name == "postgres":
            if args.postgres_url:
                backends.append(Backend("PostgreSQL", args.postgres_url))
            else:
                skipped.append("PostgreSQL: not measured (no --postgres-url / "
                               "EXCHANGE_TEST_POSTGRES_URL)")
        elif name == "sqlite":
            backends.append(Backend("SQLite", str(sqlite_dir)))
        else:
            raise SystemExit(f"unknown backend {name!r}")
    mixes = [m.strip() for m in args.mix.split(",") if m.strip()]
    for m in mixes:
        if m not in MIXES:
            raise SystemExit(f"unknown mix {m!r}; choose from {', '.join(MIXES)}")
    concurrencies = [int(x) for x in str(args.concurrency).split(",")]
    workloads = {m: MIXES[m](args.commands, args.seed) for m in mixes}

    print(f"# durable throughput benchmark, {datetime.date.today().isoformat()}")
    print()
    print(f"- machine: {machine()}")
    print(f"- revision: {revision()}")
    print(f"- command: `{' '.join(['python loadtests/bench_durable.py', *sys.argv[1:]])}`")
    print(f"- versions: {versions(loop_name)}")
    for b in backends:
        if b.name == "PostgreSQL":
            print(f"- PostgreSQL: {await pg_server_info(b.base)}")
        else:
            print(f"- SQLite: database files in {sqlite_dir} ({filesystem_of(str(sqlite_dir))}), "
                  "journal_mode=WAL, synchronous=FULL (the server's pragmas)")
    for note in skipped:
        print(f"- {note}")
    print(f"- in-process: app.runtime.Runtime (sequencer with group commit, batch_max "
          f"{Settings().batch_max}, snapshot every {Settings().snapshot_every:,} commands), "
          "no HTTP, no WebSocket subscribers")
    for m, (ops, outcome) in workloads.items():
        print(f"- mix {m} (seed {args.seed}): {wl.describe(ops, outcome)}; "
              f"{outcome.trades / max(len(ops), 1):.2f} trades per command")
    print(f"- {args.runs} runs, interleaved; each measurement on a fresh migrated database")
    print()

    cells = [Cell(b.name, m, n) for m in mixes for n in concurrencies for b in backends]
    config = load_exchange_config(Settings().markets)  # what Runtime loads
    by_backend = {b.name: b for b in backends}
    profile = cProfile.Profile() if args.profile else None
    try:
        for run in range(1 if profile else args.runs):
            for cell in cells:
                ops, outcome = workloads[cell.mix]
                b = by_backend[cell.backend]
                tag = f"run {run + 1}: {cell.backend} {cell.mix} x{cell.concurrency}"
                async with b.fresh() as url:
                    ours = await run_ours(url, ops, outcome, cell.concurrency, data_dir,
                                          cell.problems, profile)
                cell.ours.append(ours)
                log(f"{tag} ours: {ours.commands / ours.wall_s:,.0f} commands/s, "
                    f"{ours.trades / ours.wall_s:,.0f} trades/s, {len(ours.commit_s)} commits")
                if profile:
                    break
                async with b.fresh() as url:
                    peer = await run_peer(url, config, ours)
                cell.peer.append(peer)
                log(f"{tag} peer: {ours.commands / peer.wall_s:,.0f} commands/s")
                ours.setup_batches = ours.batches = []
    finally:
        import shutil

        shutil.rmtree(sqlite_dir, ignore_errors=True)

    if profile is not None:
        cell = next(cell for cell in cells if cell.ours)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        print(f"## cProfile of one run: {cell.backend}, {cell.mix} mix, "
              f"{cell.concurrency} submitters")
        print()
        print("```")
        print(out.getvalue().rstrip())
        print("```")
        return 1 if cell.problems else 0

    print("\n".join(results_table(cells)))
    print()
    print("commands/s and trades/s: workload commands (trades) over the wall time from the first "
          "submit to the last ack. commit: one `Store.write_batch` (ours: row building, SQL "
          "and COMMIT; peer: the same SQL and COMMIT alone). ack: submit to result, per "
          "command. Latencies from the median run. ours ÷ peer: median commands/s over the "
          "peer's.")
    print()
    print("\n".join(target_lines(cells)))
    print()
    for mix in mixes:
        cell = next((x for x in cells if x.mix == mix and x.peer), None)
        if cell is None:
            continue
        rows, n = cell.peer[0].rows, cell.ours[0].commands
        trades = cell.ours[0].trades
        per = ", ".join(f"{t} {k / n:.2f}" for t, k in sorted(rows.items(), key=lambda kv: -kv[1]))
        print(f"Rows written per command, {mix} mix ({cell.backend}, {cell.concurrency} "
              f"submitters; balances and orders are coalesced per commit, so bigger commits "
              f"write fewer): {per}; total {sum(rows.values()) / n:.2f} "
              f"({sum(rows.values()) / max(trades, 1):.1f} per trade).")
    print()
    print("Where ours spends the wall time (median run; row building measured on the same "
          "batches while preparing the peer):")
    print()
    print("\n".join(split_table(cells)))
    print()
    problems = [f"{cell.backend} {cell.mix}: {p}" for cell in cells for p in cell.problems]
    if problems:
        print("PROBLEMS: " + "; ".join(problems[:10]))
        return 1
    print("Every run ended with the model's book and trade count, the invariants held, the "
          "journal ended at the last seq, and the balances projection matched the engine.")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--commands", type=int, default=30_000, help="workload commands per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="workload,cross", help="workload, cross, or both")
    ap.add_argument("--concurrency", default="256",
                    help="concurrent submitters (asyncio tasks); a comma list sweeps")
    ap.add_argument("--backends", default="postgres,sqlite")
    ap.add_argument("--postgres-url", default=os.environ.get("EXCHANGE_TEST_POSTGRES_URL"))
    ap.add_argument("--sqlite-dir", default=None,
                    help="where the SQLite files go (default: the system temp dir)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="uvloop is what uvicorn (the server) uses when it is installed")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile one run of ours (first backend and mix) instead of the table")
    args = ap.parse_args()
    loop_name = args.loop
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            loop_name = "asyncio (uvloop not installed)"
        else:
            return uvloop.run(amain(args, loop_name))
    return asyncio.run(amain(args, loop_name))


if __name__ == "__main__":
    sys.exit(main())
