"""Store: one-transaction batches, coalesced projections, journal integrity; config loader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from app.config import load_exchange_config
from app.db import upgrade_async
from app.store import JournalCorrupt, Store, queries
from app.store.tables import metadata
from engine import commands as c
from engine.events import (
    AccountCreated,
    AccountSettingsChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    BookDelta,
    Event,
    MarketStateChanged,
    OrderUpdate,
    OrderView,
    TradeEvent,
    Transfer,
)
from engine.markets import default_config
from engine.types import (
    LedgerReason,
    MarketState,
    OrderStatus,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)

ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB, EXTERNAL, FEES = 1000, 1001, 1, 2
USDC, BTC = 10**6, 10**8
PRICE = 65_000 * USDC  # quote atomic units per whole BTC


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    await upgrade_async(db_url)
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


def view(order_id: int, account_id: int, side: Side, size: int, status: OrderStatus,
         filled: int = 0, ts: int = 0, cancel_reason: str | None = None,
         client_order_id: str | None = None) -> OrderView:
    return OrderView(
        order_id=order_id, account_id=account_id, client_order_id=client_order_id,
        market="BTC-USDC", side=side, type=OrderType.LIMIT, tif=TimeInForce.GTC, price=PRICE,
        trigger_price=None, size=size, filled=filled, filled_notional=filled * PRICE // BTC,
        status=status, reduce_only=False, stp=StpMode.CANCEL_TAKER, expire_ts=None,
        created_ts=ts, updated_ts=ts, cancel_reason=cancel_reason,
    )


Entries = list[tuple[int, int, c.Command, list[Event]]]


def deposit(seq: int, tid: int, account: int, asset: str, amount: int, dep_id: str,
            ext_after: int, acct_after: int) -> tuple[int, int, c.Command, list[Event]]:
    ts = 1_000 + seq
    cmd = c.Deposit(seq=seq, ts=ts, account_id=account, asset=asset, amount=amount,
                    deposit_id=dep_id)
    return seq, ts, cmd, [Transfer(tid, asset, EXTERNAL, account, amount, LedgerReason.DEPOSIT,
                                   f"deposit:{dep_id}", ext_after, acct_after, ts)]


def setup_batch() -> Entries:
    """seq 1-5: two accounts with keys and three deposits (alice twice in USDC)."""
    return [
        (1, 1001, c.CreateAccount(seq=1, ts=1001, name="alice", api_key="ka", api_secret="sa"),
         [AccountCreated(ALICE, "alice", 0, 1001),
          ApiKeyCreated(ALICE, "ka", "sa", ("read", "trade", "withdraw"), "", 1001)]),
        (2, 1002, c.CreateAccount(seq=2, ts=1002, name="bob", api_key="kb", api_secret="sb"),
         [AccountCreated(BOB, "bob", 0, 1002),
          ApiKeyCreated(BOB, "kb", "sb", ("read", "trade", "withdraw"), "", 1002)]),
        deposit(3, 1, ALICE, "USDC", 15_000 * USDC, "dep-1", -15_000 * USDC, 15_000 * USDC),
        deposit(4, 2, BOB, "BTC", 1 * BTC, "dep-2", -1 * BTC, 1 * BTC),
        deposit(5, 3, ALICE, "USDC", 5_000 * USDC, "dep-3", -20_000 * USDC, 20_000 * USDC),
    ]


NOTIONAL = 13_000 * USDC  # 0.2 BTC at 65000
MAKER_FEE, TAKER_FEE = 1_300_000, 5_200_000  # 100 and 400 ppm


def trade_batch() -> Entries:
    """seq 6: bob rests a sell of 0.5; seq 7: alice buys 0.2 from it (order 2 open -> filled)."""
    sell = c.PlaceOrder(seq=6, ts=2000, account_id=BOB, market="BTC-USDC", side=Side.SELL,
                        size=BTC // 2, price=PRICE)
    buy = c.PlaceOrder(seq=7, ts=2001, account_id=ALICE, market="BTC-USDC", side=Side.BUY,
                       size=BTC // 5, price=PRICE, client_order_id="a-1")
    return [
        (6, 2000, sell, [OrderUpdate(view(1, BOB, Side.SELL, BTC // 2, OrderStatus.OPEN, ts=2000)),
                         BookDelta("BTC-USDC", (), ((PRICE, BTC // 2),))]),
        (7, 2001, buy, [
            OrderUpdate(view(2, ALICE, Side.BUY, BTC // 5, OrderStatus.OPEN, ts=2001,
                             client_order_id="a-1")),
            TradeEvent(1, "BTC-USDC", PRICE, BTC // 5, Side.BUY, 1, 2, BOB, ALICE,
                       MAKER_FEE, TAKER_FEE, 2001),
            Transfer(4, "USDC", ALICE, BOB, NOTIONAL, LedgerReason.TRADE, "trade:1",
                     7_000 * USDC, NOTIONAL, 2001),
            Transfer(5, "BTC", BOB, ALICE, BTC // 5, LedgerReason.TRADE, "trade:1",
                     BTC - BTC // 5, BTC // 5, 2001),
            Transfer(6, "USDC", ALICE, FEES, TAKER_FEE, LedgerReason.FEE, "trade:1",
                     7_000 * USDC - TAKER_FEE, TAKER_FEE, 2001),
            Transfer(7, "USDC", BOB, FEES, MAKER_FEE, LedgerReason.FEE, "trade:1",
                     NOTIONAL - MAKER_FEE, TAKER_FEE + MAKER_FEE, 2001),
            OrderUpdate(view(1, BOB, Side.SELL, BTC // 2, OrderStatus.PARTIALLY_FILLED,
                             filled=BTC // 5, ts=2001)),
            OrderUpdate(view(2, ALICE, Side.BUY, BTC // 5, OrderStatus.FILLED, filled=BTC // 5,
                             ts=2001, client_order_id="a-1")),
            BookDelta("BTC-USDC", (), ((PRICE, BTC * 3 // 10),)),
        ]),
    ]


def admin_batch() -> Entries:
    """seq 8-12: cancel, settings, a key created and revoked, market state twice."""
    return [
        (8, 3000, c.CancelOrder(seq=8, ts=3000, account_id=BOB, order_id=1),
         [OrderUpdate(view(1, BOB, Side.SELL, BTC // 2, OrderStatus.CANCELLED, filled=BTC // 5,
                           ts=3000, cancel_reason="user"))]),
        (9, 3001, c.SetAccountSettings(seq=9, ts=3001, account_id=BOB, stp=StpMode.CANCEL_MAKER,
                                       auto_borrow=True),
         [AccountSettingsChanged(BOB, StpMode.CANCEL_MAKER, True, 1)]),
        (10, 3002, c.CreateApiKey(seq=10, ts=3002, account_id=BOB, api_key="kb2",
                                  api_secret="sb2", permissions=("read",), label="ro"),
         [ApiKeyCreated(BOB, "kb2", "sb2", ("read",), "ro", 3002)]),
        (11, 3003, c.RevokeApiKey(seq=11, ts=3003, account_id=BOB, api_key="kb2"),
         [ApiKeyRevoked(BOB, "kb2")]),
        (12, 3004, c.SetMarketState(seq=12, ts=3004, market="BTC-USDC",
                                    state=MarketState.HALTED),
         [MarketStateChanged("BTC-USDC", MarketState.HALTED),
          MarketStateChanged("BTC-USDC", MarketState.CANCEL_ONLY)]),
    ]


def fill_row(account: int, order_id: int, side: str, fee: int, liquidity: str) -> dict[str, Any]:
    return {"account_id": account, "trade_id": 1, "order_id": order_id, "market": "BTC-USDC",
            "side": side, "price": PRICE, "size": BTC // 5, "fee": fee, "liquidity": liquidity,
            "ts": 2001}


async def test_migrations_match_tables(db_url: str) -> None:
    await upgrade_async(db_url)
    await upgrade_async(db_url)  # idempotent
    s = await Store.open(db_url)
    try:
        async with s.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
        assert await s.ping()
        assert await s.max_seq() == 0
    finally:
        await s.close()


async def test_sqlite_tables_are_one_btree_each_and_0004_keeps_every_row(
    sqlite_url: str,
) -> None:
    """Migration 0004 rebuilds SQLite's tables so that each is one B-tree (no automatic
    index for a key: INTEGER rowid keys, WITHOUT ROWID tables), keeping every row and
    the journal's checksums; its downgrade restores the old layout with the same rows."""
    from alembic import command

    from app.db import alembic_config
    from app.store.store import ensure_sqlite_dir

    def layout() -> tuple[list[str], dict[str, list[Any]]]:
        import sqlite3

        path = sqlite_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as db:
            names = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            autoindexes = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_autoindex_%' "
                "AND tbl_name != 'alembic_version' ORDER BY name")]
            rows = {n: db.execute(f"SELECT * FROM {n} ORDER BY 1, 2").fetchall()
                    for n in names if n != "alembic_version"}
        return autoindexes, rows

    ensure_sqlite_dir(sqlite_url)
    cfg = alembic_config(sqlite_url)
    await asyncio.to_thread(command.upgrade, cfg, "0003")
    s = await Store.open(sqlite_url)
    try:
        for batch in (setup_batch(), trade_batch(), admin_batch()):
            await s.write_batch(batch)
    finally:
        await s.close()
    old_indexes, before = await asyncio.to_thread(layout)
    assert "sqlite_autoindex_journal_1" in old_indexes and len(old_indexes) == 13
    filled = {n for n, rows in before.items() if rows}
    assert filled >= {"journal", "accounts", "api_keys", "orders", "trades", "fills",
                      "balances", "ledger", "market_states"}
    assert sum(len(rows) for rows in before.values()) == 44
    await asyncio.to_thread(command.upgrade, cfg, "head")
    indexes, after = await asyncio.to_thread(layout)
    assert indexes == [] and after == before
    s = await Store.open(sqlite_url)
    try:
        assert [e[0] async for e in s.read_journal()] == list(range(1, 13))
    finally:
        await s.close()
    await asyncio.to_thread(command.downgrade, cfg, "0003")
    assert await asyncio.to_thread(layout) == (old_indexes, before)


