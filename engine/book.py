"""The order book of one market: price levels on two ladders, FIFO queues per level.

Rules owned here: price-time priority (best price first, then arrival order at
that price) and O(1) removal of any resting order (each level is a doubly linked
list). The book only stores orders; what a match does to money is decided in
`engine.exchange`. Every level whose total changed is remembered until
`take_delta()` so one `BookDelta` per command can be emitted.

A ladder keeps its levels in a dict by price and their keys in a plain sorted list
(`bisect`, in C), the best level last so that taking it is a `pop()`: bids keyed by
price, asks by minus the price. (A SortedDict's every call ran interpreted Python,
even from the compiled engine: 6% of its instructions in the engine benchmark.)
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from typing import Final

from engine.events import OrderView
from engine.types import OrderStatus, OrderType, Side, StpMode, TimeInForce

# The data an order carries: what a snapshot stores (the links are rebuilt on restore).
ORDER_FIELDS: Final = (
    "order_id",
    "account_id",
    "client_order_id",
    "market",
    "side",
    "type",
    "tif",
    "price",
    "trigger_price",
    "size",
    "filled",
    "filled_notional",
    "status",
    "reduce_only",
    "stp",
    "expire_ts",
    "created_ts",
    "updated_ts",
    "cancel_reason",
    "hold",
    "fee_basis",
    "fees_paid",
    "rebate_basis",
    "rebates_got",
)
# A finished order is kept as the fields of the OrderView its last update carried, in a
# plain tuple; a snapshot writes it as these first fields of ORDER_FIELDS.
DONE_FIELDS: Final = 19  # ORDER_FIELDS[:DONE_FIELDS] == OrderView._fields

# Derived, not stored: the book links and what the order adds to its account's margin
# aggregate (engine/exchange.py `_track`), rebuilt on restore.
ORDER_LINKS: Final = ("prev", "next", "level", "contrib")


class Order:
    """A live or finished order, mutable inside the engine only (exported as `OrderView`)."""

    __slots__ = ORDER_FIELDS + ORDER_LINKS

    def __init__(
        self,
        order_id: int,
        account_id: int,
        client_order_id: str | None,
        market: str,
        side: Side,
        type_: OrderType,
        tif: TimeInForce,
        price: int,
        size: int,
        stp: StpMode,
        expire_ts: int | None,
        ts: int,
        reduce_only: bool = False,
        trigger_price: int | None = None,
    ) -> None:
        self.order_id = order_id
        self.account_id = account_id
        self.client_order_id = client_order_id
        self.market = market
        self.side = side
        self.type = type_
        self.tif = tif
        self.price = price
        self.trigger_price = trigger_price
        self.size = size
        self.filled = 0
        self.filled_notional = 0
        self.status = OrderStatus.OPEN
        self.reduce_only = reduce_only
        self.stp = stp
        self.expire_ts = expire_ts
        self.created_ts = ts
        self.updated_ts = ts
        self.cancel_reason: str | None = None
        self.hold = 0  # amount of the hold asset this order reserves
        self.fee_basis = 0  # sum of notional * positive ppm over fills
        self.fees_paid = 0
        self.rebate_basis = 0  # sum of notional * |negative ppm| over fills
        self.rebates_got = 0
        self.prev: Order | None = None
        self.next: Order | None = None
        self.level: Level | None = None
        self.contrib: tuple[int, int, int] | None = None

    @property
    def remaining(self) -> int:
        return self.size - self.filled

    def view(self) -> OrderView:
        # tuple.__new__ straight away: calling the class would run the NamedTuple's
        # __new__, generated Python that stays interpreted in the compiled engine
        return tuple.__new__(OrderView, (
            self.order_id,
            self.account_id,
            self.client_order_id,
            self.market,
            self.side,
            self.type,
            self.tif,
            self.price,
            self.trigger_price,
            self.size,
            self.filled,
            self.filled_notional,
            self.status,
            self.reduce_only,
            self.stp,
            self.expire_ts,
            self.created_ts,
            self.updated_ts,
            self.cancel_reason,
        ))  # fmt: skip


class Level:
    __slots__ = ("price", "head", "tail", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0
        self.count = 0

    def orders(self) -> Iterator[Order]:
        o = self.head
        while o is not None:
            nxt = o.next
            yield o
            o = nxt


class Ladder:
    """One side of a book: price -> Level, iterated from the best price."""

    __slots__ = ("sign", "keys", "levels")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # 1 for bids (best = highest), -1 for asks (best = lowest)
        self.keys: list[int] = []  # sign * price, ascending: the best level is the last
        self.levels: dict[int, Level] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, price: int) -> Level | None:
        return self.levels.get(price)

    def best(self) -> Level | None:
        keys = self.keys
        return self.levels[keys[-1] * self.sign] if keys else None

    def insert(self, level: Level) -> None:
        self.levels[level.price] = level
        insort(self.keys, level.price * self.sign)

    def delete(self, price: int) -> None:
        del self.levels[price]
        keys, key = self.keys, price * self.sign
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]

    def values(self) -> Iterator[Level]:
        """Levels from the best price outwards."""
        levels, sign = self.levels, self.sign
        return (levels[key * sign] for key in reversed(self.keys))


class Book:
    __slots__ = ("market", "bids", "asks", "dirty_bids", "dirty_asks")

    def __init__(self, market: str) -> None:
        self.market = market
        self.bids = Ladder(1)
        self.asks = Ladder(-1)
        self.dirty_bids: set[int] = set()
        self.dirty_asks: set[int] = set()

    # -- reading -----------------------------------------------------------
    def best(self, side: Side) -> Level | None:
        return (self.bids if side is Side.BUY else self.asks).best()

    def levels_from_best(self, side: Side) -> Iterator[Level]:
        return (self.bids if side is Side.BUY else self.asks).values()

    def depth(self, side: Side) -> list[tuple[int, int]]:
        return [(lv.price, lv.total) for lv in self.levels_from_best(side)]

    # -- writing -----------------------------------------------------------
    def add(self, order: Order) -> None:
        """Append at the tail of its price level (lowest priority at that price)."""
        ladder = self.bids if order.side is Side.BUY else self.asks
        level = ladder.get(order.price)
        if level is None:
            level = Level(order.price)
            ladder.insert(level)
        order.prev = level.tail
        order.next = None
        if level.tail is None:
            level.head = order
        else:
            level.tail.next = order
        level.tail = order
        level.total += order.remaining
        level.count += 1
        order.level = level
        self._touch(order.side, order.price)

    def remove(self, order: Order) -> None:
        """Unlink a resting order in O(1); its level goes when empty."""
        level = order.level
        assert level is not None, "order is not resting"
        if order.prev is None:
            level.head = order.next
        else:
            order.prev.next = order.next
        if order.next is None:
            level.tail = order.prev
        else:
            order.next.prev = order.prev
        level.total -= order.remaining
        level.count -= 1
        order.prev = order.next = None
        order.level = None
        if level.count == 0:
            (self.bids if order.side is Side.BUY else self.asks).delete(level.price)
        self._touch(order.side, order.price)

    def shrink(self, order: Order, qty: int) -> None:
        """The resting order's remaining shrinks by qty (fill or size decrease); keeps priority."""
        level = order.level
        assert level is not None
        level.total -= qty
        self._touch(order.side, order.price)

    def _touch(self, side: Side, price: int) -> None:
        (self.dirty_bids if side is Side.BUY else self.dirty_asks).add(price)

    def take_delta(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """Levels changed since the last call, as (price, total) with 0 = removed."""
        bids = tuple(
            (p, lv.total if (lv := self.bids.get(p)) is not None else 0)
            for p in sorted(self.dirty_bids, reverse=True)
        )
        asks = tuple(
            (p, lv.total if (lv := self.asks.get(p)) is not None else 0)
            for p in sorted(self.dirty_asks)
        )
        self.dirty_bids.clear()
        self.dirty_asks.clear()
        return bids, asks

    def resting_orders(self) -> Iterator[Order]:
        """Every resting order, bids best-first then asks best-first, in queue order."""
        for side in (Side.BUY, Side.SELL):
            for level in self.levels_from_best(side):
                yield from level.orders()
