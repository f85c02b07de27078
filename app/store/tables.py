"""Table definitions (SQLAlchemy Core). The migrations in `migrations/versions` mirror them.

Rule owned here: money, prices, sizes, ids and timestamps (ms) are BigInteger;
enums are stored as their `.value` strings; no float column exists. On SQLite every
table is one B-tree: a single integer key is declared INTEGER (SQLite's 64-bit rowid;
BIGINT would add a second B-tree for the key), and a table with a composite or text
key is WITHOUT ROWID (migration 0004).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()


ROWID = BigInteger().with_variant(Integer(), "sqlite")  # a single integer key
KEYED: dict[str, Any] = {"sqlite_with_rowid": False}  # a composite or text key


def _id(name: str) -> Column[int]:
    return Column(name, ROWID, primary_key=True, autoincrement=False)


def _big(name: str, nullable: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable)


def _str(name: str, nullable: bool = False) -> Column[str]:
    return Column(name, String, nullable=nullable)


journal = Table(
    "journal",
    metadata,
    _id("seq"),
    _big("ts"),
    Column("command", Text, nullable=False),
    _big("checksum"),
)

accounts = Table(
    "accounts",
    metadata,
    _id("account_id"),
    _str("name"),
    Column("tier", Integer, nullable=False),
    _str("stp"),
    Column("auto_borrow", Boolean, nullable=False),
    _big("created_ts"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("api_key", String, primary_key=True),
    _big("account_id"),
    _str("secret"),
    _str("permissions"),
    _str("label"),
    _big("created_ts"),
    Column("revoked", Boolean, nullable=False),
    **KEYED,
)

orders = Table(
    "orders",
    metadata,
    _id("order_id"),
    _big("account_id"),
    _str("client_order_id", True),
    _str("market"),
    _str("side"),
    _str("type"),
    _str("tif"),
    _big("price", True),
    _big("trigger_price", True),
    _big("size"),
    _big("filled"),
    _big("filled_notional"),
    _str("status"),
    Column("reduce_only", Boolean, nullable=False),
    _str("stp"),
    _big("expire_ts", True),
    _big("created_ts"),
    _big("updated_ts"),
    _str("cancel_reason", True),
    Index("ix_orders_account_market_order", "account_id", "market", "order_id"),
    Index("ix_orders_account_client_id", "account_id", "client_order_id"),
)

trades = Table(
    "trades",
    metadata,
    _id("trade_id"),
    _str("market"),
    _big("price"),
    _big("size"),
    _str("taker_side"),
    _big("maker_order_id"),
    _big("taker_order_id"),
    _big("maker_account"),
    _big("taker_account"),
    _big("maker_fee"),
    _big("taker_fee"),
    _big("ts"),
    _big("seq"),
    Index("ix_trades_market_trade", "market", "trade_id"),
)

fills = Table(
    "fills",
    metadata,
    Column("account_id", BigInteger, primary_key=True, autoincrement=False),
    Column("trade_id", BigInteger, primary_key=True, autoincrement=False),
    _big("order_id"),
    _str("market"),
    _str("side"),
    _big("price"),
    _big("size"),
    _big("fee"),
    _str("liquidity"),
    _big("ts"),
    Index("ix_fills_account_market_trade", "account_id", "market", "trade_id"),
    **KEYED,
)

balances = Table(
    "balances",
    metadata,
    Column("account_id", BigInteger, primary_key=True, autoincrement=False),
    Column("asset", String, primary_key=True),
    _big("balance"),
    **KEYED,
)

ledger = Table(
    "ledger",
    metadata,
    Column("transfer_id", BigInteger, primary_key=True, autoincrement=False),
    Column("account_id", BigInteger, primary_key=True, autoincrement=False),
    _str("asset"),
    _big("amount"),
    _big("balance_after"),
    _str("reason"),
    _str("ref"),
    _big("counterparty"),
    _big("ts"),
    _big("seq"),
    Index("ix_ledger_account_asset_transfer", "account_id", "asset", "transfer_id"),
    **KEYED,
)

funding = Table(
    "funding",
    metadata,
    Column("market", String, primary_key=True),
    Column("ts", BigInteger, primary_key=True, autoincrement=False),
    _big("rate"),  # ppb paid by longs (< 0: by shorts) at this settlement
    _big("premium"),  # the average premium sample, ppb
    _big("index_price"),
    _big("samples"),
    _big("open_interest"),
    _big("dust"),
    _big("seq"),
    **KEYED,
)

funding_payments = Table(
    "funding_payments",
    metadata,
    Column("account_id", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", BigInteger, primary_key=True, autoincrement=False),
    Column("market", String, primary_key=True),
    _big("size"),
    _big("index_price"),
    _big("rate"),
    _big("amount"),  # > 0 paid, < 0 received
    _big("seq"),
    **KEYED,
)

# Liquidation slices and bad debt (engine/liquidation.py), for GET /v1/insurance: one
# row per event, `n` its place among the command's liquidation events.
liquidations = Table(
    "liquidations",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("n", Integer, primary_key=True, autoincrement=False),
    _str("kind"),  # "slice" | "bad_debt"
    _big("account_id"),
    _big("ts"),
    _big("step", True),
    _str("market", True),
    _str("asset", True),
    _str("side", True),
    _big("size", True),
    _big("limit_price", True),
    _big("book_size", True),
    _big("book_notional", True),
    _big("backstop_size", True),
    _big("backstop_notional", True),
    _big("fee", True),
    _big("amount", True),  # bad debt: what was owed
    _big("insurance", True),  # bad debt: paid by the fund
    _big("socialized", True),  # bad debt: written off against suppliers
    _big("suppliers", True),
    **KEYED,
)

market_states = Table(
    "market_states",
    metadata,
    Column("market", String, primary_key=True),
    _str("state"),
    **KEYED,
)

snapshots = Table(
    "snapshots",
    metadata,
    _id("seq"),
    _big("ts"),
    _str("state_hash"),
    _big("checksum"),
    Column("data", LargeBinary, nullable=False),
)