async def test_balances_and_ledger(store: Store) -> None:
    await store.write_batch(setup_batch())
    assert await store.max_seq() == 5
    assert await queries.get_balances(store, ALICE) == {"USDC": 20_000 * USDC}
    assert await queries.get_balances(store, BOB) == {"BTC": BTC}
    assert await queries.get_balances(store, EXTERNAL) == {"BTC": -BTC, "USDC": -20_000 * USDC}

    rows, cursor = await queries.list_ledger(store, ALICE)
    assert cursor is None
    assert rows == [
        {"transfer_id": 3, "account_id": ALICE, "asset": "USDC", "amount": 5_000 * USDC,
         "balance_after": 20_000 * USDC, "reason": "deposit", "ref": "deposit:dep-3",
         "counterparty": EXTERNAL, "ts": 1005, "seq": 5},
        {"transfer_id": 1, "account_id": ALICE, "asset": "USDC", "amount": 15_000 * USDC,
         "balance_after": 15_000 * USDC, "reason": "deposit", "ref": "deposit:dep-1",
         "counterparty": EXTERNAL, "ts": 1003, "seq": 3},
    ]
    ext, _ = await queries.list_ledger(store, EXTERNAL)
    assert [(r["transfer_id"], r["amount"], r["balance_after"], r["counterparty"])
            for r in ext] == [(3, -5_000 * USDC, -20_000 * USDC, ALICE),
                              (2, -BTC, -BTC, BOB), (1, -15_000 * USDC, -15_000 * USDC, ALICE)]
    ext_btc, _ = await queries.list_ledger(store, EXTERNAL, asset="BTC")
    assert [r["transfer_id"] for r in ext_btc] == [2]

    page1, cursor = await queries.list_ledger(store, EXTERNAL, limit=2)
    assert [r["transfer_id"] for r in page1] == [3, 2] and cursor == 2
    page2, cursor = await queries.list_ledger(store, EXTERNAL, limit=2, cursor=cursor)
    assert [r["transfer_id"] for r in page2] == [1] and cursor is None

    accounts, _ = await queries.list_accounts(store)
    assert accounts == [
        {"account_id": ALICE, "name": "alice", "tier": 0, "stp": "cancel_taker",
         "auto_borrow": False, "created_ts": 1001},
        {"account_id": BOB, "name": "bob", "tier": 0, "stp": "cancel_taker",
         "auto_borrow": False, "created_ts": 1002},
    ]
    keys, _ = await queries.list_api_keys(store, ALICE)
    assert keys == [{"api_key": "ka", "account_id": ALICE, "permissions": ["read", "trade",
                     "withdraw"], "label": "", "created_ts": 1001, "revoked": False}]
    keys, _ = await queries.list_api_keys(store, include_secret=True)
    assert [(k["api_key"], k["secret"]) for k in keys] == [("ka", "sa"), ("kb", "sb")]


