"""Liquidation slices and bad debt, for the insurance fund's history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _opt(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=True)


def upgrade() -> None:
    op.create_table(
        "liquidations",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        _opt("step"),
        sa.Column("market", sa.String(), nullable=True),
        sa.Column("asset", sa.String(), nullable=True),
        sa.Column("side", sa.String(), nullable=True),
        _opt("size"), _opt("limit_price"), _opt("book_size"), _opt("book_notional"),
        _opt("backstop_size"), _opt("backstop_notional"), _opt("fee"), _opt("amount"),
        _opt("insurance"), _opt("socialized"), _opt("suppliers"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("liquidations")
