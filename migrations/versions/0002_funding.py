"""Funding history per perp market and funding payments per account.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _big(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "funding",
        sa.Column("market", sa.String(), primary_key=True),
        sa.Column("ts", sa.BigInteger(), primary_key=True, autoincrement=False),
        _big("rate"), _big("premium"), _big("index_price"), _big("samples"),
        _big("open_interest"), _big("dust"), _big("seq"),
    )  # fmt: skip
    op.create_table(
        "funding_payments",
        sa.Column("account_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("ts", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("market", sa.String(), primary_key=True),
        _big("size"), _big("index_price"), _big("rate"), _big("amount"), _big("seq"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("funding_payments")
    op.drop_table("funding")
