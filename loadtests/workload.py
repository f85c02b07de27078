"""A deterministic, seeded order workload shared by the benchmarks.

`generate(n_ops, seed)` returns a list of `Op`: plain named tuples of ints and
short strings, independent of any order-book library, so the same list can
drive our engine and the PyPI peers. Units are abstract: prices in ticks, sizes
in lots (the engine benchmark maps them to BTC-USDC: 1 tick = 0.1 USDC, 1 lot =
0.0001 BTC).

Each op is drawn with probabilities 62% new resting limit order, 8% marketable
limit IOC order, 30% cancel (for 200,000 ops and seed 1: 62.0 / 7.9 / 30.1%).
Resting sizes are 1 + exp(mean 10) lots, IOC sizes 1 + exp(mean 45) lots (about
4-5 resting orders), which keeps the book roughly stationary at 500-1,500 resting
orders. The generator simulates a plain price-time book while it generates, so:

* every resting order really rests: its price is drawn around a slowly
  random-walking fair mid (mostly 1-5 ticks away, both sides) and then clamped
  one tick behind the opposite best, so it never crosses;
* every IOC order crosses: its limit is the opposite best plus 0-3 ticks (if the
  opposite side were empty it would just expire unfilled; with seed 1 that never
  happens in 200,000 ops);
* every cancel targets an order that is live at that moment (chosen uniformly
  among the live orders), so **0% of cancels hit filled or cancelled orders**;
* accounts 0-15 only place resting orders and accounts 16-19 only send IOC
  orders, so no order ever meets an order of its own account: self-trade
  prevention never fires and every price-time book (with or without STP)
  produces exactly the same trades. `Outcome` records what that is.

Order ids: the k-th placement (limit or IOC) gets id k, starting at 1, which is
what our engine assigns when nothing is refused (the benchmark checks that).
"""

from __future__ import annotations

import random
from collections import deque
from typing import NamedTuple

from sortedcontainers import SortedDict

LIMIT = "limit"  # good-till-cancelled limit order that rests (never crosses)
IOC = "ioc"  # limit immediate-or-cancel order that crosses the spread
CANCEL = "cancel"  # cancel of a live order, by id
BUY = "buy"
SELL = "sell"

N_ACCOUNTS = 20
MAKER_ACCOUNTS = 16  # accounts 0..15 rest orders; 16..19 take
START_MID = 600_000  # ticks: 60,000.0 USDC at 0.1 USDC per tick
P_LIMIT, P_IOC = 0.62, 0.08  # the rest (0.30) are cancels
MID_STEP_PROB = 0.05  # per op, the fair mid moves one tick up or down with this probability
MAKER_OFFSET_MEAN = 3.0  # resting price = mid -/+ (1 + exp(mean)) ticks, capped
MAKER_OFFSET_CAP = 60
MAKER_SIZE_MEAN = 10.0  # lots: 1 + exp(mean), capped
MAKER_SIZE_CAP = 500
TAKER_SIZE_MEAN = 45.0  # lots, ~4.5 resting orders: the book stays about stationary (~1k orders)
TAKER_SIZE_CAP = 1_000
TAKER_MAX_THROUGH = 3  # an IOC limit is up to this many ticks through the opposite best


class Op(NamedTuple):
    kind: str  # LIMIT, IOC or CANCEL
    order_id: int  # LIMIT/IOC: the id this order gets; CANCEL: the id of the target
    account: int  # 0 .. N_ACCOUNTS - 1 (CANCEL: the target's account)
    side: str  # BUY or SELL (CANCEL: the target's side)
    price: int  # ticks (CANCEL: the target's price)
    size: int  # lots (CANCEL: the target's remaining size at the time of the cancel)


class Outcome(NamedTuple):
    """What any correct price-time book ends with after the ops (the generator's model)."""

    n_limit: int
    n_ioc: int
    n_cancel: int
    trades: int  # fills: one per (taker, maker) pair that traded
    filled_lots: int
    live: dict[int, int]  # order id -> remaining lots of every resting order at the end
    live_bid_lots: int
    live_ask_lots: int
    max_live: int  # most resting orders at any time
    stale_cancels: int  # cancels whose target was no longer live (0 by construction)


