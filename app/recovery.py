"""Snapshots and recovery: the newest valid snapshot, then the journal after it.

Rules owned here:
* a snapshot is the engine's plain-data state at a seq boundary, stored as
  zlib-compressed canonical JSON (the very text the state hash is taken of)
  with a CRC32 of those bytes and the engine's
  `state_hash`; loading checks both, so a truncated or altered snapshot is
  rejected and the previous one is tried (down to a full replay from seq 1);
* the journal after the snapshot must be gapless with valid checksums, or
  recovery stops with `JournalCorrupt` naming the seq (the server refuses to
  start rather than open on a state that is not the acknowledged one);
* after replay the engine's invariants must hold and the balances projection
  must equal the engine's balances; a mismatch is reported, not hidden;
* the signatures of requests that may still be inside their receive window are read
  back from the journal (every journaled command keeps the signature of the request
  behind it and the timestamp that request claimed), so a request accepted before a
  restart is refused as a replay after it. A request is valid until its claimed
  timestamp + the longest window, and it claimed at most one window past the command's
  ts, so the commands journaled in the last two windows are all that can matter.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.store import Store
from engine.exchange import Exchange
from engine.markets import ExchangeConfig
from engine.snapshot import canonical_json, hash_snapshot, upgrade_snapshot

log = logging.getLogger("exchange.recovery")


class SnapshotInvalid(Exception):
    pass


@dataclass
class RecoveryReport:
    snapshot_seq: int | None = None
    replayed: int = 0
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    projection_mismatches: list[str] = field(default_factory=list)
    signatures: int = 0  # recent signatures read back from the journal (`spent_signatures`)

    def wire(self) -> dict[str, Any]:
        return {
            "snapshot_seq": self.snapshot_seq,
            "replayed": self.replayed,
            "fallbacks": self.fallbacks,
            "seconds": round(self.seconds, 3),
            "projection_mismatches": self.projection_mismatches,
            "signatures": self.signatures,
        }


def encode_snapshot(snap: dict[str, Any]) -> tuple[bytes, int, str]:
    """(data, crc32 of data, state hash). CPU-heavy: run it off the event loop."""
    text = canonical_json(snap)  # hashed and stored: one serialization, not two
    data = zlib.compress(text, 1)
    return data, zlib.crc32(data), hashlib.sha256(text).hexdigest()


def decode_snapshot(
    config: ExchangeConfig, data: bytes, checksum: int, state_hash: str
) -> Exchange:
    if zlib.crc32(data) != checksum:
        raise SnapshotInvalid("checksum mismatch")
    try:
        text = zlib.decompress(data)
        snap = orjson.loads(text)
        if upgrade_snapshot(snap):  # written by an earlier version: hashed in its own shape
            if hashlib.sha256(text).hexdigest() != state_hash:
                raise SnapshotInvalid("state hash mismatch")
            state_hash = hash_snapshot(snap)
        engine = Exchange.restore(config, snap)
    except SnapshotInvalid:
        raise
    except Exception as exc:  # truncated, not JSON, wrong shape
        raise SnapshotInvalid(f"unreadable: {exc!r}"[:200]) from exc
    if engine.state_hash() != state_hash:
        raise SnapshotInvalid("state hash mismatch after restore")
    return engine


async def load_newest_snapshot(
    store: Store, config: ExchangeConfig, report: RecoveryReport
) -> Exchange | None:
    for seq, _ts, _hash in await store.list_snapshots():
        row = await store.load_snapshot(seq)
        if row is None:
            continue
        state_hash, checksum, data = row
        try:
            engine = await asyncio.to_thread(decode_snapshot, config, data, checksum, state_hash)
        except SnapshotInvalid as exc:
            log.error("snapshot at seq %d rejected (%s); trying an older one", seq, exc)
            report.fallbacks.append({"seq": seq, "reason": str(exc)})
            continue
        if engine.last_seq != seq:
            report.fallbacks.append({"seq": seq, "reason": f"holds seq {engine.last_seq}"})
            continue
        report.snapshot_seq = seq
        return engine
    return None


async def recover(store: Store, config: ExchangeConfig) -> tuple[Exchange, RecoveryReport]:
    """The engine at the last committed seq: newest valid snapshot + journal tail."""
    started = time.perf_counter()
    report = RecoveryReport()
    engine = await load_newest_snapshot(store, config, report) or Exchange(config)
    report.replayed = await replay(store, engine)
    count = report.replayed
    problems = engine.check_invariants()
    if problems:
        raise RuntimeError("state after recovery breaks invariants: " + "; ".join(problems[:5]))
    report.projection_mismatches = await verify_balances(store, engine)
    report.seconds = time.perf_counter() - started
    log.info(
        "recovered seq %d from snapshot %s + %d journal rows in %.2fs (state %s)",
        engine.last_seq,
        report.snapshot_seq,
        count,
        report.seconds,
        engine.state_hash()[:16],
    )
    for problem in report.projection_mismatches[:10]:
        log.error("projection mismatch: %s", problem)
    return engine, report


async def spent_signatures(
    store: Store, engine: Exchange, now_ms: int, window_ms: int, report: RecoveryReport
) -> list[tuple[str, int]]:
    """(signature, claimed ts) of the journaled requests that may still be inside their
    receive window at `now_ms` (or at the last command's ts, if the clock is behind it),
    when a request may claim a window up to `window_ms`: the last two windows of journal."""
    started = time.perf_counter()
    since = min(now_ms, engine.last_ts) - 2 * window_ms
    found = await store.recent_signatures(since)
    report.signatures = len(found)
    log.info("read back %d recent signatures in %.2fs", len(found), time.perf_counter() - started)
    return found


async def replay(store: Store, engine: Exchange) -> int:
    """Apply the journal after `engine.last_seq`; returns how many commands.

    The cyclic garbage collector is paused meanwhile: replay allocates millions
    of short-lived objects, nothing it makes is garbage in a cycle worth finding
    before it ends, and full collections over a growing heap were a tenth of the
    time. Health checks answer between pages.
    """
    apply = engine.apply
    count = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        async for page in store.read_journal_pages(after_seq=engine.last_seq):
            for _seq, _ts, command in page:
                apply(command, False)  # no BookDelta events: nobody reads them
            count += len(page)
            await asyncio.sleep(0)
    finally:
        if collecting:
            gc.enable()
    return count


async def verify_balances(store: Store, engine: Exchange) -> list[str]:
    """Balances projection vs engine: they are written in one transaction, so they agree."""
    stored = await store.all_balances()
    problems = []
    for aid, acct in engine.accounts.items():
        for asset, bal in acct.balances.items():
            if stored.pop((aid, asset), 0) != bal:
                problems.append(f"account {aid} {asset}: engine {bal}")
    problems += [f"account {a} {s}: only in the database" for (a, s), v in stored.items() if v]
    return problems
