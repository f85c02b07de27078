"""The sequencer: the one writer that owns the engine.

Rules owned here:
* handlers never touch the engine; they `submit` a command (or a read-only
  `query`) and await the result;
* commands are drained in batches (group commit): each is stamped with the next
  gapless `seq` and a non-decreasing `ts`, applied, and the whole batch is
  written to the store in ONE transaction;
* only after that commit are callers acknowledged and events published; queries
  in the batch run after the commit, so they only ever see committed state;
* if the commit fails, nothing in the batch is acknowledged, the sequencer
  stops taking commands (`ServiceUnavailable`) and rebuilds the engine from the
  journal once the database answers again. Memory never runs ahead of disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app import logs
from engine.commands import Command, Tick, stamp
from engine.events import BatchItem, Event, Rejected
from engine.exchange import Exchange

log = logging.getLogger("exchange.sequencer")
T = TypeVar("T")

Entry = tuple[int, int, Command, list[Event]]


class ServiceUnavailable(Exception):
    """The sequencer is recovering or the store failed; the command was not applied."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Item:
    future: asyncio.Future[Any]
    command: Command | None = None
    query: Callable[[Exchange], Any] | None = None


COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound, sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)  # observations <= each bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


@dataclass(slots=True)
class SequencerStats:
    commands: int = 0
    batches: int = 0
    last_batch_size: int = 0
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS))
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    apply_seconds_total: float = 0.0
    commit_failures: int = 0
    # (command type, "accepted" | "rejected") -> commands applied
    by_type: dict[tuple[str, str], int] = field(default_factory=dict)


def _refused(events: Sequence[Event]) -> bool:
    """Was the command itself refused (not one item of a batch)?"""
    for e in events:
        if isinstance(e, BatchItem):
            return False
        if isinstance(e, Rejected):
            return True
    return False


