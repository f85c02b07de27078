"""Commands: the only way state changes. Frozen and slotted, so they are immutable messages.

Every command carries the `seq` and `ts` (ms) stamped by the sequencer; the engine
reads time from nothing else. Amounts and prices are integers in atomic units
(see `engine.markets`). Account and order ids are integers assigned by the
engine, so a replay assigns the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.types import CancelReason, MarketState, OrderType, Side, StpMode, TimeInForce


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    seq: int = 0
    ts: int = 0
    sig: str | None = None  # the request signature that authorised it (replay window)


def stamp(cmd: Command, seq: int, ts: int) -> None:
    """Give a command its `seq` and `ts`. Only the sequencer does this, once, before the
    command is applied, journaled or shown to anyone; from then on it never changes.
    (In place, because `dataclasses.replace` costs 8 us per command on the hot path.)"""
    object.__setattr__(cmd, "seq", seq)
    object.__setattr__(cmd, "ts", ts)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccount(Command):
    name: str
    api_key: str
    api_secret: str
    permissions: tuple[str, ...] = ("read", "trade", "withdraw")
    tier: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateApiKey(Command):
    account_id: int
    api_key: str
    api_secret: str
    permissions: tuple[str, ...]
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeApiKey(Command):
    account_id: int
    api_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAccountSettings(Command):
    account_id: int
    stp: StpMode | None = None
    auto_borrow: bool | None = None
    tier: int | None = None  # operator only; the API never lets a trader set it


@dataclass(frozen=True, slots=True, kw_only=True)
class Deposit(Command):
    account_id: int
    asset: str
    amount: int
    deposit_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdraw(Command):
    account_id: int
    asset: str
    amount: int
    withdrawal_id: str
    allow_borrow: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaceOrder(Command):
    account_id: int
    market: str
    side: Side
    size: int
    type: OrderType = OrderType.LIMIT
    price: int | None = None  # limit price; for market orders the protective limit
    tif: TimeInForce = TimeInForce.GTC
    expire_ts: int | None = None  # GTT only
    client_order_id: str | None = None
    stp: StpMode | None = None  # None: the account's default
    reduce_only: bool = False
    trigger_price: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder(Command):
    account_id: int
    order_id: int | None = None
    client_order_id: str | None = None
    reason: CancelReason = CancelReason.USER


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelAll(Command):
    account_id: int
    market: str | None = None
    reason: CancelReason = CancelReason.USER


@dataclass(frozen=True, slots=True, kw_only=True)
class AmendOrder(Command):
    """Size down keeps priority; a price change or a size up loses it.

    `size` is the new total size (filled + remaining), as on the order object.
    """

    account_id: int
    order_id: int | None = None
    client_order_id: str | None = None
    price: int | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPlace(Command):
    """Up to `max_batch` orders in one journal row; each item gets its own result."""

    account_id: int
    orders: tuple[PlaceOrder, ...]
    atomic: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchCancel(Command):
    account_id: int
    cancels: tuple[CancelOrder, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetMarketState(Command):
    market: str
    state: MarketState


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Command):
    """Time passes: expire good-till-time orders due at or before `ts`."""


ALL_COMMANDS: tuple[type[Command], ...] = (
    CreateAccount,
    CreateApiKey,
    RevokeApiKey,
    SetAccountSettings,
    Deposit,
    Withdraw,
    PlaceOrder,
    CancelOrder,
    CancelAll,
    AmendOrder,
    BatchPlace,
    BatchCancel,
    SetMarketState,
    Tick,
)