async def test_orders_trades_fills(store: Store) -> None:
    await store.write_batch(setup_batch())
    await store.write_batch(trade_batch())

    assert await queries.get_balances(store, ALICE) == {
        "BTC": BTC // 5, "USDC": 7_000 * USDC - TAKER_FEE}
    assert await queries.get_balances(store, BOB) == {
        "BTC": BTC - BTC // 5, "USDC": NOTIONAL - MAKER_FEE}
    assert await queries.get_balances(store, FEES) == {"USDC": TAKER_FEE + MAKER_FEE}

    order2 = await queries.get_order(store, ALICE, 2)
    assert order2 == {
        "order_id": 2, "account_id": ALICE, "client_order_id": "a-1", "market": "BTC-USDC",
        "side": "buy", "type": "limit", "tif": "gtc", "price": PRICE, "trigger_price": None,
        "size": BTC // 5, "filled": BTC // 5, "filled_notional": NOTIONAL, "status": "filled",
        "reduce_only": False, "stp": "cancel_taker", "expire_ts": None, "created_ts": 2001,
        "updated_ts": 2001, "cancel_reason": None,
    }
    assert await queries.get_order(store, BOB, 2) is None  # someone else's order
    assert await queries.get_order_by_client_id(store, ALICE, "a-1") == order2
    assert await queries.get_order_by_client_id(store, BOB, "a-1") is None

    trades, _ = await queries.list_trades(store, "BTC-USDC")
    assert trades == [{"trade_id": 1, "market": "BTC-USDC", "price": PRICE, "size": BTC // 5,
                       "taker_side": "buy", "maker_order_id": 1, "taker_order_id": 2,
                       "maker_account": BOB, "taker_account": ALICE, "maker_fee": MAKER_FEE,
                       "taker_fee": TAKER_FEE, "ts": 2001, "seq": 7}]
    assert await queries.list_fills(store, ALICE) == (
        [fill_row(ALICE, 2, "buy", TAKER_FEE, "taker")], None)
    assert await queries.list_fills(store, BOB, market="BTC-USDC") == (
        [fill_row(BOB, 1, "sell", MAKER_FEE, "maker")], None)
    assert await queries.list_fills(store, BOB, market="ETH-USDC") == ([], None)

    bob_ledger, _ = await queries.list_ledger(store, BOB, asset="USDC")
    assert [(r["transfer_id"], r["amount"], r["reason"], r["counterparty"])
            for r in bob_ledger] == [(7, -MAKER_FEE, "fee", FEES),
                                     (4, NOTIONAL, "trade", ALICE)]

    bob_orders, _ = await queries.list_orders(store, BOB)
    assert [(o["order_id"], o["status"], o["filled"]) for o in bob_orders] == [
        (1, "partially_filled", BTC // 5)]

    await store.write_batch(admin_batch())
    bob_orders, _ = await queries.list_orders(store, BOB)
    assert [(o["order_id"], o["status"]) for o in bob_orders] == [(1, "cancelled")]
    order1 = await queries.get_order(store, BOB, 1)
    assert order1 is not None
    assert (order1["status"], order1["cancel_reason"], order1["filled"], order1["updated_ts"]) \
        == ("cancelled", "user", BTC // 5, 3000)
    all_bob, _ = await queries.list_orders(store, BOB, market="BTC-USDC")
    assert [o["order_id"] for o in all_bob] == [1]

    accounts, _ = await queries.list_accounts(store, limit=1, cursor=ALICE)
    assert accounts == [{"account_id": BOB, "name": "bob", "tier": 1, "stp": "cancel_maker",
                         "auto_borrow": True, "created_ts": 1002}]
    keys, _ = await queries.list_api_keys(store, BOB)
    assert [(k["api_key"], k["permissions"], k["label"], k["revoked"]) for k in keys] == [
        ("kb", ["read", "trade", "withdraw"], "", False), ("kb2", ["read"], "ro", True)]
    async with store.engine.connect() as conn:
        states = (await conn.execute(text("SELECT market, state FROM market_states"))).all()
    assert [tuple(r) for r in states] == [("BTC-USDC", "cancel_only")]


async def test_pagination_newest_first(store: Store) -> None:
    entries: Entries = []
    for i in range(1, 8):
        cmd = c.PlaceOrder(seq=i, ts=i, account_id=ALICE, market="BTC-USDC", side=Side.BUY,
                           size=BTC, price=PRICE)
        entries.append((i, i, cmd, [OrderUpdate(view(i, ALICE, Side.BUY, BTC, OrderStatus.OPEN,
                                                     ts=i, client_order_id="same"))]))
    await store.write_batch(entries)
    seen: list[int] = []
    cursor: int | None = None
    while True:
        rows, cursor = await queries.list_orders(store, ALICE, limit=3, cursor=cursor)
        seen += [r["order_id"] for r in rows]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    newest = await queries.get_order_by_client_id(store, ALICE, "same")
    assert newest is not None and newest["order_id"] == 7
    rows, cursor = await queries.list_orders(store, ALICE, limit=0)
    assert len(rows) == 1 and cursor == 7


async def test_journal_round_trip(store: Store) -> None:
    nested = c.BatchPlace(seq=13, ts=4000, account_id=ALICE, atomic=True, orders=(
        c.PlaceOrder(account_id=ALICE, market="BTC-USDC", side=Side.BUY, size=BTC,
                     type=OrderType.MARKET, tif=TimeInForce.IOC),
        c.PlaceOrder(account_id=ALICE, market="ETH-USDC", side=Side.SELL, size=BTC,
                     price=3_000 * USDC, client_order_id="leg-2"),
    ))
    batches: list[Entries] = [setup_batch(), trade_batch(), admin_batch(), [(13, 4000, nested, [])]]
    for batch in batches:
        await store.write_batch(batch)
    expected = [(seq, ts, cmd) for batch in batches for seq, ts, cmd, _ in batch]
    got = [entry async for entry in store.read_journal()]
    assert got == expected
    assert [e async for e in store.read_journal(after_seq=10, batch=2)] == expected[10:]
    assert [e async for e in store.read_journal(after_seq=13)] == []
    assert await store.max_seq() == 13


async def test_journal_checksum_mismatch(store: Store) -> None:
    await store.write_batch(setup_batch())
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE journal SET command = replace(command, 'bob', 'eve') "
                                "WHERE seq = 2"))
    with pytest.raises(JournalCorrupt) as info:
        _ = [e async for e in store.read_journal()]
    assert info.value.seq == 2 and "checksum" in info.value.reason
    assert [e[0] async for e in store.read_journal(after_seq=2)] == [3, 4, 5]


async def test_journal_gap(store: Store) -> None:
    await store.write_batch(setup_batch())
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM journal WHERE seq = 3"))
    with pytest.raises(JournalCorrupt) as info:
        _ = [e async for e in store.read_journal()]
    assert info.value.seq == 3
    with pytest.raises(JournalCorrupt):
        _ = [e async for e in store.read_journal(after_seq=1, batch=1)]


async def test_recent_signatures_are_read_back_from_the_journal(store: Store) -> None:
    """`recent_signatures(since)` gives (signature, claimed ts) of the signed commands
    journaled at `since` or later, newest first, over pages; a command journaled before
    `sig_ts` existed gives its own ts, and a command without a signature gives nothing."""
    signed = {2: ("s2", 61_000), 3: ("s3", None), 5: ("s5", 4_990), 6: ("s6", 6_001)}
    entries: Entries = []
    for seq in range(1, 8):
        cmd = c.Deposit(seq=seq, ts=seq * 1_000, account_id=ALICE, asset="USDC", amount=1,
                        deposit_id=f"d{seq}")
        if seq in signed:
            sig, sig_ts = signed[seq]
            if sig_ts is None:  # as an older journal holds it
                object.__setattr__(cmd, "sig", sig)
            else:
                c.attach_signature(cmd, sig, sig_ts)
        entries.append((seq, seq * 1_000, cmd, []))
    await store.write_batch(entries)
    # a row journaled before `sig_ts` existed has no such key at all
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE journal SET command = replace(command, :key, '') "
                                "WHERE seq = 3"), {"key": '"sig_ts":null,'})
    assert '"sig":"s3","ts":3000' in [e async for e in store.journal_rows(3)][0][0][2]
    newest_first = [("s6", 6_001), ("s5", 4_990), ("s3", 3_000), ("s2", 61_000)]
    for page in (1, 2, 3, 20_000):
        assert await store.recent_signatures(2_000, page) == newest_first
        assert await store.recent_signatures(2_001, page) == newest_first[:3]
        assert await store.recent_signatures(5_000, page) == newest_first[:2]
    assert await store.recent_signatures(7_000) == []
    assert await store.recent_signatures(0) == newest_first


async def test_failed_batch_writes_nothing(store: Store) -> None:
    await store.write_batch(setup_batch())
    with pytest.raises(Exception):  # noqa: B017 - seq 5 exists: the whole batch must roll back
        await store.write_batch([deposit(6, 8, BOB, "USDC", USDC, "d", -1, 1),
                                 deposit(5, 9, BOB, "USDC", USDC, "d", -1, 1)])
    assert await store.max_seq() == 5
    assert await queries.get_balances(store, BOB) == {"BTC": BTC}


def test_example_markets_file_is_the_default() -> None:
    assert load_exchange_config(str(ROOT / "markets.example.json")) == default_config()
    assert load_exchange_config(None) == default_config()


def _bad_file(tmp_path: Path, **market: str) -> str:
    raw = json.loads((ROOT / "markets.example.json").read_text())
    raw["markets"][0].update(market)
    path = tmp_path / "markets.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_bad_markets_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tick x lot"):
        load_exchange_config(_bad_file(tmp_path, lot="0.00000001", min_size="0.00000001"))
    with pytest.raises(ValueError, match="BTC-USDC.*decimal places"):
        load_exchange_config(_bad_file(tmp_path, tick="0.0000001"))
    with pytest.raises(ValueError, match="min_size"):
        load_exchange_config(_bad_file(tmp_path, min_size="0.00015"))
    with pytest.raises(ValueError, match="unknown"):
        load_exchange_config(_bad_file(tmp_path, base="DOGE"))
    with pytest.raises(ValueError):
        load_exchange_config(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///:memory:",
                                 "sqlite+aiosqlite:///file:{tmp}/uri.db?uri=true",
                                 "sqlite+aiosqlite:///{tmp}/plain.db"])
