"""Persistence: the journal and its projections. All SQL of the project lives in this package.

Rule owned here: the journal is the source of truth and every other table is a
projection of engine events, written in the same transaction as the journal rows.
"""

from app.store.store import JournalCorrupt, Store

__all__ = ["JournalCorrupt", "Store"]
