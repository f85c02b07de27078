"""Commands: the only way state changes. Frozen and slotted, so they are immutable messages.

Every command carries the `seq` and `ts` (ms) stamped by the sequencer; the engine
reads time from nothing else. Amounts and prices are integers in atomic units
(see `engine.markets`). Account and order ids are integers assigned by the
engine, so a replay assigns the same ids.
"""

from __future__ import annotations

from engine.message import message
from engine.types import CancelReason, MarketState, OrderType, Side, StpMode, TimeInForce


@message
class Command:
    seq: int = 0
    ts: int = 0
    # the request signature that authorised it and the timestamp (ms) that request claimed
    # (None if unknown): journaled for the replay window only, the engine never reads them
    sig: str | None = None
    sig_ts: int | None = None


def stamp(cmd: Command, seq: int, ts: int) -> None:
    """Give a command its `seq` and `ts`. Only the sequencer does this, once, before the
    command is applied, journaled or shown to anyone; from then on it never changes.
    (In place, because `dataclasses.replace` costs 8 us per command on the hot path.)"""
    object.__setattr__(cmd, "seq", seq)
    object.__setattr__(cmd, "ts", ts)


def attach_signature(cmd: Command, sig: str, sig_ts: int) -> None:
    """Record the signature of the request that carried `cmd` and the timestamp it
    claimed (journaled, so the replay window survives a restart: recovery reads the
    journal's recent signatures back and each stays spent until `sig_ts` + the longest
    receive window, as it did before the restart, even when the request was dated ahead
    of the server's clock; app/recovery.py). Only the edge that
    built the command does this, before handing it to the sequencer; in place for the
    same reason as `stamp`."""
    object.__setattr__(cmd, "sig", sig)
    object.__setattr__(cmd, "sig_ts", sig_ts)


@message
class CreateAccount(Command):
    name: str
    api_key: str
    api_secret: str
    permissions: tuple[str, ...] = ("read", "trade", "withdraw")
    tier: int = 0


@message
class CreateApiKey(Command):
    account_id: int
    api_key: str
    api_secret: str
    permissions: tuple[str, ...]
    label: str = ""


@message
class RevokeApiKey(Command):
    account_id: int
    api_key: str


@message
class SetAccountSettings(Command):
    account_id: int
    stp: StpMode | None = None
    auto_borrow: bool | None = None
    tier: int | None = None  # operator only; the API never lets a trader set it


@message
class Deposit(Command):
    account_id: int
    asset: str
    amount: int
    deposit_id: str


@message
class Withdraw(Command):
    account_id: int
    asset: str
    amount: int
    withdrawal_id: str
    allow_borrow: bool = False


@message
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


@message
class CancelOrder(Command):
    account_id: int
    order_id: int | None = None
    client_order_id: str | None = None
    reason: CancelReason = CancelReason.USER


@message
class CancelAll(Command):
    account_id: int
    market: str | None = None
    reason: CancelReason = CancelReason.USER


@message
class AmendOrder(Command):
    """Size down keeps priority; a price change or a size up loses it.

    `size` is the new total size (filled + remaining), as on the order object.
    """

    account_id: int
    order_id: int | None = None
    client_order_id: str | None = None
    price: int | None = None
    size: int | None = None


@message
class BatchPlace(Command):
    """Up to `max_batch` orders in one journal row; each item gets its own result."""

    account_id: int
    orders: tuple[PlaceOrder, ...]
    atomic: bool = False


@message
class BatchCancel(Command):
    account_id: int
    cancels: tuple[CancelOrder, ...]


@message
class SetMarketState(Command):
    market: str
    state: MarketState


@message
class Tick(Command):
    """Time passes: expire good-till-time orders due at or before `ts`."""


@message
class SetOraclePrices(Command):
    """Index prices from the oracle: (asset, quote atomic units per whole unit) pairs."""

    prices: tuple[tuple[str, int], ...]


@message
class SetDeadManSwitch(Command):
    """Cancel all of the account's orders unless this is sent again within `timeout_ms`
    (0 disarms)."""

    account_id: int
    timeout_ms: int


@message
class SetRiskPlan(Command):
    """The account's risk plan (engine/riskplan.py); it replaces the previous one."""

    account_id: int
    cure_window_ms: int = 0
    max_slice_ppm: int = 1_000_000
    order: tuple[str, ...] = ()
    hedge_groups: tuple[tuple[str, ...], ...] = ()
    keep_last: tuple[str, ...] = ()


@message
class OpenSession(Command):
    """A WebSocket session authenticated as `account_id`. It changes no state: it is
    journaled for the signature of the `auth` frame, so that frame cannot open another
    session after a restart either, and it records who logged in when."""

    account_id: int


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
    SetOraclePrices,
    SetDeadManSwitch,
    SetRiskPlan,
    OpenSession,
    Tick,
)
