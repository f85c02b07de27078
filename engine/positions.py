"""Perpetual positions: signed size, open notional, realized PnL (DESIGN sections 6, 8).

Rules owned here:
* `size` is signed base atomic units (long > 0); `open_notional` is the signed
  quote amount paid for the open part (same sign as `size`), so the entry price
  is `open_notional * 10**base_decimals / size`;
* a fill that adds to the position (or opens it) adds its notional; a fill
  against it closes `min(|fill|, |size|)` and realizes
  `sign(size) * closed_notional - removed`, where `removed` is the closed share
  of the open notional (rounded toward minus infinity; the last close removes
  exactly what is left, so nothing is lost); what is left of the fill opens a
  position the other way at the fill price;
* realized PnL moves in USDC between the account and the PnL clearing account,
  so money is conserved exactly and, with every market flat, the clearing
  account is back where it started;
* unrealized PnL at a mark is `floor(size * mark / 10**base_decimals) -
  open_notional` (rounded down: never overstated).
"""

from __future__ import annotations


class Position:
    __slots__ = ("market", "size", "open_notional", "realized")

    def __init__(self, market: str, size: int = 0, open_notional: int = 0, realized: int = 0):
        self.market = market
        self.size = size
        self.open_notional = open_notional
        self.realized = realized  # cumulative, for the account view

    def fill(self, qty: int, price: int, unit: int) -> int:
        """Apply a fill of signed `qty` (buy > 0) at `price`; returns the realized PnL."""
        realized = 0
        if self.size and (self.size > 0) != (qty > 0):
            closed = min(abs(qty), abs(self.size))
            if closed == abs(self.size):
                removed = self.open_notional
            else:
                removed = self.open_notional * closed // abs(self.size)
            closed_notional = price * closed // unit
            realized = (closed_notional if self.size > 0 else -closed_notional) - removed
            self.open_notional -= removed
            self.size += closed if qty > 0 else -closed
            qty += -closed if qty > 0 else closed
        if qty:
            notional = price * abs(qty) // unit
            self.open_notional += notional if qty > 0 else -notional
            self.size += qty
        self.realized += realized
        return realized

    def unrealized(self, mark: int, unit: int) -> int:
        return self.size * mark // unit - self.open_notional

    def entry_price(self, unit: int) -> int | None:
        return self.open_notional * unit // self.size if self.size else None


def mark_price(
    index: int | None, best_bid: int | None, best_ask: int | None, basis: int = 0
) -> int | None:
    """median(index + basis, best bid, best ask) clamped to index +/- 10%, where `basis`
    is the EMA of mid - index (engine/funding.py); the index alone when a side of the
    book is empty (DESIGN section 8)."""
    if index is None:
        return None
    if best_bid is None or best_ask is None:
        return index
    median = sorted((index + basis, best_bid, best_ask))[1]
    low, high = index - index // 10, index + index // 10
    return min(max(median, low), high)
