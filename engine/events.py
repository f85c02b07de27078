"""Events: what a command did. Immutable; the engine returns them, it never calls back.

Projections (database tables), market data and private streams are all built
from these events alone. An `OrderUpdate` carries the whole order after the
change, so a consumer never needs engine state to render it.

Events are NamedTuples: immutable like frozen dataclasses but about ten times
cheaper to build (a fill makes seven of them; see BENCHMARKS.md). Compare
events of the same type only: as tuples, two types with equal fields are equal.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from engine.types import (
    LedgerReason,
    MarginState,
    MarketState,
    OrderStatus,
    OrderType,
    Reject,
    Side,
    StpMode,
    TimeInForce,
)


class OrderView(NamedTuple):
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


class AccountCreated(NamedTuple):
    account_id: int
    name: str
    tier: int
    ts: int


class ApiKeyCreated(NamedTuple):
    account_id: int
    api_key: str
    api_secret: str
    permissions: tuple[str, ...]
    label: str
    ts: int


class ApiKeyRevoked(NamedTuple):
    account_id: int
    api_key: str


class AccountSettingsChanged(NamedTuple):
    account_id: int
    stp: StpMode
    auto_borrow: bool
    tier: int


class Transfer(NamedTuple):
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


class IdempotentReplay(NamedTuple):
    """A deposit/withdrawal id seen before: the original transfer, nothing changed."""

    original: Transfer


class Rejected(NamedTuple):
    reason: Reject
    account_id: int | None = None
    detail: str = ""
    client_order_id: str | None = None
    order_id: int | None = None  # for duplicates: the live order holding the id


class OrderUpdate(NamedTuple):
    order: OrderView


def order_update(o: OrderView) -> OrderUpdate:
    """`OrderUpdate(o)` without running the NamedTuple's interpreted __new__ (the engine's
    hot paths build events with tuple.__new__, which the compiled engine calls in C)."""
    return tuple.__new__(OrderUpdate, (o,))


class TradeEvent(NamedTuple):
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


class BookDelta(NamedTuple):
    """Aggregated levels changed by one command; size 0 removes the level."""

    market: str
    bids: tuple[tuple[int, int], ...]
    asks: tuple[tuple[int, int], ...]


class MarketStateChanged(NamedTuple):
    market: str
    state: MarketState


class IndexUpdated(NamedTuple):
    """The oracle set `asset`'s index price (quote atomic units per whole unit)."""

    asset: str
    price: int
    ts: int


class IndexStale(NamedTuple):
    """`asset`'s index, set at `set_ts`, is older than the staleness limit at `ts`."""

    asset: str
    price: int
    set_ts: int
    ts: int


class PositionChanged(NamedTuple):
    """An account's perp position after a fill: signed size, open notional (the quote
    paid for the open part) and cumulative realized PnL."""

    account_id: int
    market: str
    size: int
    open_notional: int
    realized: int


class OpenInterestChanged(NamedTuple):
    """A perp's open interest (the sum of long positions) after a command's fills."""

    market: str
    open_interest: int


class FundingSampled(NamedTuple):
    """A perp's premium sample (engine/funding.py): the rate the next settlement would
    pay so far, the mark basis, the open interest (sum of long sizes) and when the next
    settlement is due."""

    market: str
    premium: int  # ppb
    rate: int  # ppb per settlement, > 0: longs pay shorts
    basis: int
    open_interest: int
    next_funding_ts: int
    ts: int


class FundingSettled(NamedTuple):
    """A perp's funding settlement: the rate paid, the average premium it came from, the
    index it was paid at, how many samples, the open interest and the rounding dust
    booked to the treasury."""

    market: str
    rate: int
    premium: int
    index_price: int
    samples: int
    open_interest: int
    dust: int
    ts: int


class FundingPayment(NamedTuple):
    """What one position paid (amount > 0) or received (< 0) at a settlement."""

    account_id: int
    market: str
    size: int
    index_price: int
    rate: int
    amount: int
    ts: int


class DeadManSwitch(NamedTuple):
    """An account's dead-man switch: armed until `deadline` (None: disarmed), or `fired`
    at `ts` (its orders were cancelled)."""

    account_id: int
    deadline: int | None
    fired: bool
    ts: int


class RiskPlanSet(NamedTuple):
    """An account's new risk plan (fields as in engine/riskplan.py)."""

    account_id: int
    cure_window_ms: int
    max_slice_ppm: int
    order: tuple[str, ...]
    hedge_groups: tuple[tuple[str, ...], ...]
    keep_last: tuple[str, ...]


class MarginStateChanged(NamedTuple):
    """An account entered or left a margin call or liquidation. `deadline`: when a margin
    call turns into liquidation (None otherwise); health at that moment, per level."""

    account_id: int
    state: MarginState
    previous: MarginState
    deadline: int | None
    maintenance: int
    liquidation_end: int
    equity: int
    reason: str
    ts: int


