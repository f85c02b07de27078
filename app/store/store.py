"""The Store: one transaction per sequencer batch, journal rows plus their projections.

Rules owned here:
* `write_batch` commits the journal rows and every projection of their events
  together, or nothing (DESIGN section 10); projections are coalesced within a
  batch (last order view, last balance) and written straight through the driver: on a
  SQLite file, one executemany per table by a writer thread with its own connection;
  on PostgreSQL, one statement in one round trip (`write_asyncpg`) unless the batch
  updates accounts or keys.
* A journal row's checksum is `crc32(f"{seq}:{ts}:{command_json}")`, with the
  command JSON from `engine.codec.encode` serialized by orjson with sorted keys.
* `read_journal` yields gapless seqs with verified checksums, or raises JournalCorrupt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, cast

import asyncpg
import orjson
from sqlalchemy import Table, bindparam, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.store import tables as t
from engine import codec
from engine.commands import Command
from engine.events import (
    FILL_FIELDS,
    POSTING_FIELDS,
    AccountCreated,
    AccountSettingsChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    BadDebt,
    Event,
    FundingPayment,
    FundingSettled,
    LiquidationSlice,
    MarketStateChanged,
    OrderUpdate,
    OrderView,
    TradeEvent,
    Transfer,
    fill,
    liquidation_row,
    posting,
)

Entry = tuple[int, int, Command, Sequence[Event]]

log = logging.getLogger(__name__)


_JOURNAL_PAGE = (
    "SELECT seq, ts, command, checksum FROM journal WHERE seq >= {} ORDER BY seq LIMIT {}"
)
# the newest rows before a seq that hold a signature: `"sig":"` occurs in a command's
# JSON only as the key of a signature (a quote inside a JSON string is escaped)
_SIG_MARK = '"sig":"'
_SIGNED_PAGE = (
    "SELECT seq, ts, command FROM journal WHERE seq < {} AND command LIKE '%"
    + _SIG_MARK
    + "%' ORDER BY seq DESC LIMIT {}"
)


class JournalCorrupt(Exception):
    """The journal cannot be trusted from `seq` on: a gap, a bad checksum or bad content."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"journal corrupt at seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def command_json(command: Command) -> str:
    return orjson.dumps(codec.encode(command), option=orjson.OPT_SORT_KEYS).decode()


def journal_checksum(seq: int, ts: int, command_text: str) -> int:
    return zlib.crc32(f"{seq}:{ts}:{command_text}".encode())


class _Rows:
    """The rows one batch produces, already coalesced. The hot tables (journal, orders,
    ledger, balances, trades, fills) get tuples in column order (`HOT_COLUMNS`): an
    `OrderUpdate`'s OrderView is the orders row itself; the rare ones get dicts."""

    __slots__ = (
        "journal",
        "accounts",
        "settings",
        "keys",
        "revoked",
        "funding",
        "funding_payments",
        "liquidations",
        "ledger",
        "balances",
        "orders",
        "trades",
        "fills",
        "states",
    )

    def __init__(self) -> None:
        self.journal: list[tuple[int, int, str, int]] = []
        self.accounts: list[dict[str, Any]] = []
        self.settings: dict[int, dict[str, Any]] = {}
        self.keys: list[dict[str, Any]] = []
        self.revoked: list[dict[str, Any]] = []
        self.ledger: list[tuple[Any, ...]] = []
        self.balances: dict[tuple[int, str], int] = {}
        self.orders: dict[int, tuple[Any, ...]] = {}
        self.trades: list[tuple[Any, ...]] = []
        self.fills: list[tuple[Any, ...]] = []
        self.states: dict[str, str] = {}
        self.funding: list[dict[str, Any]] = []
        self.funding_payments: list[dict[str, Any]] = []
        self.liquidations: list[dict[str, Any]] = []


# Column order of the hot tables' rows, as `_project` builds them (checked against the
# compiled statements when a Store is made). Enum members go to the drivers as they are:
# they are `str`s holding their values.
HOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "journal": ("seq", "ts", "command", "checksum"),
    "orders": OrderView._fields,
    "ledger": (*POSTING_FIELDS, "seq"),
    "balances": ("account_id", "asset", "balance"),
    "trades": (*TradeEvent._fields, "seq"),
    "fills": FILL_FIELDS,
}


