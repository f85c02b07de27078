"""Drop the index of orders by (account, status).

It served one read, the account's open orders, and cost a B-tree leaf per trading
account in every group commit: each new order added an entry and each status change
moved it. Live orders are the engine's own state, so `GET /v1/orders?status=open` now
reads them from the engine (`Exchange.live_orders`), and nothing reads this index.
(Measured: replaying real group commits, SQLite spends 5-15% less CPU per commit
without it; BENCHMARKS.md, 2026-12-07.)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_orders_account_status", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_account_status", "orders", ["account_id", "status"])
