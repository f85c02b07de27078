"""Recovery benchmark: how long a restart takes to rebuild the engine from the journal.

    python loadtests/bench_recovery.py [--commands 1000000] [--runs 3] [--seed 1]
                                       [--backends sqlite,postgres] [--postgres-url URL]
                                       [--snapshot-at 0.9]

For each backend (SQLite in a temporary directory; PostgreSQL in a throwaway
database `exch_bench_<hex>` on the server of `--postgres-url` or
EXCHANGE_TEST_POSTGRES_URL, dropped at the end) a journal of `--commands` commands is
built exactly as the sequencer builds it: the seeded workload of
`loadtests/workload.py` (62% resting limits, 8% crossing IOC limits, 30% cancels of
live orders; 20 funded accounts first) is stamped, applied to an `Exchange`, and
written with `Store.write_batch` in batches of 1,000 (journal rows and every
projection, one transaction per batch; migrations applied first). One engine feeds
every backend, so all journals are identical.

Then, median of `--runs` (runs interleaved across backends):

* full replay: `app.recovery.recover(store, config)` with no snapshot rows (journal
  read, checksums, decode, apply, invariants, balance check);
* the split: journal read + checksum + decode alone (`Store.read_journal_pages`,
  nothing applied; "of which fetch" is the bare driver SELECTs of the same rows,
  `Store.journal_rows`), and engine apply alone (the decoded commands applied to a
  fresh `Exchange` with `deltas=False`, no I/O), both with the garbage collector
  paused as `app.recovery.replay` pauses it;
* recovery from a snapshot taken at `--snapshot-at` of the journal, written through the
  server's own path (`app.recovery.encode_snapshot` + `Store.save_snapshot`, as
  `Runtime._write_snapshot` does): `recover` loads it, checks its CRC and state hash,
  and replays the tail;
* the signatures read back at start (`app.recovery.spent_signatures`, which
  `Runtime.rebuild` calls after `recover`): every workload command carries the
  signature of a signed request, as a REST order does, and here every row counts as
  recent, so this is the read-back of a journal that took `--commands` signed requests
  in its last two minutes (500,000 is 4,000 orders/s).

Every recovered engine must reach the builder's final `state_hash()`, or the script
exits non-zero. The engine build (compiled or pure, `EXCHANGE_ENGINE`) is in the
report's revision line. Run time on a 2-core box: about 18 minutes for the default 1,000,000
commands and 3 runs (building the two journals is a third of it); `--commands 200000
--runs 1` takes about 4 minutes. The database files are warm in the OS cache (they
were just written), as on a restart of a running host.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import gc
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

try:
    from loadtests import workload as wl
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import workload as wl

from app.db import upgrade_async
from app.recovery import (
    RecoveryReport,
    decode_snapshot,
    encode_snapshot,
    recover,
    spent_signatures,
)
from app.store import Store
from app.store import tables as t
from engine import commands as c
from engine.commands import Command
from engine.events import Rejected
from engine.exchange import Exchange
from engine.markets import ExchangeConfig, default_config
from engine.types import OrderType, Side, TimeInForce
from loadtests.bench_engine import engine_revision, machine
from tests.dbutil import create_database, drop_database

MARKET = "BTC-USDC"
FIRST_ACCOUNT = 1000
USDC_DEPOSIT = 10**9 * 10**6
BTC_DEPOSIT = 10**5 * 10**8
TS0 = 1_795_000_000_000
BATCH = 1000  # commands per write_batch, like a busy sequencer's group commit
TARGET_PER_S = 100_000  # issue 3: replay >= 100k commands/s (1M rows in < 10 s)
SIG_WINDOW_MS = 60_000  # the longest receive window (app/auth.py)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ workload
def commands(config: ExchangeConfig, n: int, seed: int) -> Iterator[Command]:
    """`n` stamped commands (seq n at ts TS0 + n): 20 accounts created and funded, then the
    workload's ops."""
    spec = config.markets[MARKET]
    setup: list[Command] = [
        c.CreateAccount(name=f"bench{i}", api_key=f"bk-{i}", api_secret="s")
        for i in range(wl.N_ACCOUNTS)
    ]
    for i in range(wl.N_ACCOUNTS):
        for asset, amount in (("USDC", USDC_DEPOSIT), ("BTC", BTC_DEPOSIT)):
            setup.append(
                c.Deposit(
                    account_id=FIRST_ACCOUNT + i,
                    asset=asset,
                    amount=amount,
                    deposit_id=f"bench-{i}-{asset}",
                )
            )
    for seq, first in enumerate(setup, start=1):
        yield dataclasses.replace(first, seq=seq, ts=TS0 + seq)
    for seq, op in enumerate(wl.generate(max(n - len(setup), 0), seed), start=len(setup) + 1):
        cmd: Command
        if op.kind == wl.CANCEL:
            cmd = c.CancelOrder(
                seq=seq, ts=TS0 + seq, account_id=FIRST_ACCOUNT + op.account, order_id=op.order_id
            )
        else:
            cmd = c.PlaceOrder(
                seq=seq,
                ts=TS0 + seq,
                account_id=FIRST_ACCOUNT + op.account,
                market=MARKET,
                side=Side.BUY if op.side == wl.BUY else Side.SELL,
                size=op.size * spec.lot,
                type=OrderType.LIMIT,
                price=op.price * spec.tick,
                tif=TimeInForce.GTC if op.kind == wl.LIMIT else TimeInForce.IOC,
            )
        # what a signed request leaves in the journal: its signature and claimed timestamp
        c.attach_signature(cmd, hashlib.sha256(seq.to_bytes(8, "big")).hexdigest(), TS0 + seq)
        yield cmd