def _project(entries: Sequence[Entry]) -> _Rows:
    r = _Rows()
    orders, ledger, balances, trades, fills = r.orders, r.ledger, r.balances, r.trades, r.fills
    for seq, ts, command, events in entries:
        cmd_text = command_json(command)
        r.journal.append((seq, ts, cmd_text, journal_checksum(seq, ts, cmd_text)))
        n = 0  # liquidation events of this command so far
        for ev in events:
            if isinstance(ev, OrderUpdate):
                o = ev.order
                orders[o.order_id] = o
            elif isinstance(ev, Transfer):
                seq_ = (seq,)
                ledger.append(posting(ev, ev.from_account) + seq_)
                ledger.append(posting(ev, ev.to_account) + seq_)
                balances[(ev.from_account, ev.asset)] = ev.from_balance
                balances[(ev.to_account, ev.asset)] = ev.to_balance
            elif isinstance(ev, TradeEvent):
                trades.append((*ev, seq))
                fills.append(fill(ev, ev.maker_account))
                fills.append(fill(ev, ev.taker_account))
            elif isinstance(ev, AccountCreated):
                r.accounts.append(
                    {
                        "account_id": ev.account_id,
                        "name": ev.name,
                        "tier": ev.tier,
                        "stp": "cancel_taker",
                        "auto_borrow": False,
                        "created_ts": ev.ts,
                    }
                )
            elif isinstance(ev, AccountSettingsChanged):
                r.settings[ev.account_id] = {
                    "b_account_id": ev.account_id,
                    "stp": ev.stp.value,
                    "auto_borrow": ev.auto_borrow,
                    "tier": ev.tier,
                }
            elif isinstance(ev, ApiKeyCreated):
                r.keys.append(
                    {
                        "api_key": ev.api_key,
                        "account_id": ev.account_id,
                        "secret": ev.api_secret,
                        "permissions": ",".join(ev.permissions),
                        "label": ev.label,
                        "created_ts": ev.ts,
                        "revoked": False,
                    }
                )
            elif isinstance(ev, ApiKeyRevoked):
                r.revoked.append({"b_api_key": ev.api_key, "revoked": True})
            elif isinstance(ev, MarketStateChanged):
                r.states[ev.market] = ev.state.value
            elif isinstance(ev, FundingSettled):
                r.funding.append(
                    {
                        "market": ev.market,
                        "ts": ev.ts,
                        "rate": ev.rate,
                        "premium": ev.premium,
                        "index_price": ev.index_price,
                        "samples": ev.samples,
                        "open_interest": ev.open_interest,
                        "dust": ev.dust,
                        "seq": seq,
                    }
                )
            elif isinstance(ev, LiquidationSlice | BadDebt):
                r.liquidations.append({**liquidation_row(ev), "seq": seq, "n": n})
                n += 1
            elif isinstance(ev, FundingPayment):
                r.funding_payments.append(
                    {
                        "account_id": ev.account_id,
                        "ts": ev.ts,
                        "market": ev.market,
                        "size": ev.size,
                        "index_price": ev.index_price,
                        "rate": ev.rate,
                        "amount": ev.amount,
                        "seq": seq,
                    }
                )
    return r


class Statement(NamedTuple):
    """One statement of a batch: driver SQL and its parameter tuples; `copy` names the table
    and columns of a plain insert, which PostgreSQL may bulk-load instead; `json_sql` is
    the same insert (or upsert) reading its rows from one jsonb array parameter, `$@`
    standing for that parameter's number (PostgreSQL only)."""

    sql: str
    params: list[tuple[Any, ...]]
    copy: tuple[str, tuple[str, ...]] | None = None
    json_sql: str | None = None