class _Model:
    """A plain price-time book (FIFO per level, lazy deletion) used only to generate."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # price -> [deque of order ids, live count]
        self.asks: SortedDict = SortedDict()
        self.orders: dict[int, list[int]] = {}  # id -> [is_buy (0/1), price, remaining, account]
        self.live_ids: list[int] = []  # for a uniform choice; swap-remove via `pos`
        self.pos: dict[int, int] = {}
        self.trades = 0
        self.filled = 0

    def best_bid(self) -> int | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    def _forget(self, oid: int) -> None:
        del self.orders[oid]
        i = self.pos.pop(oid)
        last = self.live_ids.pop()
        if last != oid:
            self.live_ids[i] = last
            self.pos[last] = i

    def rest(self, oid: int, is_buy: bool, price: int, size: int, account: int) -> None:
        levels = self.bids if is_buy else self.asks
        level = levels.get(price)
        if level is None:
            level = levels[price] = [deque(), 0]
        level[0].append(oid)
        level[1] += 1
        self.orders[oid] = [int(is_buy), price, size, account]
        self.pos[oid] = len(self.live_ids)
        self.live_ids.append(oid)

    def cancel(self, oid: int) -> None:
        is_buy, price, _, _ = self.orders[oid]
        self._forget(oid)  # its id stays queued: skipped and dropped when it reaches the head
        levels = self.bids if is_buy else self.asks
        level = levels[price]
        level[1] -= 1
        if level[1] == 0:
            del levels[price]

    def take(self, is_buy: bool, limit: int, size: int) -> None:
        """Match an IOC order; its remainder is dropped."""
        levels = self.asks if is_buy else self.bids
        while size and levels:
            price, level = levels.peekitem(0 if is_buy else -1)
            if price > limit if is_buy else price < limit:
                break
            queue = level[0]
            while size and queue:
                oid = queue[0]
                maker = self.orders.get(oid)
                if maker is None:  # cancelled earlier
                    queue.popleft()
                    continue
                q = min(size, maker[2])
                maker[2] -= q
                size -= q
                self.trades += 1
                self.filled += q
                if maker[2] == 0:
                    queue.popleft()
                    level[1] -= 1
                    self._forget(oid)
            if level[1] == 0:
                del levels[price]


def _bounded_exp(rng: random.Random, mean: float, cap: int) -> int:
    return min(1 + int(rng.expovariate(1.0 / mean)), cap)


def generate_with_outcome(n_ops: int, seed: int) -> tuple[list[Op], Outcome]:
    """The ops and the outcome any correct price-time book must reach."""
    rng = random.Random(seed)
    book = _Model()
    ops: list[Op] = []
    mid = START_MID
    next_id = 1
    n_limit = n_ioc = n_cancel = 0
    max_live = 0
    for _ in range(n_ops):
        if rng.random() < MID_STEP_PROB:
            mid += 1 if rng.random() < 0.5 else -1
        r = rng.random()
        if r >= P_LIMIT + P_IOC and not book.live_ids:
            r = 0.0  # nothing to cancel yet (only at the very start): place instead
        if r < P_LIMIT:
            is_buy = rng.random() < 0.5
            offset = _bounded_exp(rng, MAKER_OFFSET_MEAN, MAKER_OFFSET_CAP)
            size = _bounded_exp(rng, MAKER_SIZE_MEAN, MAKER_SIZE_CAP)
            if is_buy:
                price = mid - offset
                ask = book.best_ask()
                if ask is not None:
                    price = min(price, ask - 1)
            else:
                price = mid + offset
                bid = book.best_bid()
                if bid is not None:
                    price = max(price, bid + 1)
            price = max(price, 1)
            account = rng.randrange(MAKER_ACCOUNTS)
            ops.append(Op(LIMIT, next_id, account, BUY if is_buy else SELL, price, size))
            book.rest(next_id, is_buy, price, size, account)
            next_id += 1
            n_limit += 1
            max_live = max(max_live, len(book.live_ids))
        elif r < P_LIMIT + P_IOC:
            bid, ask = book.best_bid(), book.best_ask()
            # lean towards the side that pulls the book back to the fair mid
            book_mid = (bid + ask) / 2 if bid is not None and ask is not None else mid
            is_buy = rng.random() < (0.7 if book_mid < mid else 0.3 if book_mid > mid else 0.5)
            through = rng.randint(0, TAKER_MAX_THROUGH)
            if is_buy:
                price = ask + through if ask is not None else mid - 1
            else:
                price = max(bid - through, 1) if bid is not None else mid + 1
            size = _bounded_exp(rng, TAKER_SIZE_MEAN, TAKER_SIZE_CAP)
            account = MAKER_ACCOUNTS + rng.randrange(N_ACCOUNTS - MAKER_ACCOUNTS)
            ops.append(Op(IOC, next_id, account, BUY if is_buy else SELL, price, size))
            book.take(is_buy, price, size)
            next_id += 1
            n_ioc += 1
        else:
            oid = book.live_ids[rng.randrange(len(book.live_ids))]
            buy, price, remaining, account = book.orders[oid]
            ops.append(Op(CANCEL, oid, account, BUY if buy else SELL, price, remaining))
            book.cancel(oid)
            n_cancel += 1
    live = {oid: o[2] for oid, o in sorted(book.orders.items())}
    outcome = Outcome(
        n_limit=n_limit, n_ioc=n_ioc, n_cancel=n_cancel, trades=book.trades,
        filled_lots=book.filled, live=live,
        live_bid_lots=sum(o[2] for o in book.orders.values() if o[0]),
        live_ask_lots=sum(o[2] for o in book.orders.values() if not o[0]),
        max_live=max_live, stale_cancels=0,
    )
    return ops, outcome


def generate(n_ops: int, seed: int) -> list[Op]:
    """`n_ops` ops: ~62% resting limits, ~8% crossing IOC limits, ~30% cancels of live orders."""
    return generate_with_outcome(n_ops, seed)[0]


def describe(ops: list[Op], outcome: Outcome) -> str:
    """One line on what the workload is."""
    n = len(ops) or 1
    return (
        f"{len(ops)} ops: {outcome.n_limit} resting limits ({100 * outcome.n_limit / n:.1f}%), "
        f"{outcome.n_ioc} crossing IOC ({100 * outcome.n_ioc / n:.1f}%), "
        f"{outcome.n_cancel} cancels ({100 * outcome.n_cancel / n:.1f}%, "
        f"{outcome.stale_cancels} of them stale); {outcome.trades} fills; "
        f"resting orders at the end {len(outcome.live)}, at most {outcome.max_live}"
    )