async def test_every_kind_of_sqlite_url_takes_a_batch(url: str, tmp_path: Path) -> None:
    """A plain file gets the writer thread; ":memory:" and "file:" URIs (no path of their
    own for a second connection) write through the pool."""
    st = await Store.open(url.format(tmp=tmp_path))
    try:
        async with st.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        assert (st._sqlite_writer is not None) == url.endswith("plain.db")
        await st.write_batch(setup_batch())
        assert await st.max_seq() == len(setup_batch())
    finally:
        await st.close()


ODD = 'Zoë "quoted" \\ back\\slash \t tab 🚀 {}[]$1::jsonb'


async def test_rows_keep_every_value_exactly(store: Store) -> None:
    """The hot tables' rows are tuples sent as they are (on PostgreSQL as one statement
    reading jsonb): strings with quotes, backslashes and non-ASCII, NULLs, booleans,
    enum members and integers near the 64-bit bound come back exactly."""
    await store.write_batch(setup_batch())
    big = 10**18 - 7
    market = OrderView(
        order_id=9, account_id=ALICE, client_order_id="c-" + "x" * 60, market="BTC-USDC",
        side=Side.SELL, type=OrderType.MARKET, tif=TimeInForce.IOC, price=None,
        trigger_price=None, size=big, filled=0, filled_notional=0,
        status=OrderStatus.CANCELLED, reduce_only=True, stp=StpMode.DECREMENT,
        expire_ts=None, created_ts=3000, updated_ts=3001, cancel_reason=ODD,
    )
    cmd = c.Deposit(seq=6, ts=3000, account_id=ALICE, asset="BTC", amount=big, deposit_id=ODD)
    await store.write_batch([(6, 3000, cmd, [
        OrderUpdate(market),
        Transfer(9, "BTC", EXTERNAL, ALICE, big, LedgerReason.DEPOSIT, ODD, -big, big, 3000),
    ])])
    async with store.engine.connect() as conn:
        order = (await conn.execute(text("SELECT * FROM orders WHERE order_id = 9"))).one()
        ledger = (await conn.execute(
            text("SELECT * FROM ledger WHERE transfer_id = 9 ORDER BY account_id"))).all()
        balance = (await conn.execute(text(
            f"SELECT balance FROM balances WHERE account_id = {ALICE} AND asset = 'BTC'"))).one()
    assert tuple(order) == (9, ALICE, "c-" + "x" * 60, "BTC-USDC", "sell", "market", "ioc",
                            None, None, big, 0, 0, "cancelled", True, "decrement", None, 3000,
                            3001, ODD)
    assert [tuple(r) for r in ledger] == [
        (9, EXTERNAL, "BTC", -big, -big, "deposit", ODD, ALICE, 3000, 6),
        (9, ALICE, "BTC", big, big, "deposit", ODD, EXTERNAL, 3000, 6),
    ]
    assert balance[0] == big
    assert [row async for row in store.read_journal(5)] == [(6, 3000, cmd)]


