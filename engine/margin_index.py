"""Which accounts an index price move may have pushed below maintenance (DESIGN section 9).

Rules owned here:
* maintenance health is exactly linear in each asset's index price (the perp
  marks cancel out: a perp's unrealized PnL at its mark plus its shocked value
  depend on the index alone), so with health `H` and slopes `s_t` (health per
  unit of price) an account stays >= 0 while every asset moves against it by
  less than `x = H / sum_t |s_t| * P_t` of its price. Each asset with exposure
  gets a trigger at that relative move: `P_t * (1 - x)` when a fall hurts,
  `P_t * (1 + x)` when a rise does. No trigger crossed means no breach, however
  many assets move at once;
* an account is re-indexed whenever its portfolio may have lost value (it paid
  something or its position moved) and after every trigger that fires for it (a
  fired account leaves the index until then, so its triggers are always pushed
  again, even when recomputed to the same prices);
  money it receives only makes its triggers conservative;
* triggers are kept per asset in two heaps (falls, rises); an account's old
  entries are removed lazily (skipped when popped) and the heaps are rebuilt when
  dead entries outnumber live ones. A price update pops only crossed entries, so
  it costs per account that may have crossed, not per account that exists.
"""

from __future__ import annotations

import heapq


class BreachIndex:
    __slots__ = ("falls", "rises", "entries", "_heap_size", "_live")

    def __init__(self) -> None:
        self.falls: dict[str, list[tuple[int, int]]] = {}  # asset -> max-heap (-price, aid)
        self.rises: dict[str, list[tuple[int, int]]] = {}  # asset -> min-heap (price, aid)
        # account -> its live triggers: (asset, price, on_rise)
        self.entries: dict[int, tuple[tuple[str, int, bool], ...]] = {}
        self._heap_size = 0  # entries in the heaps, dead ones included
        self._live = 0  # entries in `entries`

    def put(self, account_id: int, triggers: tuple[tuple[str, int, bool], ...]) -> None:
        """Replace the account's triggers (none: it cannot breach on a price move)."""
        if not triggers:
            self.drop(account_id)
            return
        old = self.entries.get(account_id)
        if old == triggers:
            return
        self._live += len(triggers) - (len(old) if old is not None else 0)
        self.entries[account_id] = triggers
        for asset, price, on_rise in triggers:
            if on_rise:
                heapq.heappush(self.rises.setdefault(asset, []), (price, account_id))
            else:
                heapq.heappush(self.falls.setdefault(asset, []), (-price, account_id))
        self._heap_size += len(triggers)
        self._compact()

    def drop(self, account_id: int) -> None:
        old = self.entries.pop(account_id, None)
        if old is not None:
            self._live -= len(old)
            self._compact()

    def due(self, asset: str, price: int) -> set[int]:
        """Pop the triggers of `asset` that `price` has reached; the accounts they belong to
        leave the index (their other triggers go dead): the caller looks at each and puts it
        back, so a trigger recomputed to the same price is pushed again, never lost."""
        out: set[int] = set()
        entries = self.entries
        rises = self.rises.get(asset)
        while rises and rises[0][0] <= price:
            p, aid = heapq.heappop(rises)
            self._heap_size -= 1
            if (asset, p, True) in entries.get(aid, ()):
                out.add(aid)
        falls = self.falls.get(asset)
        while falls and -falls[0][0] >= price:
            neg, aid = heapq.heappop(falls)
            self._heap_size -= 1
            if (asset, -neg, False) in entries.get(aid, ()):
                out.add(aid)
        for aid in out:
            self._live -= len(entries.pop(aid))
        return out

    def _compact(self) -> None:
        if self._heap_size <= 2 * self._live + 64:
            return
        self.rebuild(self.entries)

    def rebuild(self, entries: dict[int, tuple[tuple[str, int, bool], ...]]) -> None:
        """The heaps from `entries` alone (restore, compaction)."""
        self.entries = dict(entries)
        self.falls, self.rises = {}, {}
        for aid, triggers in self.entries.items():
            for asset, price, on_rise in triggers:
                if on_rise:
                    self.rises.setdefault(asset, []).append((price, aid))
                else:
                    self.falls.setdefault(asset, []).append((-price, aid))
        for heap in [*self.falls.values(), *self.rises.values()]:
            heapq.heapify(heap)
        self._heap_size = self._live = sum(len(t) for t in self.entries.values())