# An order's account, market and client id never change once it is placed; leaving them
# out of the upsert's SET keeps SQLite from rewriting the two indexes keyed on them for
# every fill and cancel (it maintains an index when one of its columns is assigned).
ORDER_IDENTITY = ("account_id", "market", "client_order_id")

# SQLite copies the WAL back into the database when it reaches this many pages, inside the
# commit that crossed it. Every commit rewrites the same hot index leaves (one per account
# trading), and a checkpoint writes each page once however often it changed, so checkpoints
# 4x further apart than SQLite's default (1,000) write less.
WAL_AUTOCHECKPOINT_PAGES = 4000

COPY_MIN_ROWS = 32  # fewer rows go through executemany (COPY has a fixed cost)
_PG_INSERT = re.compile(r"INSERT INTO (\S+) \(([^)]*)\) VALUES \(([^)]*)\)(.*)", re.S)
_PG_PARAM = re.compile(r"\$(\d+)::(\w+)")


def _json_form(sql: str) -> str | None:
    """`INSERT INTO t (cols) VALUES ($1::T1, ...) [ON CONFLICT ...]` reading its rows from a
    jsonb array of arrays instead (element k of each row cast to the k-th parameter's type);
    None for any other statement."""
    m = _PG_INSERT.fullmatch(sql)
    if m is None:
        return None
    values, n = _PG_PARAM.subn(lambda p: f"(e->>{int(p[1]) - 1})::{p[2]}", m[3])
    if n != len(m[2].split(",")) or "$" in values:  # a cast or parameter not of this form
        return None
    return (
        f"INSERT INTO {m[1]} ({m[2]}) SELECT {values} "
        f"FROM jsonb_array_elements($@::jsonb) AS e{m[4]}"
    )


class _Prepared:
    """A statement compiled once for the dialect, executed with positional driver params.

    Bypasses per-row SQLAlchemy parameter processing: every column type used here
    (BigInteger, Integer, String, Text, Boolean) goes to the driver unchanged.
    """

    __slots__ = ("sql", "columns", "_getter", "copy", "json_sql")

    def __init__(self, dialect: Dialect, stmt: Any, keys: list[str] | None = None,
                 bulk: bool = False) -> None:
        """`bulk`: a plain insert of every column, which COPY may replace."""
        if keys is None:
            keys = [c.name for c in stmt.table.columns]
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        self.sql = str(compiled)
        self.columns = tuple(compiled.positiontup)
        self._getter = itemgetter(*self.columns)
        self.copy = (stmt.table.name, self.columns) if bulk else None
        self.json_sql = _json_form(self.sql) if dialect.name == "postgresql" else None

    def statement(self, rows: Sequence[dict[str, Any]]) -> Statement:
        getter = self._getter
        return Statement(self.sql, [getter(row) for row in rows], self.copy, self.json_sql)

    def rows(self, rows: list[tuple[Any, ...]]) -> Statement:
        """Rows already in column order (a hot table, `HOT_COLUMNS`)."""
        return Statement(self.sql, rows, self.copy, self.json_sql)