class Sequencer:
    def __init__(
        self,
        engine: Exchange,
        write_batch: Callable[[Sequence[Entry]], Awaitable[None]],
        publish: Callable[[Sequence[Entry]], None],
        recover: Callable[[], Awaitable[Exchange]],
        batch_max: int = 512,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        tick_interval_s: float = 0.1,
    ) -> None:
        self.engine = engine
        self._write_batch = write_batch
        self._publish = publish
        self._recover = recover
        self._batch_max = batch_max
        self._clock_ms = clock_ms
        self._tick_interval = tick_interval_s
        # commands and queries waiting, in order; `_wake` is set while the loop waits
        self._queue: deque[_Item] = deque()
        self._wake: asyncio.Future[None] | None = None
        self.seq = engine.last_seq  # last applied (may be ahead of disk while committing)
        self.committed_seq = engine.last_seq  # last durable: what health and metrics report
        self.last_ts = engine.last_ts
        self.ready = False  # False while recovering: submit() answers 503
        self.stats = SequencerStats()
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- callers
    async def submit(self, command: Command) -> list[Event]:
        """Apply a command; returns its events once they are durable."""
        return await self.enqueue(command)

    def enqueue(self, command: Command) -> asyncio.Future[list[Event]]:
        """Queue a command now (its place in the sequence is taken on return); the
        future resolves to its events once they are durable."""
        if not self.ready:
            raise ServiceUnavailable("NOT_ACCEPTING_COMMANDS", "the exchange is recovering")
        fut: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._put(_Item(fut, command=command))
        return fut

    async def query(self, fn: Callable[[Exchange], T]) -> T:
        """Run a read-only function on committed engine state, between batches."""
        if not self.ready:
            raise ServiceUnavailable("NOT_ACCEPTING_COMMANDS", "the exchange is recovering")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put(_Item(fut, query=fn))
        return await fut

    def _put(self, item: _Item) -> None:
        """Queue an item; wake the loop if it waits. (A deque and one wake-up future: an
        asyncio.Queue's put and get are pure Python, paid on every command.)"""
        self._queue.append(item)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------- loop
    def start(self) -> None:
        self.ready = True
        self._tasks = [
            asyncio.create_task(self._run(), name="sequencer"),
            asyncio.create_task(self._ticker(), name="sequencer-ticks"),
        ]

    async def stop(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._fail_pending(ServiceUnavailable("NOT_ACCEPTING_COMMANDS", "the exchange is stopping"))

    async def _run(self) -> None:
        queue, limit = self._queue, self._batch_max
        while True:
            if not queue:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
                continue
            n = min(len(queue), limit)
            batch = [queue.popleft() for _ in range(n)]
            await self._process(batch)

    async def _process(self, batch: list[_Item]) -> None:
        entries: list[Entry] = []
        owners: list[_Item] = []
        queries: list[_Item] = []
        t0 = time.perf_counter()
        for item in batch:
            if item.command is None:
                queries.append(item)
                continue
            seq = self.seq + 1
            ts = max(self._clock_ms(), self.last_ts)
            cmd = item.command
            stamp(cmd, seq, ts)
            events = self.engine.apply(cmd)
            self.seq, self.last_ts = seq, ts
            entries.append((seq, ts, cmd, events))
            owners.append(item)
            key = (type(cmd).__name__, "rejected" if _refused(events) else "accepted")
            self.stats.by_type[key] = self.stats.by_type.get(key, 0) + 1
        self.stats.apply_seconds_total += time.perf_counter() - t0
        if entries:
            t1 = time.perf_counter()
            try:
                await self._write_batch(entries)
            except Exception as exc:  # the batch is lost to memory: recover from disk
                log.error(
                    "journal commit failed at seq %d-%d: %r", entries[0][0], entries[-1][0], exc
                )
                self.stats.commit_failures += 1
                error = ServiceUnavailable("COMMIT_FAILED", "the journal commit failed; recovering")
                for item in owners + queries:
                    if not item.future.done():
                        item.future.set_exception(error)
                await self._enter_recovery()
                return
            elapsed = time.perf_counter() - t1
            stats = self.stats
            stats.commit_seconds.observe(elapsed)
            stats.batch_sizes.observe(len(entries))
            stats.commands += len(entries)
            stats.batches += 1
            stats.last_batch_size = len(entries)
            self.committed_seq = logs.STATE.seq = entries[-1][0]
            try:
                self._publish(entries)
            except Exception:  # a read-model bug must not lose acknowledgements
                log.exception("publishing seq %d-%d failed", entries[0][0], entries[-1][0])
            for item, (_, _, _, events) in zip(owners, entries, strict=True):
                if not item.future.done():
                    item.future.set_result(events)
        for item in queries:
            if item.future.done() or item.query is None:
                continue
            try:
                item.future.set_result(item.query(self.engine))
            except Exception as exc:
                item.future.set_exception(exc)

    async def _enter_recovery(self) -> None:
        """Stop taking commands, fail what is queued, rebuild from the journal when possible."""
        self.ready = False
        self._fail_pending(
            ServiceUnavailable("NOT_ACCEPTING_COMMANDS", "the exchange is recovering")
        )
        delay = 0.2
        while True:
            try:
                self.engine = await self._recover()
                break
            except Exception as exc:
                log.warning("recovery attempt failed: %r; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.seq, self.last_ts = self.engine.last_seq, self.engine.last_ts
        self.committed_seq = self.seq
        self.ready = True
        log.info("recovered from the journal at seq %d", self.seq)

    def _fail_pending(self, error: Exception) -> None:
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(error)

    async def _ticker(self) -> None:
        """Inject a journaled `Tick` when the engine has a deadline due (a GTT expiry, or
        an index price going stale)."""
        while True:
            await asyncio.sleep(self._tick_interval)
            if not self.ready:
                continue
            deadline = self.engine.next_deadline()
            if deadline is not None and deadline <= self._clock_ms():
                with contextlib.suppress(ServiceUnavailable):
                    await self.submit(Tick())
