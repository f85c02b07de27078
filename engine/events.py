"""Events: what a command did. Immutable; the engine returns them, it never calls back.

Projections (database tables), market data and private streams are all built
from these events alone. An `OrderUpdate` carries the whole order after the
change, so a consumer never needs engine state to render it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.types import (
    LedgerReason,
    MarketState,
    OrderStatus,
    OrderType,
    Reject,
    Side,
    StpMode,
    TimeInForce,
)


@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class OrderView:
    order_id: int
    account_id: int
    client_order_id: str | None
    market: str
    side: Side
    type: OrderType
    tif: TimeInForce
    price: int | None
    trigger_price: int | None
    size: int
    filled: int
    filled_notional: int  # quote atomic units, for the average fill price
    status: OrderStatus
    reduce_only: bool
    stp: StpMode
    expire_ts: int | None
    created_ts: int
    updated_ts: int
    cancel_reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.size - self.filled if self.status.is_live else 0


@dataclass(frozen=True, slots=True)
class AccountCreated(Event):
    account_id: int
    name: str
    tier: int
    ts: int


@dataclass(frozen=True, slots=True)
class ApiKeyCreated(Event):
    account_id: int
    api_key: str
    api_secret: str
    permissions: tuple[str, ...]
    label: str
    ts: int


@dataclass(frozen=True, slots=True)
class ApiKeyRevoked(Event):
    account_id: int
    api_key: str


@dataclass(frozen=True, slots=True)
class AccountSettingsChanged(Event):
    account_id: int
    stp: StpMode
    auto_borrow: bool
    tier: int


@dataclass(frozen=True, slots=True)
class Transfer(Event):
    """One double-entry movement: `amount` of `asset` from one account to another."""

    transfer_id: int
    asset: str
    from_account: int
    to_account: int
    amount: int
    reason: LedgerReason
    ref: str  # what caused it: "trade:17", "deposit:dep-1", ...
    from_balance: int  # balances after the movement
    to_balance: int
    ts: int


@dataclass(frozen=True, slots=True)
class IdempotentReplay(Event):
    """A deposit/withdrawal id seen before: the original transfer, nothing changed."""

    original: Transfer


@dataclass(frozen=True, slots=True)
class Rejected(Event):
    reason: Reject
    account_id: int | None = None
    detail: str = ""
    client_order_id: str | None = None
    order_id: int | None = None  # for duplicates: the live order holding the id


@dataclass(frozen=True, slots=True)
class OrderUpdate(Event):
    order: OrderView


@dataclass(frozen=True, slots=True)
class TradeEvent(Event):
    trade_id: int
    market: str
    price: int
    size: int
    taker_side: Side
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    maker_fee: int  # quote atomic units; negative = rebate paid to the maker
    taker_fee: int
    ts: int


@dataclass(frozen=True, slots=True)
class BookDelta(Event):
    """Aggregated levels changed by one command; size 0 removes the level."""

    market: str
    bids: tuple[tuple[int, int], ...]
    asks: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class MarketStateChanged(Event):
    market: str
    state: MarketState


@dataclass(frozen=True, slots=True)
class BatchItem(Event):
    """Marks where the events of batch item `index` begin."""

    index: int
