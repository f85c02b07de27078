"""Run the replay workload through whichever engine build this process selected.

`python -m tests.engine_digest OUT.json [--restore SNAP.json]` writes the build
it ran, a digest of every event and journal encoding, the final `state_hash()`
and the snapshot taken half way. With `--restore`, it starts from another
process's half-way snapshot and runs only the second half. tests/test_native.py
runs it under both builds and compares.
"""

from __future__ import annotations

import hashlib
import sys

import orjson

import app  # noqa: F401  (selects the engine build before engine is imported)
from app import native
from engine import codec
from engine.exchange import Exchange
from tests.test_replay_determinism import SEED, build_workload, replay_config, typed

N_BASE = 6000


def main(argv: list[str]) -> int:
    out_path = argv[0]
    restore = argv[2] if len(argv) > 2 and argv[1] == "--restore" else None
    cfg = replay_config(rebate=True)
    commands = build_workload(cfg, SEED, N_BASE)
    half = len(commands) // 2
    if restore is None:
        ex, start = Exchange(cfg), 0
    else:
        with open(restore, "rb") as f:
            ex, start = Exchange.restore(cfg, orjson.loads(f.read())), half
    digest = hashlib.sha256()
    half_snapshot = None
    for i, cmd in enumerate(commands[start:], start=start):
        if i == half:
            half_snapshot = orjson.loads(orjson.dumps(ex.snapshot()))
        digest.update(orjson.dumps(codec.encode(cmd)))
        digest.update(repr(typed(ex.apply(cmd))).encode())
    result = {
        "engine": native.running(),
        "commands": len(commands) - start,
        "events_digest": digest.hexdigest(),
        "state_hash": ex.state_hash(),
        "invariants": ex.check_invariants(),
        "half_snapshot": half_snapshot,
    }
    with open(out_path, "wb") as f:
        f.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
