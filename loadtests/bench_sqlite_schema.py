"""SQLite schema A/B: the same journal written through `Store.write_batch` at two revisions.

    python loadtests/bench_sqlite_schema.py [--commands 100000] [--batch 256] [--runs 3]
                                            [--revisions 0003,head]

For each revision (runs interleaved) a fresh SQLite file in a temporary directory is
migrated to it, and `--commands` commands of `loadtests/bench_recovery.py`'s seeded
workload (the workload of `loadtests/workload.py`, each command signed) are applied
to an `Exchange` and written in batches of `--batch` (a busy sequencer's group
commit). Printed per run: wall and CPU seconds spent in `write_batch` (the CPU of
the whole process, writer thread included, while it runs) and the bytes the process
wrote (`/proc/self/io` write_bytes: WAL frames of 4 KiB plus the checkpoints that
copy them into the database file), then the medians. Used to measure migration 0004
(one B-tree per table), BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alembic import command

try:
    from loadtests.bench_recovery import commands
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests.bench_recovery import commands

from app.db import alembic_config
from app.store import Store
from app.store.store import ensure_sqlite_dir
from engine.exchange import Exchange
from engine.markets import default_config
from loadtests.bench_engine import engine_revision, machine


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


async def one_run(revision: str, n: int, batch: int) -> tuple[float, float, int]:
    """(write_batch wall s, process CPU s during write_batch, bytes written)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-schema-"))
    url = f"sqlite+aiosqlite:///{tmp / 'exchange.db'}"
    try:
        ensure_sqlite_dir(url)
        command.upgrade(alembic_config(url), revision)
        store = await Store.open(url)
        ex = Exchange(default_config())
        entries: list[tuple[int, int, Any, Any]] = []
        wall = cpu = 0.0
        before = written_bytes()
        for cmd in commands(ex.config, n, 1):
            entries.append((cmd.seq, cmd.ts, cmd, ex.apply(cmd)))
            if len(entries) == batch or cmd.seq == n:
                t0, c0 = time.perf_counter(), time.process_time()
                await store.write_batch(entries)
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
                entries = []
        await store.close()
        return wall, cpu, written_bytes() - before
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--commands", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--revisions", default="0003,head")
    args = ap.parse_args()
    revisions = args.revisions.split(",")
    results: dict[str, list[tuple[float, float, int]]] = {r: [] for r in revisions}
    for run in range(args.runs):
        for rev in revisions:
            wall, cpu, wrote = await one_run(rev, args.commands, args.batch)
            results[rev].append((wall, cpu, wrote))
            print(
                f"run {run + 1} {rev}: write_batch {wall:.2f} s wall, {cpu:.2f} s CPU; "
                f"wrote {wrote / 1e6:,.0f} MB ({wrote / args.commands:,.0f} B/command)",
                file=sys.stderr,
                flush=True,
            )
    print(f"- machine: {machine()}\n- revision: {engine_revision()}")
    print(f"- command: `python loadtests/bench_sqlite_schema.py {' '.join(sys.argv[1:])}`\n")
    print("| schema revision | write_batch wall s | CPU s | bytes written per command |")
    print("|---|---|---|---|")
    for rev, rows in results.items():
        print(
            f"| {rev} | {statistics.median(r[0] for r in rows):.2f} "
            f"| {statistics.median(r[1] for r in rows):.2f} "
            f"| {statistics.median(r[2] for r in rows) / args.commands:,.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
