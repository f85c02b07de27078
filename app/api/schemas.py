"""Request bodies of API.md. Unknown fields are rejected (422), never ignored.

Prices, sizes and amounts are decimal strings; they are converted to integers
in `app.api.convert`, where the market's tick and lot are known.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Decimal = Field(min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$")
ClientId = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.:]+$")
Permission = Literal["read", "trade", "withdraw"]
Stp = Literal["cancel_taker", "cancel_maker", "cancel_both", "decrement"]


class OrderRequest(Body):
    market: str = Field(min_length=1, max_length=32)
    side: Literal["buy", "sell"]
    type: Literal[
        "limit", "market", "stop_market", "stop_limit", "take_profit_market", "take_profit_limit"
    ] = "limit"
    price: str | None = Field(
        default=None, min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$"
    )
    size: str = Decimal
    time_in_force: Literal["gtc", "ioc", "fok", "post_only", "gtt"] | None = None
    expire_ts: int | None = None
    reduce_only: bool = False
    client_order_id: str | None = ClientId
    trigger_price: str | None = Field(
        default=None, min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$"
    )
    stp: Stp | None = None


class BatchRequest(Body):
    orders: list[OrderRequest]  # empty: 400 BATCH_EMPTY (a business rule, not a shape error)
    atomic: bool = False


class CancelItem(Body):
    order_id: str | None = None
    client_order_id: str | None = ClientId


class CancelBatchRequest(Body):
    cancels: list[CancelItem]


class AmendRequest(Body):
    price: str | None = Field(
        default=None, min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$"
    )
    size: str | None = Field(
        default=None, min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$"
    )


class SettingsRequest(Body):
    auto_borrow: bool | None = None
    stp: Stp | None = None


class WithdrawalRequest(Body):
    asset: str = Field(min_length=1, max_length=16)
    amount: str = Decimal
    withdrawal_id: str = Field(min_length=1, max_length=64)
    allow_borrow: bool = False


class KeyRequest(Body):
    permissions: list[Permission] = Field(min_length=1)
    label: str = Field(default="", max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")


class AccountRequest(Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")


class DepositRequest(Body):
    account_id: str = Field(min_length=1, max_length=20)
    asset: str = Field(min_length=1, max_length=16)
    amount: str = Decimal
    deposit_id: str = Field(min_length=1, max_length=64)


DecimalText = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^-?[0-9]+(\.[0-9]+)?$")
]
AssetName = Annotated[str, StringConstraints(min_length=1, max_length=16)]


class OraclePricesRequest(Body):
    prices: dict[AssetName, DecimalText] = Field(min_length=1, max_length=64)


class WhatIfRequest(Body):
    """Orders (REST order bodies; each counted as completely filled) and index prices."""

    orders: list[OrderRequest] = Field(default_factory=list, max_length=20)
    prices: dict[AssetName, DecimalText] = Field(default_factory=dict, max_length=64)


class RiskPlanRequest(Body):
    """DESIGN section 9; every field left out takes its default (the plan is replaced)."""

    cure_window_s: int = 0
    max_slice_pct: int = 100
    order: list[Annotated[str, StringConstraints(max_length=32)]] = Field(
        default_factory=list, max_length=32
    )
    hedge_groups: list[list[Annotated[str, StringConstraints(max_length=32)]]] = Field(
        default_factory=list, max_length=16
    )
    keep_last: list[Annotated[str, StringConstraints(max_length=16)]] = Field(
        default_factory=list, max_length=16
    )


class DeadManRequest(Body):
    timeout_ms: int  # 0 disarms; at most a day (INVALID_TIMEOUT)


class MarketStateRequest(Body):
    state: Literal["open", "reduce_only", "cancel_only", "halted"]


class FeeTierRequest(Body):
    tier: int = Field(ge=0)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error body for each status."""
    text = {
        400: "Business rejection (code names the rule)",
        401: "Missing or bad signature",
        403: "Missing permission",
        404: "Unknown object (or another account's)",
        409: "Duplicate id",
        422: "Malformed input or unknown field",
        429: "Rate limited (see Retry-After)",
        503: "Not accepting commands",
    }
    return {s: {"model": ErrorBody, "description": text.get(s, "Error")} for s in statuses}
