"""Enumerations and the one table of rejection reasons the engine can return.

Rule owned here: every business rejection is a `Reject` value with a stable
UPPER_SNAKE name; the engine never raises for a business rule. The API maps
each name to an HTTP status in one table (`app/errors.py`). Ranges by layer
(exchange-core style): 1xx input/shape, 2xx market, 3xx order rules, 4xx
funds/risk, 5xx account/identity, 6xx idempotency.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"
    STOP_MARKET = "stop_market"
    STOP_LIMIT = "stop_limit"
    TAKE_PROFIT_MARKET = "take_profit_market"
    TAKE_PROFIT_LIMIT = "take_profit_limit"


class TimeInForce(StrEnum):
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    POST_ONLY = "post_only"
    GTT = "gtt"


class OrderStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    UNTRIGGERED = "untriggered"

    @property
    def is_live(self) -> bool:
        return self in LIVE_STATUSES


# (`status in LIVE_STATUSES` on the engine's hot paths: a set lookup in C, where the
# property is a Python-level call on an enum member even in the compiled engine)
LIVE_STATUSES = frozenset(
    {OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.UNTRIGGERED}
)


class StpMode(StrEnum):
    """Self-trade prevention when a taker meets a resting order of its own account."""

    CANCEL_TAKER = "cancel_taker"  # default: the incoming remainder is cancelled
    CANCEL_MAKER = "cancel_maker"  # the resting order is cancelled, matching goes on
    CANCEL_BOTH = "cancel_both"
    DECREMENT = "decrement"  # both shrink by the smaller size, no trade


class MarketState(StrEnum):
    OPEN = "open"
    REDUCE_ONLY = "reduce_only"
    CANCEL_ONLY = "cancel_only"
    HALTED = "halted"


class MarketKind(StrEnum):
    SPOT = "spot"
    PERP = "perp"


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


class CancelReason(StrEnum):
    USER = "user"
    STP = "self_trade_prevention"
    IOC_REMAINDER = "ioc_remainder"
    NO_LIQUIDITY = "no_liquidity"  # market order remainder beyond its protective limit
    DISCONNECT = "cancel_on_disconnect"
    DEAD_MAN = "dead_man_switch"
    MARKET_STATE = "market_state"
    MARGIN = "margin"  # funds below what the order held, or a triggered order failed margin
    REDUCE_ONLY = "reduce_only"  # the position it reduces shrank to nothing (or flipped)
    MARGIN_CALL = "margin_call"  # maintenance health fell below 0: orders adding risk go
    LIQUIDATION = "liquidation"  # liquidation began: every order of the account goes


class MarginState(StrEnum):
    """Where an account stands in the margin process (DESIGN section 9)."""

    NORMAL = "normal"
    MARGIN_CALL = "margin_call"  # maintenance < 0, inside its cure window
    LIQUIDATING = "liquidating"  # being unwound in slices


class LedgerReason(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRADE = "trade"
    FEE = "fee"
    FUNDING = "funding"
    INTEREST = "interest"
    LIQUIDATION = "liquidation"
    SOCIALIZED_LOSS = "socialized_loss"


class Permission(StrEnum):
    READ = "read"
    TRADE = "trade"
    WITHDRAW = "withdraw"
    ADMIN = "admin"
    ORACLE = "oracle"


class Reject(IntEnum):
    """Why a command (or one item of a batch) was refused. Names are the wire codes."""

    # 1xx: input that parsed but makes no sense for the engine
    INVALID_SIZE = 101
    INVALID_PRICE = 102
    PRICE_NOT_ON_TICK = 103
    SIZE_NOT_ON_LOT = 104
    SIZE_BELOW_MINIMUM = 105
    PRICE_REQUIRED = 106
    PRICE_NOT_ALLOWED = 107
    INVALID_AMOUNT = 108
    INVALID_EXPIRE_TS = 109
    BATCH_TOO_LARGE = 110
    BATCH_EMPTY = 111
    UNSUPPORTED_ORDER_TYPE = 112
    INVALID_TIME_IN_FORCE = 113
    NOTHING_TO_AMEND = 114
    INVALID_PERMISSIONS = 115
    ATOMIC_LEG_NOT_IMMEDIATE = 116
    TRIGGER_PRICE_REQUIRED = 117
    TRIGGER_PRICE_NOT_ALLOWED = 118
    INVALID_TIMEOUT = 119
    INVALID_RISK_PLAN = 120
    # 2xx: market
    UNKNOWN_MARKET = 201
    UNKNOWN_ASSET = 202
    MARKET_HALTED = 203
    MARKET_CANCEL_ONLY = 204
    MARKET_REDUCE_ONLY = 205
    # 3xx: order rules
    POST_ONLY_WOULD_TAKE = 301
    FOK_NOT_FILLED = 302
    NO_LIQUIDITY = 303
    ORDER_NOT_FOUND = 304
    ORDER_NOT_LIVE = 305
    AMEND_SIZE_NOT_ABOVE_FILLED = 306
    REDUCE_ONLY_NOT_SPOT = 307
    SELF_TRADE_PREVENTED = 308
    ATOMIC_BATCH_FAILED = 309
    REDUCE_ONLY_WOULD_INCREASE = 310
    WOULD_TRIGGER_IMMEDIATELY = 311
    # 4xx: funds and risk
    INSUFFICIENT_BALANCE = 401
    INSUFFICIENT_MARGIN = 402
    INSUFFICIENT_LIQUIDITY = 403
    # 5xx: accounts and keys
    UNKNOWN_ACCOUNT = 501
    API_KEY_NOT_FOUND = 502
    DUPLICATE_API_KEY = 503
    # 6xx: idempotency
    DUPLICATE_CLIENT_ORDER_ID = 601
    DUPLICATE_DEPOSIT_ID = 602
    DUPLICATE_WITHDRAWAL_ID = 603

    @property
    def code(self) -> str:
        return self.name
