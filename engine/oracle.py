"""Index prices from the oracle, and when they go stale (DESIGN section 8).

Rules owned here:
* an index price is an integer of quote (USDC) atomic units per ONE WHOLE unit of
  the asset, like a market price; the quote asset has no index (it is 1);
* a price is fresh for `stale_ms` after the `ts` of the command that set it; at
  `ts >= set_ts + stale_ms` it is stale (a perp on that asset trades
  reduce-only and liquidation pauses) until the next price arrives;
* staleness is decided from command timestamps only (the sequencer's Tick
  arrives at `next_deadline()`), so a replay goes stale at the same seq.
"""

from __future__ import annotations


class IndexPrice:
    """The last index of one asset: price, when it was set, and whether it went stale."""

    __slots__ = ("asset", "price", "ts", "stale")

    def __init__(self, asset: str, price: int, ts: int, stale: bool = False) -> None:
        self.asset = asset
        self.price = price
        self.ts = ts
        self.stale = stale


class Oracle:
    __slots__ = ("stale_ms", "prices", "deadline")

    def __init__(self, stale_ms: int) -> None:
        self.stale_ms = stale_ms
        self.prices: dict[str, IndexPrice] = {}
        # The earliest ts at which a fresh price goes stale (None: nothing fresh).
        # The engine compares every command's ts with it; nothing else runs per command.
        self.deadline: int | None = None

    def set(self, asset: str, price: int, ts: int) -> IndexPrice:
        entry = self.prices.get(asset)
        if entry is None:
            entry = self.prices[asset] = IndexPrice(asset, price, ts)
        else:
            entry.price, entry.ts, entry.stale = price, ts, False
        self._update_deadline()
        return entry

    def restore(self, asset: str, price: int, ts: int, stale: bool) -> None:
        self.prices[asset] = IndexPrice(asset, price, ts, stale)
        self._update_deadline()

    def index(self, asset: str) -> int | None:
        """The fresh index of `asset`, or None when it has none or it is stale."""
        entry = self.prices.get(asset)
        return None if entry is None or entry.stale else entry.price

    def going_stale(self, ts: int) -> list[IndexPrice]:
        """Mark stale, and return in asset order, the prices whose time ran out at `ts`."""
        due = [
            e for e in self.prices.values() if not e.stale and ts >= e.ts + self.stale_ms
        ]
        due.sort(key=lambda e: e.asset)
        for e in due:
            e.stale = True
        self._update_deadline()
        return due

    def _update_deadline(self) -> None:
        fresh = [e.ts + self.stale_ms for e in self.prices.values() if not e.stale]
        self.deadline = min(fresh) if fresh else None