async def test_a_batch_with_updates_is_one_transaction_too(store: Store) -> None:
    """Settings changed and a key revoked in the batch that created them: written in
    order (on PostgreSQL a transaction of statements, not the single jsonb statement)."""
    batch = setup_batch()
    batch.append((6, 1006, c.RevokeApiKey(seq=6, ts=1006, account_id=ALICE, api_key="ka"),
                  [ApiKeyRevoked(ALICE, "ka"),
                   AccountSettingsChanged(ALICE, StpMode.CANCEL_BOTH, True, 1)]))
    await store.write_batch(batch)
    async with store.engine.connect() as conn:
        key = (await conn.execute(text("SELECT revoked FROM api_keys WHERE api_key = 'ka'"))).one()
        acct = (await conn.execute(text(
            f"SELECT stp, auto_borrow, tier FROM accounts WHERE account_id = {ALICE}"))).one()
    assert bool(key[0]) is True
    assert (acct[0], bool(acct[1]), acct[2]) == ("cancel_both", True, 1)


def test_json_form_only_for_statements_it_can_rewrite() -> None:
    """The one-statement PostgreSQL write rewrites `VALUES ($k::T, ...)`; a cast with
    parentheses or a parameter without a cast keeps the statement off that path."""
    from app.store.store import _json_form

    assert _json_form("INSERT INTO t (a, b) VALUES ($1::BIGINT, $2::VARCHAR)") == (
        "INSERT INTO t (a, b) SELECT (e->>0)::BIGINT, (e->>1)::VARCHAR "
        "FROM jsonb_array_elements($@::jsonb) AS e"
    )
    assert _json_form("INSERT INTO t (a, b) VALUES ($1::NUMERIC(20, 0), $2::BIGINT)") is None
    assert _json_form("INSERT INTO t (a, b) VALUES ($1, $2::BIGINT)") is None
    assert _json_form("UPDATE t SET a=$1::BIGINT WHERE t.b = $2::BIGINT") is None


