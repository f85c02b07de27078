"""Accounts, API keys and system account ids.

Rule owned here: balances are signed integers per asset, holds are what live
orders reserve, and `available = balance - hold`. System accounts are ordinary
accounts with reserved ids, so every movement is a transfer between two
accounts and the per-asset sum over all accounts is always exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.book import Order
from engine.positions import Position
from engine.riskplan import DEFAULT_PLAN, RiskPlan
from engine.types import MarginState, StpMode

EXTERNAL = 1  # the world outside: the other side of deposits and withdrawals
FEES = 2
INSURANCE = 3
TREASURY = 4
FUNDING = 5
PNL_CLEARING = 6  # the other side of realized perp PnL (engine/positions.py)
SYSTEM_ACCOUNTS: dict[int, str] = {
    EXTERNAL: "external",
    FEES: "fees",
    INSURANCE: "insurance",
    TREASURY: "treasury",
    FUNDING: "funding",
    PNL_CLEARING: "pnl_clearing",
}
FIRST_USER_ACCOUNT = 1000


class Account:
    __slots__ = (
        "account_id",
        "name",
        "tier",
        "stp",
        "auto_borrow",
        "created_ts",
        "balances",
        "holds",
        "live",
        "client_ids",
        "positions",
        "perp_orders",
        "reduce_only",
        "open_fills",
        "risk_plan",
        "margin",
    )

    def __init__(self, account_id: int, name: str, tier: int, ts: int) -> None:
        self.account_id = account_id
        self.name = name
        self.tier = tier
        self.stp = StpMode.CANCEL_TAKER
        self.auto_borrow = False
        self.created_ts = ts
        self.balances: dict[str, int] = {}
        self.holds: dict[str, int] = {}
        self.live: dict[int, Order] = {}  # live orders by id
        self.client_ids: dict[str, int] = {}  # client order id -> live order id
        self.positions: dict[str, Position] = {}  # perp market -> position (kept when flat)
        self.perp_orders = 0  # how many of `live` are perp orders (margin matters then)
        self.reduce_only = 0  # how many of `live` are reduce-only (fitted to positions)
        # per market, what all its open bids / asks would do if they filled, kept up to date
        # order by order for the margin check: [quantity, perp notional, quote, orders];
        # None until the account's first margin check (accounts never checked pay nothing)
        self.open_fills: dict[str, tuple[list[int], list[int]]] | None = None
        self.risk_plan: RiskPlan = DEFAULT_PLAN  # how its risk is unwound (DESIGN section 9)
        self.margin: MarginCase | None = None  # None: normal (engine/liquidation.py)

    def balance(self, asset: str) -> int:
        return self.balances.get(asset, 0)

    def hold(self, asset: str) -> int:
        return self.holds.get(asset, 0)

    def available(self, asset: str) -> int:
        return self.balances.get(asset, 0) - self.holds.get(asset, 0)


class MarginCase:
    """An account in a margin call or being liquidated (engine/liquidation.py)."""

    __slots__ = ("state", "since", "deadline", "need", "steps")

    def __init__(self, state: MarginState, since: int, deadline: int, need: int, steps: int):
        self.state = state
        self.since = since
        # margin call: when liquidation starts; liquidating: when the next step is due
        self.deadline = deadline
        self.need = need  # the liquidation-end shortfall when slices began (their unit)
        self.steps = steps  # liquidation steps taken

    def as_list(self) -> list[object]:
        return [self.state.value, self.since, self.deadline, self.need, self.steps]


@dataclass(frozen=True, slots=True)
class ApiKey:
    api_key: str
    account_id: int
    secret: str
    permissions: tuple[str, ...]
    label: str
    created_ts: int
    revoked: bool = False
