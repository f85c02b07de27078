"""Read side: plain-dict rows from the projection tables, for the API and services.

Rules owned here: values are returned raw (ints, enum value strings; formatting is
the API's job); lists are newest first by id with keyset pagination
(`cursor` = the last id seen, continue below it), `limit` clamped to 1..1000, and
every list returns `(rows, next_cursor)` with next_cursor None on the last page.
Account-scoped reads always filter by account_id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import tables as t
from app.store.store import Store

MAX_LIMIT = 1000

Row = dict[str, Any]
Page = tuple[list[Row], Any]


def _engine(db: Store | AsyncEngine) -> AsyncEngine:
    return db.engine if isinstance(db, Store) else db


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


async def _rows(db: Store | AsyncEngine, query: Select[Any]) -> list[Row]:
    async with _engine(db).connect() as conn:
        result = await conn.execute(query)
        return [dict(row) for row in result.mappings()]


async def _page(db: Store | AsyncEngine, query: Select[Any], key: str, limit: int) -> Page:
    """Fetch one more row than asked to know whether another page exists."""
    n = _limit(limit)
    rows = await _rows(db, query.limit(n + 1))
    if len(rows) > n:
        rows = rows[:n]
        return rows, rows[-1][key]
    return rows, None


async def list_orders(
    store: Store | AsyncEngine,
    account_id: int,
    market: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> Page:
    """The account's orders of every status (its live ones alone come from the engine,
    `Exchange.live_orders`: no index on disk holds them)."""
    o = t.orders
    q = select(o).where(o.c.account_id == account_id)
    if market is not None:
        q = q.where(o.c.market == market)
    if cursor is not None:
        q = q.where(o.c.order_id < cursor)
    return await _page(store, q.order_by(o.c.order_id.desc()), "order_id", limit)


async def get_order(store: Store | AsyncEngine, account_id: int, order_id: int) -> Row | None:
    o = t.orders
    rows = await _rows(
        store, select(o).where(o.c.account_id == account_id, o.c.order_id == order_id)
    )
    return rows[0] if rows else None


async def get_order_by_client_id(
    store: Store | AsyncEngine, account_id: int, client_order_id: str
) -> Row | None:
    """The newest order of the account carrying that client id."""
    o = t.orders
    q = (
        select(o)
        .where(o.c.account_id == account_id, o.c.client_order_id == client_order_id)
        .order_by(o.c.order_id.desc())
        .limit(1)
    )
    rows = await _rows(store, q)
    return rows[0] if rows else None


async def list_fills(
    store: Store | AsyncEngine,
    account_id: int,
    market: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> Page:
    f = t.fills
    q = select(f).where(f.c.account_id == account_id)
    if market is not None:
        q = q.where(f.c.market == market)
    if cursor is not None:
        q = q.where(f.c.trade_id < cursor)
    return await _page(store, q.order_by(f.c.trade_id.desc()), "trade_id", limit)


async def fills_of_order(store: Store | AsyncEngine, account_id: int, order_id: int) -> list[Row]:
    """Every fill of one order, oldest first."""
    f = t.fills
    q = select(f).where(f.c.account_id == account_id, f.c.order_id == order_id)
    return await _rows(store, q.order_by(f.c.trade_id))


async def list_trades(
    store: Store | AsyncEngine, market: str, limit: int = 100, cursor: int | None = None
) -> Page:
    tr = t.trades
    q = select(tr).where(tr.c.market == market)
    if cursor is not None:
        q = q.where(tr.c.trade_id < cursor)
    return await _page(store, q.order_by(tr.c.trade_id.desc()), "trade_id", limit)


async def list_ledger(
    store: Store | AsyncEngine,
    account_id: int,
    asset: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> Page:
    lg = t.ledger
    q = select(lg).where(lg.c.account_id == account_id)
    if asset is not None:
        q = q.where(lg.c.asset == asset)
    if cursor is not None:
        q = q.where(lg.c.transfer_id < cursor)
    return await _page(store, q.order_by(lg.c.transfer_id.desc()), "transfer_id", limit)


async def get_balances(store: Store | AsyncEngine, account_id: int) -> dict[str, int]:
    """{asset: balance} of the account, assets in alphabetical order."""
    b = t.balances
    q = select(b.c.asset, b.c.balance).where(b.c.account_id == account_id).order_by(b.c.asset)
    return {r["asset"]: r["balance"] for r in await _rows(store, q)}


async def list_accounts(
    store: Store | AsyncEngine, limit: int = 1000, cursor: int | None = None
) -> Page:
    """Accounts in id order (oldest first); cursor = the last account_id seen."""
    a = t.accounts
    q = select(a)
    if cursor is not None:
        q = q.where(a.c.account_id > cursor)
    return await _page(store, q.order_by(a.c.account_id), "account_id", limit)


async def list_api_keys(
    store: Store | AsyncEngine,
    account_id: int | None = None,
    limit: int = 1000,
    cursor: str | None = None,
    include_secret: bool = False,
) -> Page:
    """Keys ordered by api_key; `permissions` as a list; the secret only when asked for."""
    k = t.api_keys
    cols = [c for c in k.columns if include_secret or c.name != "secret"]
    q = select(*cols)
    if account_id is not None:
        q = q.where(k.c.account_id == account_id)
    if cursor is not None:
        q = q.where(k.c.api_key > cursor)
    rows, next_cursor = await _page(store, q.order_by(k.c.api_key), "api_key", limit)
    for row in rows:
        row["permissions"] = [p for p in row["permissions"].split(",") if p]
    return rows, next_cursor


async def list_funding(
    store: Store | AsyncEngine, market: str, limit: int = 100, cursor: int | None = None
) -> Page:
    """A perp's funding settlements, newest first; cursor = the last ts seen."""
    f = t.funding
    q = select(f).where(f.c.market == market)
    if cursor is not None:
        q = q.where(f.c.ts < cursor)
    return await _page(store, q.order_by(f.c.ts.desc()), "ts", limit)


async def list_funding_payments(
    store: Store | AsyncEngine,
    account_id: int,
    market: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """An account's funding payments, newest first (ts, then market, descending);
    cursor = "ts:market" of the last row seen."""
    fp = t.funding_payments
    q = select(fp).where(fp.c.account_id == account_id)
    if market is not None:
        q = q.where(fp.c.market == market)
    if cursor is not None:
        ts_text, _, last_market = cursor.partition(":")
        ts = int(ts_text)
        q = q.where((fp.c.ts < ts) | ((fp.c.ts == ts) & (fp.c.market < last_market)))
    rows, last = await _page(store, q.order_by(fp.c.ts.desc(), fp.c.market.desc()), "ts", limit)
    return rows, None if last is None else f"{last}:{rows[-1]['market']}"


async def list_insurance_history(
    store: Store | AsyncEngine, limit: int = 100, cursor: str | None = None
) -> Page:
    """The insurance fund's history, newest first: liquidation slices the fund took over
    (backstop) and bad debts it paid or saw socialized; cursor = "seq:n" of the last row."""
    lq = t.liquidations
    q = select(lq).where((lq.c.kind == "bad_debt") | (lq.c.backstop_size > 0))
    if cursor is not None:
        seq_text, _, n_text = cursor.partition(":")
        seq, n = int(seq_text), int(n_text or 0)
        q = q.where((lq.c.seq < seq) | ((lq.c.seq == seq) & (lq.c.n < n)))
    rows, last = await _page(store, q.order_by(lq.c.seq.desc(), lq.c.n.desc()), "seq", limit)
    return rows, None if last is None else f"{last}:{rows[-1]['n']}"