async def test_an_order_update_keeps_the_order_identity(store: Store) -> None:
    """An order's account, market and client id are written once, by its first row: the
    upsert of a later update does not assign them (so SQLite leaves the indexes keyed on
    them alone), and a later row cannot move the order to another account or market."""
    await store.write_batch(setup_batch())
    await store.write_batch(trade_batch())
    moved = view(2, BOB, Side.BUY, BTC // 5, OrderStatus.FILLED, filled=BTC // 5, ts=2500,
                 client_order_id="other")._replace(market="ETH-USDC")
    await store.write_batch([(8, 2500, c.CancelOrder(seq=8, ts=2500, account_id=ALICE,
                                                     order_id=2), [OrderUpdate(moved)])])
    row = await queries.get_order(store, ALICE, 2)
    assert row is not None
    assert (row["account_id"], row["market"], row["client_order_id"], row["updated_ts"]) == (
        ALICE, "BTC-USDC", "a-1", 2500)
    assert await queries.get_order(store, BOB, 2) is None
    assigned = store._orders.sql.split("DO UPDATE SET", 1)[1]
    assert "filled = excluded.filled" in assigned
    for column in ("account_id", "market", "client_order_id"):
        assert f" {column} = " not in assigned


async def test_the_sqlite_writer_checkpoints_every_4000_wal_pages(tmp_path: Path) -> None:
    from app.store.store import WAL_AUTOCHECKPOINT_PAGES

    url = f"sqlite+aiosqlite:///{tmp_path}/ckpt.db"
    await upgrade_async(url)
    st = await Store.open(url)
    try:
        await st.write_batch(setup_batch())
        writer = st._sqlite_writer
        assert writer is not None

        def pragmas() -> list[Any]:  # on the writer's thread, where its connection lives
            assert writer._conn is not None
            return [writer._conn.execute(f"PRAGMA {p}").fetchone()[0]
                    for p in ("wal_autocheckpoint", "journal_mode", "synchronous")]

        got = await asyncio.get_running_loop().run_in_executor(writer._executor, pragmas)
        assert WAL_AUTOCHECKPOINT_PAGES == 4000
        assert got == [4000, "wal", 2]  # synchronous=FULL is 2
    finally:
        await st.close()


