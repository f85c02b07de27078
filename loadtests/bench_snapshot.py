"""Snapshot benchmark: what a snapshot costs the event loop, and what the engine's
finished orders cost the garbage collector.

    python loadtests/bench_snapshot.py [--warm 60000] [--every 2500] [--snapshots 12]
                                       [--seed 1]

The engine is fed the recovery benchmark's journal (`bench_recovery.commands`: 20
funded accounts, then the seeded workload of 62% resting limits, 8% crossing IOC limits
and 30% cancels), `--warm` commands first, so that it holds the 10,000 most recently
finished orders it keeps for ORDER_NOT_LIVE answers, then `--every` more commands
before each of `--snapshots` snapshots. For each snapshot:

* copy: `Exchange.snapshot()`, which the sequencer runs on the event loop at a seq
  boundary (app/runtime.py `_maybe_snapshot`): every request waits for it;
* encode: `app.recovery.encode_snapshot` (JSON, zlib, SHA-256), run in a worker thread by
  the server;
* full collection: `gc.collect()` right after, what a generation-2 collection costs
  the loop with this engine alive (what existed before the first command, the
  commands included, is frozen out of the collector first, as the server freezes what
  it holds once started).

Medians and the slowest are printed with the objects the collector tracks. The peer
is the same script run at another revision (copy it into a worktree): the figures
are only comparable within one run of the machine, interleaved.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

try:
    from loadtests import bench_recovery
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests import bench_recovery

from app.recovery import encode_snapshot
from engine.exchange import Exchange
from engine.markets import default_config
from loadtests.bench_engine import engine_revision, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=60_000)
    parser.add_argument("--every", type=int, default=2_500)
    parser.add_argument("--snapshots", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    config = default_config()
    ex = Exchange(config)
    total = args.warm + args.every * args.snapshots
    cmds = iter(list(bench_recovery.commands(config, total, args.seed)))
    gc.collect()  # as the server does once it has started (app/runtime.py): what is alive
    gc.freeze()  # now (modules, configuration, here the commands) is never traced again
    for _ in range(args.warm):
        ex.apply(next(cmds))
    copy, encode, collect, size = [], [], [], 0
    for _ in range(args.snapshots):
        for _ in range(args.every):
            ex.apply(next(cmds))
        t0 = time.perf_counter()
        snap = ex.snapshot()
        copy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data, _crc, _hash = encode_snapshot(snap)
        encode.append(time.perf_counter() - t0)
        size = len(data)
        t0 = time.perf_counter()
        gc.collect()
        collect.append(time.perf_counter() - t0)
    tracked = len(gc.get_objects())
    print(f"# bench_snapshot {time.strftime('%Y-%m-%d %H:%M')}, {machine()}")
    print(f"# revision {engine_revision()}")
    print(f"# {args.warm:,} commands, then a snapshot every {args.every:,} x {args.snapshots};"
          f" {len(ex.orders):,} live orders, {len(ex.done):,} finished kept;"
          f" snapshot {size:,} bytes compressed; {tracked:,} objects tracked by gc")
    print("| ms | median | slowest |")
    print("|---|---|---|")
    for name, xs in (("copy (on the loop)", copy), ("encode (worker thread)", encode),
                     ("full gc.collect()", collect)):
        print(f"| {name} | {statistics.median(xs) * 1e3:.2f} | {max(xs) * 1e3:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
