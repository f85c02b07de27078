"""Initial schema: journal, projections and snapshots.

Revision ID: 0001
Revises:
Create Date: 2024-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), primary_key=True, autoincrement=False)


def _big(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _str(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def _bool(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "journal",
        _id("seq"), _big("ts"), sa.Column("command", sa.Text(), nullable=False),
        _big("checksum"),
    )
    op.create_table(
        "accounts",
        _id("account_id"), _str("name"), sa.Column("tier", sa.Integer(), nullable=False),
        _str("stp"), _bool("auto_borrow"), _big("created_ts"),
    )
    op.create_table(
        "api_keys",
        sa.Column("api_key", sa.String(), primary_key=True), _big("account_id"),
        _str("secret"), _str("permissions"), _str("label"), _big("created_ts"),
        _bool("revoked"),
    )
    op.create_table(
        "orders",
        _id("order_id"), _big("account_id"), _str("client_order_id", True), _str("market"),
        _str("side"), _str("type"), _str("tif"), _big("price", True),
        _big("trigger_price", True), _big("size"), _big("filled"), _big("filled_notional"),
        _str("status"), _bool("reduce_only"), _str("stp"), _big("expire_ts", True),
        _big("created_ts"), _big("updated_ts"), _str("cancel_reason", True),
    )
    op.create_index("ix_orders_account_status", "orders", ["account_id", "status"])
    op.create_index("ix_orders_account_market_order", "orders",
                    ["account_id", "market", "order_id"])
    op.create_index("ix_orders_account_client_id", "orders", ["account_id", "client_order_id"])
    op.create_table(
        "trades",
        _id("trade_id"), _str("market"), _big("price"), _big("size"), _str("taker_side"),
        _big("maker_order_id"), _big("taker_order_id"), _big("maker_account"),
        _big("taker_account"), _big("maker_fee"), _big("taker_fee"), _big("ts"), _big("seq"),
    )
    op.create_index("ix_trades_market_trade", "trades", ["market", "trade_id"])
    op.create_table(
        "fills",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("trade_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        _big("order_id"), _str("market"), _str("side"), _big("price"), _big("size"),
        _big("fee"), _str("liquidity"), _big("ts"),
    )
    op.create_index("ix_fills_account_market_trade", "fills",
                    ["account_id", "market", "trade_id"])
    op.create_table(
        "balances",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("asset", sa.String(), primary_key=True),
        _big("balance"),
    )
    op.create_table(
        "ledger",
        sa.Column("transfer_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        _str("asset"), _big("amount"), _big("balance_after"), _str("reason"), _str("ref"),
        _big("counterparty"), _big("ts"), _big("seq"),
    )
    op.create_index("ix_ledger_account_asset_transfer", "ledger",
                    ["account_id", "asset", "transfer_id"])
    op.create_table(
        "market_states",
        sa.Column("market", sa.String(), primary_key=True), _str("state"),
    )
    op.create_table(
        "snapshots",
        _id("seq"), _big("ts"), _str("state_hash"), _big("checksum"),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    for table in ("snapshots", "market_states", "ledger", "balances", "fills", "trades",
                  "orders", "api_keys", "accounts", "journal"):
        op.drop_table(table)