@pytest.mark.postgres
async def test_the_postgres_writer_has_its_own_thread_and_reconnects(postgres_url: str) -> None:
    """PostgreSQL batches are written by a connection on a thread of its own (started by
    the first write). A batch that fails drops that connection and the next one opens a
    new one; a connection killed while idle is replaced before a batch is sent on it (the
    batch is written, not failed); close() stops the thread, and a write after it raises."""
    import threading

    import asyncpg

    from tests import dbutil

    await upgrade_async(postgres_url)
    st = await Store.open(postgres_url)
    try:
        writer = st._pg_writer
        assert writer is not None and writer._thread is None  # nothing started by open()
        await st.write_batch(setup_batch())
        assert writer._thread is not None and writer._thread.name == "pg-writer"
        assert writer._thread in threading.enumerate()
        assert await st.max_seq() == 5

        first = writer._conn
        assert first is not None
        with pytest.raises(asyncpg.UniqueViolationError):  # seq 1-5 again: refused
            await st.write_batch(setup_batch())
        assert writer._conn is None and first.is_closed()
        assert await st.max_seq() == 5

        await st.write_batch(trade_batch()[:1])  # seq 6, on a new connection
        second = writer._conn
        assert second is not None and second is not first
        admin = await asyncpg.connect(dbutil._dsn(postgres_url))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)",
                                        second.get_server_pid()) is True
        finally:
            await admin.close()
        writer._last_used -= writer.IDLE_CHECK_S  # idle long enough to be checked first
        await st.write_batch(trade_batch()[1:])  # seq 7: written, on a third connection
        assert await st.max_seq() == 7
        assert writer._conn is not None and writer._conn not in (first, second)
        thread = writer._thread
    finally:
        await st.close()
    assert not thread.is_alive() and writer._thread is None
    with pytest.raises(RuntimeError, match="closed"):
        await st._pg_writer.write([])