# ------------------------------------------------------------------------------ backends
async def create_pg_database(base_url: str) -> str:
    return await create_database(base_url, prefix="exch_bench_")


async def drop_pg_database(url: str) -> None:
    await drop_database(url)


def _dsn(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


@dataclass
class Backend:
    name: str
    url: str
    store: Store | None = None
    write_s: float = 0.0
    full: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)
    fetch: list[float] = field(default_factory=list)
    snap: list[float] = field(default_factory=list)
    snap_load: list[float] = field(default_factory=list)
    sigs: list[float] = field(default_factory=list)
    replayed_after_snapshot: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store


@dataclass
class Journal:
    n: int
    final_hash: str
    snapshot_seq: int
    snapshot: tuple[bytes, int, str]  # encoded once, saved per backend later
    snapshot_ts: int
    encode_s: float
    build_apply_s: float
    signed: int  # commands carrying a signature


async def build(
    config: ExchangeConfig, backends: list[Backend], n: int, seed: int, snap_at: float
) -> Journal:
    ex = Exchange(config)
    snapshot_seq = max(1, int(n * snap_at))
    snapshot: tuple[bytes, int, str] | None = None
    snapshot_ts = 0
    encode_s = apply_s = 0.0
    entries: list[tuple[int, int, Command, list[Any]]] = []
    started = time.perf_counter()

    async def flush() -> None:
        for b in backends:
            t0 = time.perf_counter()
            await b.db.write_batch(entries)
            b.write_s += time.perf_counter() - t0
        entries.clear()

    signed = 0
    for cmd in commands(config, n, seed):
        signed += cmd.sig is not None
        t0 = time.perf_counter()
        events = ex.apply(cmd)
        apply_s += time.perf_counter() - t0
        if cmd.seq <= 3 * wl.N_ACCOUNTS and any(isinstance(e, Rejected) for e in events):
            raise RuntimeError(f"setup command refused: {cmd} -> {events}")
        entries.append((cmd.seq, cmd.ts, cmd, events))
        if cmd.seq == snapshot_seq:
            t0 = time.perf_counter()
            snapshot = encode_snapshot(ex.snapshot())
            encode_s = time.perf_counter() - t0
            snapshot_ts = cmd.ts
        if len(entries) >= BATCH:
            await flush()
        if cmd.seq % 100_000 == 0:
            log(f"built {cmd.seq:,} / {n:,} commands ({time.perf_counter() - started:.0f} s)")
    if entries:
        await flush()
    problems = ex.check_invariants()
    if problems:
        raise RuntimeError(f"builder engine breaks invariants: {problems[:5]}")
    assert snapshot is not None
    return Journal(
        ex.last_seq, ex.state_hash(), snapshot_seq, snapshot, snapshot_ts, encode_s, apply_s,
        signed,
    )