class LiquidationSlice(NamedTuple):
    """One market of one liquidation step: an IOC of `size` at `limit_price` took
    `book_size` for `book_notional` from the book; the insurance fund took over
    `backstop_size` at the limit; `fee` went to the fund. Health after the step."""

    account_id: int
    step: int
    market: str
    side: Side
    size: int
    limit_price: int
    book_size: int
    book_notional: int
    backstop_size: int
    backstop_notional: int
    fee: int
    liquidation_end_after: int
    ts: int


class BadDebt(NamedTuple):
    """What a fully unwound account still owed in `asset`: `insurance` paid by the fund,
    `socialized` written off pro rata against `suppliers` lenders of that asset."""

    account_id: int
    asset: str
    amount: int
    insurance: int
    socialized: int
    suppliers: int
    ts: int


class BatchItem(NamedTuple):
    """Marks where the events of batch item number `item` begin."""

    item: int


Event = (
    AccountCreated
    | ApiKeyCreated
    | ApiKeyRevoked
    | AccountSettingsChanged
    | Transfer
    | IdempotentReplay
    | Rejected
    | OrderUpdate
    | TradeEvent
    | BookDelta
    | MarketStateChanged
    | IndexUpdated
    | IndexStale
    | PositionChanged
    | OpenInterestChanged
    | FundingSampled
    | FundingSettled
    | FundingPayment
    | DeadManSwitch
    | RiskPlanSet
    | MarginStateChanged
    | LiquidationSlice
    | BadDebt
    | BatchItem
)


# Column order of a fill and of a ledger posting: the projection writes these tuples as
# rows (app/store checks the order against its tables), the wire reads them as dicts.
FILL_FIELDS = (
    "account_id", "trade_id", "order_id", "market", "side", "price", "size", "fee",
    "liquidity", "ts",
)  # fmt: skip
POSTING_FIELDS = (
    "transfer_id", "account_id", "asset", "amount", "balance_after", "reason", "ref",
    "counterparty", "ts",
)  # fmt: skip

FillTuple = tuple[int, int, int, str, Side, int, int, int, str, int]
PostingTuple = tuple[int, int, str, int, int, LedgerReason, str, int, int]


def fill(t: TradeEvent, account_id: int) -> FillTuple:
    """The fill of `account_id` (maker or taker) in trade `t`, in FILL_FIELDS order: the one
    derivation used by the fills projection and by the wire (`app/views.py`)."""
    if t.taker_account == account_id:
        return (account_id, t.trade_id, t.taker_order_id, t.market, t.taker_side, t.price,
                t.size, t.taker_fee, "taker", t.ts)  # fmt: skip
    return (account_id, t.trade_id, t.maker_order_id, t.market, t.taker_side.opposite,
            t.price, t.size, t.maker_fee, "maker", t.ts)  # fmt: skip


def fill_row(t: TradeEvent, account_id: int) -> dict[str, Any]:
    """`fill` as a dict keyed by FILL_FIELDS."""
    return dict(zip(FILL_FIELDS, fill(t, account_id), strict=True))


_LIQUIDATION_FIELDS = (
    "account_id", "ts", "step", "market", "asset", "side", "size", "limit_price", "book_size",
    "book_notional", "backstop_size", "backstop_notional", "fee", "amount", "insurance",
    "socialized", "suppliers",
)  # fmt: skip


def liquidation_row(e: LiquidationSlice | BadDebt) -> dict[str, Any]:
    """A liquidation slice or a bad debt as one flat row (`kind` "slice" or "bad_debt", the
    other kind's fields None): the one derivation used by the projection and the wire."""
    row: dict[str, Any] = dict.fromkeys(_LIQUIDATION_FIELDS)
    row.update((k, v) for k, v in e._asdict().items() if k in row)
    if isinstance(e, LiquidationSlice):
        row["side"] = e.side.value
    row["kind"] = "slice" if isinstance(e, LiquidationSlice) else "bad_debt"
    return row


def posting(t: Transfer, account_id: int) -> PostingTuple:
    """Transfer `t` as seen by one of its two accounts (signed amount, its balance after),
    in POSTING_FIELDS order: the one derivation used by the ledger projection and by the
    wire."""
    if t.from_account == account_id:
        return (t.transfer_id, account_id, t.asset, -t.amount, t.from_balance, t.reason, t.ref,
                t.to_account, t.ts)  # fmt: skip
    return (t.transfer_id, account_id, t.asset, t.amount, t.to_balance, t.reason, t.ref,
            t.from_account, t.ts)  # fmt: skip


def posting_row(t: Transfer, account_id: int) -> dict[str, Any]:
    """`posting` as a dict keyed by POSTING_FIELDS."""
    return dict(zip(POSTING_FIELDS, posting(t, account_id), strict=True))
