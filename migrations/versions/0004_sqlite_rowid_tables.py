"""SQLite: one B-tree per table where the key allows it.

A SQLite column declared BIGINT PRIMARY KEY is not the rowid: the table is a rowid
B-tree plus a second B-tree for the key, and every insert writes both (WAL frames
and CPU on the hot path). A single integer key declared INTEGER is the rowid
itself; a table with a composite or text key is stored in its key's B-tree alone
(WITHOUT ROWID). Nothing changes on PostgreSQL, and no value changes on SQLite
(its INTEGER holds 64 bits).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> its single integer key (becomes the rowid)
ROWID_KEYS = {
    "journal": "seq",
    "accounts": "account_id",
    "orders": "order_id",
    "trades": "trade_id",
    "snapshots": "seq",
}
# tables with a composite or text key (stored in the key's B-tree alone)
KEYED = ("api_keys", "fills", "balances", "ledger", "funding", "funding_payments",
         "liquidations", "market_states")


def _rebuild(to_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    new_type, old_type = (
        (sa.Integer(), sa.BigInteger()) if to_rowid else (sa.BigInteger(), sa.Integer())
    )
    for table, key in ROWID_KEYS.items():
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(key, type_=new_type, existing_type=old_type,
                               existing_nullable=False)
    for table in KEYED:
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_with_rowid": not to_rowid}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
