"""Stop and take-profit orders waiting for the mark price (DESIGN section 5).

Rules owned here:
* a stop buy and a take-profit sell trigger when the mark rises to their trigger
  price or above; a stop sell and a take-profit buy when it falls to it or below;
* orders due at the same time trigger best trigger price first (the one the mark
  reached first), then oldest first;
* a cancelled or expired order is forgotten at once but its heap entry is removed
  lazily (skipped when popped); the heaps are rebuilt when dead entries outnumber
  the live ones, so placing and cancelling stops cannot grow them without bound.
"""

from __future__ import annotations

import heapq

from engine.types import OrderType, Side

STOP_TYPES = frozenset(
    {
        OrderType.STOP_MARKET,
        OrderType.STOP_LIMIT,
        OrderType.TAKE_PROFIT_MARKET,
        OrderType.TAKE_PROFIT_LIMIT,
    }
)
LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT})


def triggers_on_rise(type_: OrderType, side: Side) -> bool:
    """True when the order waits for the mark to rise to its trigger (stop buy, TP sell)."""
    stop = type_ is OrderType.STOP_MARKET or type_ is OrderType.STOP_LIMIT
    return stop == (side is Side.BUY)


class TriggerBook:
    """One market's waiting orders: (trigger, order id) heaps, rising and falling."""

    __slots__ = ("rising", "falling", "ids")

    def __init__(self) -> None:
        self.rising: list[tuple[int, int]] = []  # min-heap of (trigger, order id)
        self.falling: list[tuple[int, int]] = []  # min-heap of (-trigger, order id)
        self.ids: set[int] = set()  # the orders still waiting

    def add(self, order_id: int, trigger: int, on_rise: bool) -> None:
        self.ids.add(order_id)
        if on_rise:
            heapq.heappush(self.rising, (trigger, order_id))
        else:
            heapq.heappush(self.falling, (-trigger, order_id))

    def forget(self, order_id: int) -> None:
        """The order no longer waits (cancelled, expired)."""
        self.ids.discard(order_id)
        ids = self.ids
        if len(self.rising) + len(self.falling) > 2 * len(ids) + 64:
            self.rising = [e for e in self.rising if e[1] in ids]
            self.falling = [e for e in self.falling if e[1] in ids]
            heapq.heapify(self.rising)
            heapq.heapify(self.falling)

    def __bool__(self) -> bool:
        return bool(self.ids)

    def due(self, mark: int) -> list[tuple[int, int]]:
        """Pop every (trigger, order id) the mark has reached, in triggering order."""
        out: list[tuple[int, int]] = []
        rising, falling, ids = self.rising, self.falling, self.ids
        while rising and rising[0][0] <= mark:
            trigger, oid = heapq.heappop(rising)
            if oid in ids:
                ids.discard(oid)
                out.append((trigger, oid))
        while falling and -falling[0][0] >= mark:
            neg, oid = heapq.heappop(falling)
            if oid in ids:
                ids.discard(oid)
                out.append((-neg, oid))
        return out
