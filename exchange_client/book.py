"""Local order books fed from the WebSocket book channel; no I/O (sans-I/O core).

Rules owned here:
* A ``book_delta`` must have ``prev_seq`` equal to the last applied ``seq`` (else
  ``BookGapError``); after every snapshot or delta the checksum of the local book
  must equal the message's ``checksum`` (else ``BookChecksumError``). Size "0"
  removes a level.
* ``BookSet`` follows several markets on one connection. A book that breaks (gap or
  checksum mismatch) is dropped and marked as waiting: ``feed`` returns its market
  so the front end resubscribes (``unsubscribe`` then ``subscribe`` ``book:M``: the
  server sends a fresh snapshot only to a new subscription), and every delta for
  that market is ignored until the snapshot arrives. After a reconnect, ``reset``
  marks every book as waiting.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from .checksum import CHECKSUM_DEPTH, book_checksum

BOOK_TYPES = frozenset({"book_snapshot", "book_delta"})

class BookGapError(Exception):
    """A delta's ``prev_seq`` does not match the last applied ``seq`` (resync needed)."""


class BookChecksumError(Exception):
    """The local book's checksum differs from the one the server sent (resync needed)."""


class _Side:
    """One side of the book keyed by Decimal price; ``descending`` for bids."""

    def __init__(self, descending: bool) -> None:
        self.sign = -1 if descending else 1
        self.keys: list[Decimal] = []  # sort keys (price * sign), ascending
        self.levels: dict[Decimal, list[str]] = {}

    def clear(self) -> None:
        self.keys.clear()
        self.levels.clear()

    def set(self, price: str, size: str) -> None:
        key = Decimal(price) * self.sign
        if Decimal(size) == 0:
            if self.levels.pop(key, None) is not None:
                del self.keys[bisect.bisect_left(self.keys, key)]
            return
        if key not in self.levels:
            bisect.insort(self.keys, key)
        self.levels[key] = [price, size]

    def top(self, n: int | None = None) -> list[list[str]]:
        keys = self.keys if n is None else self.keys[:n]
        return [list(self.levels[k]) for k in keys]


class BookFollower:
    """Pure local book for one market fed with ``book_snapshot``/``book_delta`` messages."""

    def __init__(self, market: str | None = None, verify_checksum: bool = True) -> None:
        self.market = market
        self.verify_checksum = verify_checksum
        self.seq: int | None = None
        self.messages_verified = 0
        self._bids = _Side(descending=True)
        self._asks = _Side(descending=False)

    @property
    def bids(self) -> list[list[str]]:
        """All known bid levels, best (highest) first, as [price, size] strings."""
        return self._bids.top()

    @property
    def asks(self) -> list[list[str]]:
        """All known ask levels, best (lowest) first, as [price, size] strings."""
        return self._asks.top()

    def checksum(self) -> int:
        return book_checksum(self._bids.top(CHECKSUM_DEPTH), self._asks.top(CHECKSUM_DEPTH))

    def apply(self, message: Mapping[str, Any]) -> None:
        """Apply one message; raises BookGapError / BookChecksumError / ValueError."""
        mtype = message.get("type")
        market = message.get("market")
        if self.market is not None and market is not None and market != self.market:
            raise ValueError(f"message for {market!r}, following {self.market!r}")
        if mtype == "book_snapshot":
            self.market = self.market or market
            self._bids.clear()
            self._asks.clear()
        elif mtype == "book_delta":
            if self.seq is None or message.get("prev_seq") != self.seq:
                raise BookGapError(
                    f"{self.market}: prev_seq {message.get('prev_seq')} != last seq {self.seq}")
        else:
            raise ValueError(f"not a book message: {mtype!r}")
        for price, size in message.get("bids", ()):
            self._bids.set(price, size)
        for price, size in message.get("asks", ()):
            self._asks.set(price, size)
        self.seq = message["seq"]
        expected = message.get("checksum")
        if self.verify_checksum and expected is not None:
            actual = self.checksum()
            if actual != int(expected):
                raise BookChecksumError(
                    f"{self.market} seq {self.seq}: checksum {actual} != {expected}")
            self.messages_verified += 1


class BookSet:
    """The books of several markets on one connection, with resync bookkeeping."""

    def __init__(self, markets: Iterable[str], verify_checksum: bool = True) -> None:
        self.books = {m: BookFollower(m, verify_checksum) for m in markets}
        self.waiting: set[str] = set(self.books)  # no snapshot yet (or broken since)
        self.resyncs = 0  # books dropped for a gap or a checksum mismatch
        self.last_error: Exception | None = None
        self._failures: dict[str, int] = {}  # breaks in a row, per market

    @property
    def channels(self) -> list[str]:
        return [f"book:{m}" for m in self.books]

    def __getitem__(self, market: str) -> BookFollower:
        return self.books[market]

    def ready(self, market: str) -> bool:
        """True when the market's book is in sync (a snapshot and an unbroken chain)."""
        return market not in self.waiting

    def reset(self) -> None:
        """The connection was replaced: every book waits for its new snapshot."""
        self.waiting = set(self.books)

    def feed(self, message: Mapping[str, Any]) -> str | None:
        """Apply a book message; returns a market whose book must be resubscribed."""
        market = message.get("market")
        book = self.books.get(market) if isinstance(market, str) else None
        if book is None or message.get("type") not in BOOK_TYPES:
            return None
        if market in self.waiting:
            if message["type"] != "book_snapshot":
                return None  # a delta from before the resubscription: the snapshot replaces it
            self.waiting.discard(market)
        try:
            book.apply(message)
        except (BookGapError, BookChecksumError) as exc:
            assert isinstance(market, str)
            self.waiting.add(market)
            self.resyncs += 1
            self.last_error = exc
            self._failures[market] = self._failures.get(market, 0) + 1
            book.seq = None
            return market
        self._failures.pop(str(market), None)
        return None

    def resync_delay(self, market: str) -> float:
        """Seconds to wait before resubscribing: none the first time, then doubling from
        0.1 s to 5 s while the market's book keeps breaking (say, a snapshot that never
        matches its checksum), so a stream does not spin on it."""
        n = self._failures.get(market, 0)
        return 0.0 if n <= 1 else min(0.1 * 2 ** (n - 2), 5.0)