class Store:
    """Async access to the database; the sequencer is its only writer."""

    def __init__(self, engine: AsyncEngine, sqlite_path: str | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sqlite_writer = SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._pg_writer = PgWriter(engine) if self.dialect == "postgresql" else None
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

        def upsert(table: Table, fixed: tuple[str, ...] = ()) -> Any:
            stmt = insert(table)
            keys = [c.name for c in table.primary_key.columns]
            rest = {c.name: stmt.excluded[c.name] for c in table.columns
                    if c.name not in keys and c.name not in fixed}
            return stmt.on_conflict_do_update(index_elements=keys, set_=rest)

        prep = partial(_Prepared, engine.dialect)
        self._journal = prep(t.journal.insert(), bulk=True)
        self._accounts = prep(t.accounts.insert())
        self._settings = prep(
            t.accounts.update().where(t.accounts.c.account_id == bindparam("b_account_id")),
            ["stp", "auto_borrow", "tier"],
        )
        self._keys = prep(t.api_keys.insert())
        self._revoke = prep(
            t.api_keys.update().where(t.api_keys.c.api_key == bindparam("b_api_key")), ["revoked"]
        )
        self._ledger = prep(t.ledger.insert(), bulk=True)
        self._balances = prep(upsert(t.balances))
        self._orders = prep(upsert(t.orders, ORDER_IDENTITY))
        self._trades = prep(t.trades.insert(), bulk=True)
        self._fills = prep(t.fills.insert(), bulk=True)
        self._states = prep(upsert(t.market_states))
        self._funding = prep(t.funding.insert(), bulk=True)
        self._funding_payments = prep(t.funding_payments.insert(), bulk=True)
        self._liquidations = prep(t.liquidations.insert(), bulk=True)
        for table, prepared in (
            ("journal", self._journal),
            ("orders", self._orders),
            ("ledger", self._ledger),
            ("balances", self._balances),
            ("trades", self._trades),
            ("fills", self._fills),
        ):
            if prepared.columns != HOT_COLUMNS[table]:  # a migration reordered the columns
                raise RuntimeError(
                    f"{table}: the statement's columns {prepared.columns} are not the row "
                    f"order {HOT_COLUMNS[table]} the projection builds"
                )

    @classmethod
    async def open(cls, url: str) -> Store:
        if ensure_sqlite_dir(url):
            engine = create_async_engine(url)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return cls(engine, sqlite_file(url))  # no file of its own: no writer thread
        else:
            engine = create_async_engine(
                url,
                connect_args={"server_settings": {"synchronous_commit": "on"}},
                pool_pre_ping=True,
            )
        return cls(engine)

    async def close(self) -> None:
        if self._sqlite_writer is not None:
            await self._sqlite_writer.close()
        if self._pg_writer is not None:
            await self._pg_writer.close()
        await self.engine.dispose()

    def batch_statements(self, entries: Sequence[Entry]) -> list[Statement]:
        """The statements of one batch, in write order."""
        r = _project(entries)
        out = [self._journal.rows(r.journal)]
        for prepared, dicts in (
            (self._accounts, r.accounts),
            (self._settings, list(r.settings.values())),
            (self._keys, r.keys),
            (self._revoke, r.revoked),
        ):
            if dicts:
                out.append(prepared.statement(dicts))
        if r.ledger:
            out.append(self._ledger.rows(r.ledger))
        if r.balances:
            out.append(self._balances.rows([(a, asset, b) for (a, asset), b in r.balances.items()]))
        if r.orders:
            out.append(self._orders.rows(list(r.orders.values())))
        if r.trades:
            out.append(self._trades.rows(r.trades))
        if r.fills:
            out.append(self._fills.rows(r.fills))
        for prepared, dicts in (
            (self._states, [{"market": m, "state": st} for m, st in r.states.items()]),
            (self._funding, r.funding),
            (self._funding_payments, r.funding_payments),
            (self._liquidations, r.liquidations),
        ):
            if dicts:
                out.append(prepared.statement(dicts))
        return out

    async def write_batch(self, entries: Sequence[Entry]) -> None:
        """Journal rows and projections of `entries` in one transaction.

        Straight to the driver, past SQLAlchemy's per-statement async plumbing, and off the
        event loop: the whole transaction is one hop to a writer thread (SQLite: its own
        `sqlite3` connection; PostgreSQL: its own asyncpg connection and event loop,
        `write_asyncpg`). (Measured: the per-statement hops, and then the database's
        answer, each waiting behind HTTP work on the event loop, were most of a REST
        order's commit time.)
        """
        if not entries:
            return
        statements = self.batch_statements(entries)
        if self._sqlite_writer is not None:
            await self._sqlite_writer.write(statements)
        elif self._pg_writer is not None:
            await self._pg_writer.write(statements)
        else:  # SQLite without a file of its own (":memory:", "file:" URIs): through the pool
            async with self.engine.begin() as conn:
                for st in statements:
                    await conn.exec_driver_sql(st.sql, st.params)

    async def max_seq(self) -> int:
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(func.max(t.journal.c.seq)))
        return int(value or 0)

    async def recent_signatures(self, since_ts: int, page: int = 20000) -> list[tuple[str, int]]:
        """(signature, claimed ts) of the signed commands journaled at `since_ts` or later,
        newest first: a backward scan by seq (ts never falls as seq rises) over the rows
        that hold a signature, a page at a time, until a page reaches back before
        `since_ts`. A command journaled without `sig_ts` gives its own ts. The two are
        cut out of the JSON text, not decoded: a start may read half a million."""
        out: list[tuple[str, int]] = []
        append, mark, skip = out.append, _SIG_MARK, len(_SIG_MARK)
        pages = self._pages(_SIGNED_PAGE, 2**62, page, forward=False)
        async with contextlib.aclosing(pages):
            async for rows in pages:
                for _seq, ts, command in rows:
                    if ts < since_ts:
                        return out
                    start = command.index(mark) + skip
                    end = command.index('"', start)
                    at = command.find('"sig_ts":', end)  # the same object's next key
                    claimed = command[at + 9 : at + 29].partition(",")[0].partition("}")[0]
                    if at < 0 or claimed == "null":  # journaled before sig_ts existed
                        append((command[start:end], ts))
                    else:
                        append((command[start:end], int(claimed)))
        return out

    async def _pages(
        self, query: str, bound: int, page: int, forward: bool = True
    ) -> AsyncGenerator[Sequence[Any], None]:
        """The rows of `query`, whose two `{}` are a seq bound and the page size, a page
        at a time until one is empty, straight from the driver on one connection
        (readers of many rows skip SQLAlchemy's per-row work). Forward, the next page
        starts after the last row; backward, the last row is the next bound.

        The next page is requested before this one is handed out, so the database
        (PostgreSQL's process, or SQLite in aiosqlite's thread) reads it on the
        other core while the caller works on this one."""
        async with self.engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            if self.dialect == "postgresql":
                sql = query.format(*(f"${k}" for k in range(1, query.count("{}") + 1)))

                async def fetch(*args: Any) -> Sequence[Any]:
                    rows: Sequence[Any] = await driver.fetch(sql, *args)
                    return rows
            else:
                sql = query.format(*("?" * query.count("{}")))

                async def fetch(*args: Any) -> Sequence[Any]:
                    cursor = await driver.execute(sql, args)
                    rows: Sequence[Any] = await cursor.fetchall()
                    return rows

            step = 1 if forward else 0
            pending = asyncio.ensure_future(fetch(bound, page))
            try:
                while True:
                    rows = await pending
                    if not rows:
                        return
                    pending = asyncio.ensure_future(fetch(rows[-1][0] + step, page))
                    await asyncio.sleep(0)  # let the next request go out before we yield
                    yield rows
            finally:
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending

    async def read_journal(
        self, after_seq: int = 0, batch: int = 20000
    ) -> AsyncIterator[tuple[int, int, Command]]:
        """Commands after `after_seq` in order, checked for gaps and checksums."""
        async for page in self.read_journal_pages(after_seq, batch):
            for entry in page:
                yield entry

    async def read_journal_pages(
        self, after_seq: int = 0, page: int = 20000
    ) -> AsyncIterator[list[tuple[int, int, Command]]]:
        """`read_journal` a page at a time (the replay hot path: one await per page).

        Rows come straight from the driver on one connection: replay reads
        millions of them, and SQLAlchemy's per-row processing was a fifth of the
        time. Rows before a bad one are yielded before JournalCorrupt is raised.
        """
        expected = after_seq + 1
        decode, loads, checksum_of = codec.decode, orjson.loads, journal_checksum
        async for rows in self.journal_rows(expected, page):
            out: list[tuple[int, int, Command]] = []
            problem: JournalCorrupt | None = None
            for seq, ts, cmd_text, checksum in rows:
                if seq != expected:
                    problem = JournalCorrupt(expected, f"missing; the next row is seq {seq}")
                elif checksum_of(seq, ts, cmd_text) != checksum:
                    problem = JournalCorrupt(seq, "checksum mismatch")
                else:
                    try:
                        out.append((seq, ts, decode(loads(cmd_text))))
                    except (ValueError, TypeError, KeyError) as exc:
                        problem = JournalCorrupt(seq, f"undecodable command: {exc}")
                if problem is not None:
                    break
                expected += 1
            if out:
                yield out
            if problem is not None:
                raise problem

    async def journal_rows(
        self, from_seq: int, page: int = 20000
    ) -> AsyncIterator[Sequence[tuple[int, int, str, int]]]:
        """Raw (seq, ts, command, checksum) rows from `from_seq` on, a page at a time,
        unchecked (`_pages`: the next one is read while the caller decodes and applies
        this one)."""
        pages = self._pages(_JOURNAL_PAGE, from_seq, page)
        async with contextlib.aclosing(pages):
            async for rows in pages:
                yield rows

    # ------------------------------------------------------------------ snapshots
    async def save_snapshot(
        self, seq: int, ts: int, state_hash: str, checksum: int, data: bytes, keep: int
    ) -> None:
        """Store a snapshot and keep only the newest `keep` (in one transaction)."""
        s = t.snapshots
        async with self.engine.begin() as conn:
            await conn.execute(s.delete().where(s.c.seq == seq))
            await conn.execute(
                s.insert().values(
                    seq=seq, ts=ts, state_hash=state_hash, checksum=checksum, data=data
                )
            )
            newest = (
                (await conn.execute(select(s.c.seq).order_by(s.c.seq.desc()).limit(max(keep, 1))))
                .scalars()
                .all()
            )
            await conn.execute(s.delete().where(s.c.seq.not_in(list(newest))))

    async def list_snapshots(self) -> list[tuple[int, int, str]]:
        """(seq, ts, state_hash) of the stored snapshots, newest first."""
        s = t.snapshots
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(s.c.seq, s.c.ts, s.c.state_hash).order_by(s.c.seq.desc())
            )
            return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]

    async def load_snapshot(self, seq: int) -> tuple[str, int, bytes] | None:
        """(state_hash, checksum, data) of one snapshot."""
        s = t.snapshots
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(s.c.state_hash, s.c.checksum, s.c.data).where(s.c.seq == seq)
                )
            ).first()
        return None if row is None else (str(row[0]), int(row[1]), bytes(row[2]))

    async def all_balances(self) -> dict[tuple[int, str], int]:
        """The balances projection, for verifying it against the engine after recovery."""
        b = t.balances
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(b.c.account_id, b.c.asset, b.c.balance))
            return {(int(r[0]), str(r[1])): int(r[2]) for r in rows}

    async def recent_trades(self, market: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` trades of a market, oldest first (to rebuild market data)."""
        tr = t.trades
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(tr).where(tr.c.market == market).order_by(tr.c.trade_id.desc()).limit(limit)
            )
            out = [dict(r._mapping) for r in rows]
        out.reverse()
        return out

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


async def write_asyncpg(driver: Any, statements: Sequence[Statement]) -> None:
    """One transaction on an asyncpg connection, in one round trip when every statement is
    an insert or upsert: a single statement whose data-modifying CTEs each read their rows
    from one jsonb parameter (orjson-encoded). Round trips are what a small batch costs
    here (each one ~90 µs of the server's CPU on this machine, and the commit waits for
    all of them: BENCHMARKS.md); PostgreSQL parses the JSON on its own core. A batch with
    an update (settings, a revoked key) is a transaction of statements, large plain
    inserts bulk-loaded with COPY."""
    parts = [st.json_sql for st in statements]
    if all(parts):
        await driver.execute(
            _one_statement(tuple(cast(str, p) for p in parts)),
            *[orjson.dumps(st.params, default=tuple).decode() for st in statements],
        )
        return
    async with driver.transaction():
        for st in statements:
            if st.copy is not None and len(st.params) >= COPY_MIN_ROWS:
                table, columns = st.copy
                await driver.copy_records_to_table(table, records=st.params, columns=columns)
            else:
                await driver.executemany(st.sql, st.params)


@functools.lru_cache(maxsize=256)
def _one_statement(parts: tuple[str, ...]) -> str:
    """The single statement of `write_asyncpg` for these json forms, parameter k the rows
    of part k."""
    ctes = ", ".join(
        f"w{k} AS ({part.replace('$@', f'${k + 1}')})" for k, part in enumerate(parts)
    )
    return f"WITH {ctes} SELECT 1"


class PgWriter:
    """The sequencer's PostgreSQL connection, on a thread with an event loop of its own:
    `write` runs a whole batch there (`write_asyncpg`) and the caller awaits the result.

    On the server's event loop the database's answer waited for the loop to finish the
    HTTP work it had in hand before the commit could complete (commit 3.1 ms where the
    same batch takes 1.3 ms on an idle loop); here asyncpg reads it as it arrives. The
    thread and the connection are made on the first write; a failed write drops the
    connection, and the next write opens a new one (the sequencer recovers in between).
    A connection found closed, or silent for `IDLE_CHECK_S` and not answering a ping
    (a database restart, an idle timeout, a dropped route), is replaced before the batch
    is sent, as the pool's pre-ping did for the old per-batch connection: nothing of the
    batch was sent on it, so nothing can have been committed.
    """

    IDLE_CHECK_S = 10.0
    PING_TIMEOUT_S = 5.0

    def __init__(self, engine: AsyncEngine) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        accepted = inspect.signature(asyncpg.connect).parameters
        self._connect_args = (cargs, {
            **{k: v for k, v in cparams.items() if k in accepted},
            "server_settings": {"synchronous_commit": "on"},
        })
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None
        self._last_used = 0.0  # time.monotonic() of the connection's last answer
        self._closed = False

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._loop is None:
            self._loop = loop = _new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="pg-writer", daemon=True)
            self._thread.start()
        return self._loop

    async def _usable(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            if time.monotonic() - self._last_used < self.IDLE_CHECK_S:
                return conn
            try:
                await conn.execute(";", timeout=self.PING_TIMEOUT_S)
                return conn
            except Exception:
                log.warning("the journal connection did not answer a ping; reconnecting")
        if conn is not None:
            conn.terminate()
        self._conn = None
        cargs, cparams = self._connect_args
        self._conn = conn = await asyncpg.connect(*cargs, **cparams)
        return conn

    async def _write(self, statements: Sequence[Statement]) -> None:
        conn = await self._usable()
        try:
            await write_asyncpg(conn, statements)
        except BaseException:
            self._conn = None
            conn.terminate()
            raise
        self._last_used = time.monotonic()

    async def write(self, statements: Sequence[Statement]) -> None:
        loop = self._start()
        done = asyncio.run_coroutine_threadsafe(self._write(statements), loop)
        await asyncio.wrap_future(done)

    async def close(self) -> None:
        self._closed = True  # a write after this raises instead of starting a new thread
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def _close() -> None:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except Exception:
                    conn.terminate()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        loop.close()
        self._loop = self._thread = None


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (as uvicorn runs the server's loop), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SqliteWriter:
    """The sequencer's SQLite connection, on a thread of its own: `write` runs a whole
    transaction there in one hop (sqlite3 releases the GIL while it works and syncs)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    def _write(self, statements: Sequence[Statement]) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = sqlite3.connect(self.path, isolation_level=None)
            _sqlite_pragmas(conn, None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for st in statements:
                conn.executemany(st.sql, st.params)
            conn.execute("COMMIT")
        except BaseException:
            # whatever state it is in (even a failed ROLLBACK), the next batch gets a
            # fresh connection; SQLite rolls back what this one left uncommitted
            self._conn = None
            conn.close()
            raise

    async def write(self, statements: Sequence[Statement]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, statements)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL that names a plain path (not ":memory:" nor a "file:"
    URI), else None."""
    parsed = make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    return None if db.startswith("file:") else db


def ensure_sqlite_dir(url: str) -> bool:
    """True for a SQLite URL, after creating the parent directory of its file."""
    if make_url(url).get_backend_name() != "sqlite":
        return False
    path = sqlite_file(url)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return True


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=OFF", "busy_timeout=5000",
                   f"wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()