# ------------------------------------------------------------------------------ measures
async def clear_snapshots(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(t.snapshots.delete())


async def measure_full(b: Backend, config: ExchangeConfig, j: Journal) -> None:
    t0 = time.perf_counter()
    engine, report = await recover(b.db, config)
    b.full.append(time.perf_counter() - t0)
    if report.snapshot_seq is not None or report.replayed != j.n:
        b.problems.append(f"full replay used snapshot {report.snapshot_seq}, {report.replayed}")
    if engine.state_hash() != j.final_hash:
        b.problems.append("full replay: state hash differs from the builder's")
    if report.projection_mismatches:
        b.problems.append(f"projection mismatches: {report.projection_mismatches[:3]}")


async def measure_read(b: Backend) -> list[Command]:
    """Read + checksum + decode through `Store.read_journal_pages` (what recovery
    uses); then the bare fetch of the same rows (`Store.journal_rows`)."""
    out: list[Command] = []
    extend = out.extend
    gc.disable()  # as app.recovery.replay does
    t0 = time.perf_counter()
    async for page in b.db.read_journal_pages(after_seq=0):
        extend(cmd for _seq, _ts, cmd in page)
    b.read.append(time.perf_counter() - t0)
    gc.enable()
    count = 0
    t0 = time.perf_counter()
    async for rows in b.db.journal_rows(1):
        count += len(rows)
    b.fetch.append(time.perf_counter() - t0)
    assert count == len(out)
    return out


def measure_apply(config: ExchangeConfig, cmds: list[Command], final_hash: str) -> float:
    """Apply alone, as recovery applies (no book-delta events)."""
    ex = Exchange(config)
    apply = ex.apply
    gc.disable()  # as app.recovery.replay does
    t0 = time.perf_counter()
    for cmd in cmds:
        apply(cmd, False)
    elapsed = time.perf_counter() - t0
    gc.enable()
    if ex.state_hash() != final_hash:
        raise RuntimeError("apply-only replay: state hash differs from the builder's")
    return elapsed


async def measure_snapshot(b: Backend, config: ExchangeConfig, j: Journal) -> Exchange:
    t0 = time.perf_counter()
    engine, report = await recover(b.db, config)
    b.snap.append(time.perf_counter() - t0)
    b.replayed_after_snapshot = report.replayed
    if report.snapshot_seq != j.snapshot_seq or report.fallbacks:
        b.problems.append(
            f"snapshot recovery used {report.snapshot_seq} (fallbacks {report.fallbacks})"
        )
    if engine.state_hash() != j.final_hash:
        b.problems.append("snapshot recovery: state hash differs from the builder's")
    # the snapshot part alone: load the row, check CRC, decompress, restore, verify hash
    t0 = time.perf_counter()
    row = await b.db.load_snapshot(j.snapshot_seq)
    assert row is not None
    state_hash, checksum, data = row
    decode_snapshot(config, data, checksum, state_hash)
    b.snap_load.append(time.perf_counter() - t0)
    return engine


async def measure_signatures(b: Backend, j: Journal, engine: Exchange) -> None:
    """Read back every signature, as a start would if every row were recent."""
    t0 = time.perf_counter()
    found = await spent_signatures(b.db, engine, TS0 + 2 * SIG_WINDOW_MS, SIG_WINDOW_MS,
                                   RecoveryReport())
    b.sigs.append(time.perf_counter() - t0)
    if len(found) != j.signed:
        b.problems.append(f"read back {len(found)} signatures, {j.signed} journaled")


# ------------------------------------------------------------------------------ output
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    return f"{x:.2f}"


def fmt_rate(n: int, s: float) -> str:
    return f"{n / s:,.0f}" if s > 0 else "-"


def report(
    args: argparse.Namespace,
    j: Journal,
    backends: list[Backend],
    apply_s: list[float],
    skipped: dict[str, str],
    build_s: float,
) -> str:
    n = j.n
    lines = [
        f"### Results ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {machine()}",
        f"- revision: {engine_revision()}",
        f"- command: `{' '.join(['python loadtests/bench_recovery.py', *sys.argv[1:]])}`",
        f"- journal: {n:,} commands (60 setup + workload seed {args.seed}: ~62% resting "
        f"limits, ~8% crossing IOC, ~30% cancels), written in batches of {BATCH} in "
        f"{build_s:.0f} s ("
        + ", ".join(f"{b.name} write_batch {b.write_s:.0f} s" for b in backends)
        + f", engine apply {j.build_apply_s:.0f} s)",
        f"- {args.runs} runs, median (min-max); engine apply measured once per run, "
        "the same for both backends",
        "",
        "Full replay from seq 1 (no snapshot):",
        "",
        "| backend | full replay s | commands/s | read+decode s (µs/cmd) | of which fetch s "
        "| engine apply s (µs/cmd) | apply-only commands/s | >= 100k/s? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    a = med(apply_s)
    for b in backends:
        f, r = med(b.full), med(b.read)
        lines.append(
            f"| {b.name} | {fmt_s(f)} ({fmt_s(min(b.full))}-{fmt_s(max(b.full))}) "
            f"| {fmt_rate(n, f)} | {fmt_s(r)} ({r / n * 1e6:.1f}) | {fmt_s(med(b.fetch))} "
            f"| {fmt_s(a)} ({a / n * 1e6:.1f}) | {fmt_rate(n, a)} "
            f"| {'yes' if n / f >= TARGET_PER_S else 'no'} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {name} | not measured: {why} | | | | | | |")
    if backends:
        best = max(n / med(b.full) for b in backends)
        read_rate = max(n / med(b.read) for b in backends)
        met = "met" if best >= TARGET_PER_S else "NOT met"
        lines += [
            "",
            f"Target (>= {TARGET_PER_S:,} commands/s, 1M rows in < 10 s): **{met}**. Best full "
            f"replay {best:,.0f} commands/s; engine apply alone (no I/O, no decoding) "
            f"{n / a:,.0f}/s; journal read + checksum + decode alone {read_rate:,.0f}/s.",
        ]
    tail = n - j.snapshot_seq
    snap_bytes = len(j.snapshot[0])
    lines += [
        "",
        f"Recovery from a snapshot at seq {j.snapshot_seq:,} ({args.snapshot_at:.0%}; "
        f"{snap_bytes / 1e6:.2f} MB compressed, encoded in {j.encode_s:.2f} s) "
        f"+ {tail:,} journal rows:",
        "",
        "| backend | recovery s | snapshot load+restore+verify s | rest: tail replay + checks s "
        "| tail commands/s (incl. checks) | speed-up vs full |",
        "|---|---|---|---|---|---|",
    ]
    for b in backends:
        s, load = med(b.snap), med(b.snap_load)
        lines.append(
            f"| {b.name} | {fmt_s(s)} ({fmt_s(min(b.snap))}-{fmt_s(max(b.snap))}) "
            f"| {fmt_s(load)} | {fmt_s(s - load)} | {fmt_rate(tail, s - load)} "
            f"| {med(b.full) / s:.1f}x |"
        )
    lines += [
        "",
        f"Signatures read back at start (`spent_signatures`), every one of the {j.signed:,} "
        "signed rows counted as recent (a start after that many signed requests in two "
        "minutes):",
        "",
        "| backend | read-back s | signatures/s |",
        "|---|---|---|",
    ]
    for b in backends:
        s = med(b.sigs)
        lines.append(
            f"| {b.name} | {fmt_s(s)} ({fmt_s(min(b.sigs))}-{fmt_s(max(b.sigs))}) "
            f"| {fmt_rate(j.signed, s)} |"
        )
    problems = [f"{b.name}: {p}" for b in backends for p in b.problems]
    lines += [
        "",
        "Every recovered engine reached the builder's state hash."
        if not problems
        else "PROBLEMS: " + "; ".join(problems),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--postgres-url", default=os.environ.get("EXCHANGE_TEST_POSTGRES_URL"))
    ap.add_argument("--snapshot-at", type=float, default=0.9)
    args = ap.parse_args()

    config = default_config()
    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    backends: list[Backend] = []
    skipped: dict[str, str] = {}
    pg_url: str | None = None
    try:
        for name in args.backends.split(","):
            if name == "sqlite":
                backends.append(Backend("SQLite", f"sqlite+aiosqlite:///{tmp / 'journal.db'}"))
            elif name == "postgres":
                if not args.postgres_url:
                    skipped["PostgreSQL"] = "no --postgres-url / EXCHANGE_TEST_POSTGRES_URL"
                    continue
                pg_url = await create_pg_database(args.postgres_url)
                backends.append(Backend("PostgreSQL", pg_url))
            else:
                raise SystemExit(f"unknown backend {name}")
        for b in backends:
            await upgrade_async(b.url)
            b.store = await Store.open(b.url)

        log(
            f"building a journal of {args.commands:,} commands on "
            f"{', '.join(b.name for b in backends)}"
        )
        t0 = time.perf_counter()
        j = await build(config, backends, args.commands, args.seed, args.snapshot_at)
        build_s = time.perf_counter() - t0
        log(f"built in {build_s:.0f} s; final state {j.final_hash[:16]}")

        apply_s: list[float] = []
        for run in range(args.runs):
            for b in backends:
                await clear_snapshots(b.db)
                log(f"run {run + 1}: {b.name} full replay")
                await measure_full(b, config, j)
                log(f"  {b.full[-1]:.1f} s; read+decode only")
                cmds = await measure_read(b)
                log(f"  {b.read[-1]:.1f} s (fetch {b.fetch[-1]:.1f} s)")
            log(f"run {run + 1}: engine apply only")
            apply_s.append(measure_apply(config, cmds, j.final_hash))
            del cmds
            log(f"  {apply_s[-1]:.1f} s")
        for b in backends:
            data, checksum, state_hash = j.snapshot
            await b.db.save_snapshot(j.snapshot_seq, j.snapshot_ts, state_hash, checksum, data, 3)
        for run in range(args.runs):
            for b in backends:
                log(f"run {run + 1}: {b.name} recovery from the snapshot")
                engine = await measure_snapshot(b, config, j)
                log(f"  {b.snap[-1]:.1f} s; signatures read back")
                await measure_signatures(b, j, engine)
                log(f"  {b.sigs[-1]:.1f} s")
        print(report(args, j, backends, apply_s, skipped, build_s))
        return 1 if any(b.problems for b in backends) else 0
    finally:
        for b in backends:
            if b.store is not None:
                await b.store.close()
        if pg_url is not None:
            await drop_pg_database(pg_url)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
