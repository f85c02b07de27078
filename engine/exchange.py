"""The exchange: `apply(command) -> events`, pure and deterministic.

Rules owned here (docs/orders.md is the long form): validation order of a new
order, matching with self-trade prevention, fees accumulated per order, holds,
amend/cancel/expiry, batches, deposits and withdrawals. Every money movement goes
through `_transfer`, a double-entry move between two accounts. No clock, no I/O:
time is the `ts` the sequencer stamped on the command.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from itertools import product
from typing import Any

from engine import commands as c
from engine.accounts import (
    EXTERNAL,
    FEES,
    FIRST_USER_ACCOUNT,
    FUNDING,
    INSURANCE,
    PNL_CLEARING,
    SYSTEM_ACCOUNTS,
    TREASURY,
    Account,
    ApiKey,
)
from engine.book import Book, Order
from engine.events import (
    AccountCreated,
    AccountSettingsChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    BatchItem,
    BookDelta,
    DeadManSwitch,
    Event,
    FundingPayment,
    FundingSampled,
    FundingSettled,
    IdempotentReplay,
    IndexStale,
    IndexUpdated,
    MarketStateChanged,
    OpenInterestChanged,
    OrderView,
    PositionChanged,
    Rejected,
    RiskPlanSet,
    TradeEvent,
    Transfer,
    order_update,
)
from engine.fixedpoint import ceil_div
from engine.funding import MarketFunding, impact_price, payment, premium
from engine.lending import PPM as LENDING_PPM
from engine.lending import (
    Pool,
    borrow_rate_ppm,
    interest_due,
    supply_rate_ppm,
    utilization_ppm,
)
from engine.liquidation import at_risk, settle_margins
from engine.margin_index import BreachIndex
from engine.markets import ExchangeConfig, FeeTier, MarketSpec
from engine.oracle import Oracle
from engine.portfolio import RiskView, WhatIfOrder, risk_view, what_if_change
from engine.positions import Position, mark_price
from engine.risk import (
    BORROW_HORIZON_MS,
    YEAR_MS,
    Level,
    PerpExposure,
    combine,
    health,
    quote_num,
    token_num,
)
from engine.riskplan import RiskPlan, plan_problems
from engine.triggers import LIMIT_TYPES, STOP_TYPES, TriggerBook, triggers_on_rise
from engine.types import (
    LIVE_STATUSES,
    CancelReason,
    LedgerReason,
    MarginState,
    MarketKind,
    MarketState,
    OrderStatus,
    OrderType,
    Permission,
    Reject,
    Side,
    StpMode,
    TimeInForce,
)

PPM = 1_000_000
# Bounds that keep every amount, notional and balance well inside a signed 64-bit column.
MAX_UNITS = 10**17  # largest price, size, notional or single movement, in atomic units
MAX_BALANCE = 10**18  # largest balance a deposit may create
MAX_TS = 2**62
DEAD_MAN_MAX_MS = 86_400_000  # the longest dead-man timeout: a day
RECENT_DONE_ORDERS = 10_000  # finished orders remembered for ORDER_NOT_LIVE answers
# `tuple` called as a plain Python callable: compiled, `tuple(view)` of a NamedTuple-typed
# value unboxes and reboxes every field (10x slower than this C-level copy of references)
_plain_tuple: Callable[[OrderView], tuple[Any, ...]] = tuple
_VALID_PERMISSIONS = frozenset(p.value for p in Permission) - {"admin", "oracle"}


class Market:
    __slots__ = ("spec", "book", "state")

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.book = Book(spec.symbol)
        self.state = MarketState.OPEN


class _Refused(Exception):
    """Internal control flow only: unwinds a validation failure into a `Rejected` event."""

    def __init__(self, reason: Reject, detail: str = "", order_id: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.order_id = order_id


class Exchange:
    def __init__(self, config: ExchangeConfig) -> None:
        problems = config.validate()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.markets: dict[str, Market] = {s: Market(m) for s, m in config.markets.items()}
        self.accounts: dict[int, Account] = {
            aid: Account(aid, name, 0, 0) for aid, name in SYSTEM_ACCOUNTS.items()
        }
        self.api_keys: dict[str, ApiKey] = {}
        self.orders: dict[int, Order] = {}  # live orders
        # recently finished, oldest first: the fields of the view each one's last update
        # carried, as a plain tuple (immutable and plain data, so snapshots share it; its
        # enums are strs); the queue holds their ids in the same order, so the oldest
        # leaves in O(1) (a dict's first key is found by skipping what was deleted before
        # it; an OrderedDict churned like this is 25x slower to list)
        self.done: dict[int, tuple[Any, ...]] = {}
        self.done_queue: deque[int] = deque()
        self.deposits: dict[str, Transfer] = {}
        self.withdrawals: dict[str, Transfer] = {}
        self.expiries: list[tuple[int, int]] = []  # heap of (expire_ts, order_id)
        self.next_account_id = FIRST_USER_ACCOUNT
        self.next_order_id = 1
        self.next_trade_id = 1
        self.next_transfer_id = 1
        self.last_seq = 0
        self.last_ts = 0
        self.oracle = Oracle(config.oracle_stale_ms)
        self.pools: dict[str, Pool] = {a: Pool(a) for a in config.assets}
        self._decimals = {a: spec.decimals for a, spec in config.assets.items()}
        self._quote = config.quote_asset
        self._risk_top = 10 ** max(self._decimals.values(), default=0)  # engine/risk.py combine
        self._perp_markets = frozenset(
            s for s, m in config.markets.items() if m.kind is MarketKind.PERP
        )
        self.interest_ts: int | None = None  # when interest was last settled
        self.funding = {m: MarketFunding(m) for m in sorted(self._perp_markets)}
        self.next_sample_ts: int | None = None  # the next funding sample (None: not yet set)
        self.next_funding_ts: int | None = None  # the next funding settlement
        self.open_interest = {m: 0 for m in sorted(self._perp_markets)}  # sum of long sizes
        # who holds a position in each perp (funding pays them without a walk over accounts)
        self.holders: dict[str, set[int]] = {m: set() for m in sorted(self._perp_markets)}
        self.triggers = {m: TriggerBook() for m in sorted(self._perp_markets)}
        self.untriggered = 0  # live stop / take-profit orders waiting for their trigger
        # (account, perp) whose position moved in this command while it has reduce-only
        # orders: those are fitted to the position once the command is done
        self._reduced: set[tuple[int, str]] = set()
        self._oi_moved: set[str] = set()  # perps whose open interest this command moved
        self.dead_man: dict[int, int] = {}  # account -> when its orders are all cancelled
        # margin calls and liquidation (engine/liquidation.py)
        self.breach = BreachIndex()  # accounts by the index prices at which they may breach
        self.margin_cases: set[int] = set()  # accounts in a margin call or liquidation
        self.margin_unknown: set[int] = set()  # at risk, but an index they need is stale
        # per indexed account, how much quote may still leave it as funding or interest
        # before it must be looked at again (engine/margin_index.py)
        self.allowance: dict[int, int] = {}
        self._touched: set[int] = set()  # accounts that paid or moved a position (a command)
        self._prices_moved: set[str] = set()  # assets with a new index (a command)
        # each pool's highest borrow rate: the breach index values loans at it
        self.max_rates = {a: borrow_rate_ppm(p, 1, 1) for a, p in config.lending.items()}
        # a quote loan weighs (1 + highest rate * 10 days): this extra, in ppm, rounded up
        self._loan_extra_ppm = ceil_div(
            self.max_rates.get(self._quote, 0) * BORROW_HORIZON_MS, YEAR_MS
        )
        self.spot_market_of: dict[str, str] = {}  # asset -> the spot market liquidation sells it in
        for sym in sorted(config.markets, reverse=True):
            spec = config.markets[sym]
            if spec.kind is MarketKind.SPOT and spec.quote == config.quote_asset:
                self.spot_market_of[spec.base] = sym
        self._events: list[Event] = []
        self._ts = 0
        self._handlers: dict[type[c.Command], Callable[[Any], None]] = {
            c.CreateAccount: self._create_account,
            c.CreateApiKey: self._create_api_key,
            c.RevokeApiKey: self._revoke_api_key,
            c.SetAccountSettings: self._set_account_settings,
            c.Deposit: self._deposit,
            c.Withdraw: self._withdraw,
            c.PlaceOrder: self._place_command,
            c.CancelOrder: self._cancel_command,
            c.CancelAll: self._cancel_all,
            c.AmendOrder: self._amend,
            c.BatchPlace: self._batch_place,
            c.BatchCancel: self._batch_cancel,
            c.SetMarketState: self._set_market_state,
            c.SetOraclePrices: self._set_oracle_prices,
            c.SetDeadManSwitch: self._set_dead_man,
            c.SetRiskPlan: self._set_risk_plan,
            c.OpenSession: lambda cmd: None,  # journaled for its signature only
            c.Tick: lambda cmd: None,
        }

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: c.Command, deltas: bool = True) -> list[Event]:
        """Apply one command; return what happened. Never raises for a business rule.

        `deltas=False` (journal replay, where nobody reads the events) skips
        building the BookDelta events; the state reached is the same."""
        events: list[Event] = []
        self._events = events
        self._ts = cmd.ts
        self.last_seq = cmd.seq
        self.last_ts = cmd.ts
        self._expire_due(cmd.ts)
        if self.dead_man:
            self._fire_dead_men(cmd.ts)
        its = self.interest_ts
        if its is None:
            self.interest_ts = cmd.ts
        elif cmd.ts >= its + self.config.interest_interval_ms:
            self._settle_interest(cmd.ts)
        deadline = self.oracle.deadline
        if deadline is not None and cmd.ts >= deadline:
            for e in self.oracle.going_stale(cmd.ts):
                events.append(IndexStale(e.asset, e.price, e.ts, cmd.ts))
        sample_ts = self.next_sample_ts
        if sample_ts is None or cmd.ts >= sample_ts:
            self._funding_due(cmd.ts)
        try:
            self._handlers[type(cmd)](cmd)
        except _Refused as refused:
            events.append(
                Rejected(
                    refused.reason,
                    getattr(cmd, "account_id", None),
                    refused.detail,
                    getattr(cmd, "client_order_id", None),
                    refused.order_id,
                )
            )
        if self.untriggered or self._reduced:
            self._after_command()
        if self._touched or self._prices_moved or self.margin_cases:
            settle_margins(self)
        if self._oi_moved:
            for perp in sorted(self._oi_moved):
                events.append(OpenInterestChanged(perp, self.open_interest[perp]))
            self._oi_moved.clear()
        for market in self.markets.values():
            book = market.book
            if book.dirty_bids or book.dirty_asks:
                if deltas:
                    bids, asks = book.take_delta()
                    events.append(tuple.__new__(BookDelta, (market.spec.symbol, bids, asks)))
                else:
                    book.dirty_bids.clear()
                    book.dirty_asks.clear()
        self._events = []
        return events

    def next_deadline(self) -> int | None:
        """The ts at which a `Tick` has work to do (a GTT expiry, an index price going
        stale, interest to settle on outstanding loans), if any."""
        expiry = None
        while self.expiries:
            exp, oid = self.expiries[0]
            o = self.orders.get(oid)
            if o is not None and o.expire_ts == exp:
                expiry = exp
                break
            heapq.heappop(self.expiries)
        due = [d for d in (expiry, self.oracle.deadline) if d is not None]
        if self.dead_man:
            due.append(min(self.dead_man.values()))
        for aid in self.margin_cases:
            case = self.accounts[aid].margin
            if case is not None and aid not in self.margin_unknown:
                due.append(case.deadline)
        if self.interest_ts is not None and any(p.borrowed for p in self.pools.values()):
            due.append(self.interest_ts + self.config.interest_interval_ms)
        if self.next_sample_ts is not None and self.next_funding_ts is not None:
            if any(self.oracle.index(self.markets[m].spec.base) is not None for m in self.funding):
                due.append(self.next_sample_ts)  # a perp has a fresh index to sample against
            elif any(f.samples for f in self.funding.values()):
                due.append(self.next_funding_ts)
        return min(due) if due else None

    # --------------------------------------------------------------- accounts
    def _account(self, account_id: int) -> Account:
        acct = self.accounts.get(account_id)
        if acct is None or account_id < FIRST_USER_ACCOUNT:
            raise _Refused(Reject.UNKNOWN_ACCOUNT, f"account {account_id} does not exist")
        return acct

    def _check_permissions(self, permissions: tuple[str, ...]) -> None:
        if not permissions or not set(permissions) <= _VALID_PERMISSIONS:
            raise _Refused(Reject.INVALID_PERMISSIONS, "permissions are read, trade, withdraw")

    def _create_account(self, cmd: c.CreateAccount) -> None:
        if cmd.api_key in self.api_keys:
            raise _Refused(Reject.DUPLICATE_API_KEY)
        self._check_permissions(cmd.permissions)
        if cmd.tier not in self.config.fee_tiers:
            raise _Refused(Reject.INVALID_AMOUNT, f"unknown fee tier {cmd.tier}")
        aid = self.next_account_id
        self.next_account_id += 1
        self.accounts[aid] = Account(aid, cmd.name, cmd.tier, cmd.ts)
        self._events.append(AccountCreated(aid, cmd.name, cmd.tier, cmd.ts))
        self._add_key(aid, cmd.api_key, cmd.api_secret, cmd.permissions, "default")

    def _add_key(self, aid: int, key: str, secret: str, perms: tuple[str, ...], label: str) -> None:
        self.api_keys[key] = ApiKey(key, aid, secret, perms, label, self._ts)
        self._events.append(ApiKeyCreated(aid, key, secret, perms, label, self._ts))

    def _create_api_key(self, cmd: c.CreateApiKey) -> None:
        self._account(cmd.account_id)
        if cmd.api_key in self.api_keys:
            raise _Refused(Reject.DUPLICATE_API_KEY)
        self._check_permissions(cmd.permissions)
        self._add_key(cmd.account_id, cmd.api_key, cmd.api_secret, cmd.permissions, cmd.label)

    def _revoke_api_key(self, cmd: c.RevokeApiKey) -> None:
        key = self.api_keys.get(cmd.api_key)
        if key is None or key.account_id != cmd.account_id or key.revoked:
            raise _Refused(Reject.API_KEY_NOT_FOUND)
        self.api_keys[cmd.api_key] = ApiKey(
            key.api_key,
            key.account_id,
            key.secret,
            key.permissions,
            key.label,
            key.created_ts,
            revoked=True,
        )
        self._events.append(ApiKeyRevoked(cmd.account_id, cmd.api_key))

    def _set_account_settings(self, cmd: c.SetAccountSettings) -> None:
        acct = self._account(cmd.account_id)
        if cmd.tier is not None and cmd.tier not in self.config.fee_tiers:
            raise _Refused(Reject.INVALID_AMOUNT, f"unknown fee tier {cmd.tier}")
        borrowing = acct.auto_borrow if cmd.auto_borrow is None else cmd.auto_borrow
        if cmd.tier is not None and cmd.tier != acct.tier and not borrowing:
            self._check_holds_under_tier(acct, self.config.fee_tiers[cmd.tier])
        if not borrowing:
            short = sorted(a for a in acct.holds if acct.hold(a) > 0 and acct.available(a) < 0)
            if short:
                raise _Refused(
                    Reject.INSUFFICIENT_BALANCE,
                    f"open orders would borrow {short[0]}: cancel them before turning "
                    "auto_borrow off",
                )
        if cmd.stp is not None:
            acct.stp = cmd.stp
        if cmd.auto_borrow is not None:
            acct.auto_borrow = cmd.auto_borrow
        if cmd.tier is not None and cmd.tier != acct.tier:
            acct.tier = cmd.tier
            for oid in sorted(acct.live):  # buy holds carry a fee reserve at the tier's rate
                o = acct.live[oid]
                self._refresh_hold(o, self.markets[o.market].spec, acct)
        self._events.append(
            AccountSettingsChanged(acct.account_id, acct.stp, acct.auto_borrow, acct.tier)
        )

    def _check_holds_under_tier(self, acct: Account, tier: FeeTier) -> None:
        """A tier change re-prices the fee reserve of live buys; refuse it if funds fall short."""
        extra: dict[str, int] = {}
        for o in acct.live.values():
            spec = self.markets[o.market].spec
            asset = spec.quote if o.side is Side.BUY else spec.base
            extra[asset] = extra.get(asset, 0) + self._required_hold(o, spec, tier) - o.hold
        short = sorted(a for a, more in extra.items() if more > acct.available(a))
        if short:
            raise _Refused(
                Reject.INSUFFICIENT_BALANCE,
                f"open orders would need more {short[0]} under the new tier",
            )

    # ------------------------------------------------------------------ money
    def _transfer(
        self, asset: str, frm: int, to: int, amount: int, reason: LedgerReason, ref: str
    ) -> Transfer:
        a, b = self.accounts[frm], self.accounts[to]
        fb = a.balances[asset] = a.balances.get(asset, 0) - amount
        tb = b.balances[asset] = b.balances.get(asset, 0) + amount
        if frm >= FIRST_USER_ACCOUNT:
            # it paid: its health may have fallen; funding or interest in the quote asset
            # within the account's allowance cannot have taken it under maintenance
            left = self.allowance.get(frm, -1)
            if (
                left < amount
                or asset != self._quote
                or (reason is not LedgerReason.FUNDING and reason is not LedgerReason.INTEREST)
            ):
                self._touched.add(frm)
            else:
                worst = amount + ceil_div(amount * self._loan_extra_ppm, PPM)
                if worst <= left:
                    self.allowance[frm] = left - worst
                else:
                    self._touched.add(frm)
            pool = self.pools[asset]
            pool.move(fb + amount, fb)
            if a.auto_borrow and a.holds.get(asset, 0):
                h = a.holds[asset]
                pool.pending += max(h - max(fb, 0), 0) - max(h - max(fb + amount, 0), 0)
        if to >= FIRST_USER_ACCOUNT:
            if b.margin is not None:  # it got money while called: it may be cured
                self._touched.add(to)
            pool = self.pools[asset]
            pool.move(tb - amount, tb)
            if b.auto_borrow and b.holds.get(asset, 0):
                h = b.holds[asset]
                pool.pending += max(h - max(tb, 0), 0) - max(h - max(tb - amount, 0), 0)
        t: Transfer = tuple.__new__(
            Transfer, (self.next_transfer_id, asset, frm, to, amount, reason, ref, fb, tb, self._ts)
        )
        self.next_transfer_id += 1
        self._events.append(t)
        return t

    def _deposit(self, cmd: c.Deposit) -> None:
        self._money_move(cmd.account_id, cmd.asset, cmd.amount, cmd.deposit_id, True)

    def _withdraw(self, cmd: c.Withdraw) -> None:
        self._money_move(
            cmd.account_id, cmd.asset, cmd.amount, cmd.withdrawal_id, False, cmd.allow_borrow
        )

    def _money_move(
        self,
        aid: int,
        asset: str,
        amount: int,
        ident: str,
        deposit: bool,
        allow_borrow: bool = False,
    ) -> None:
        seen = self.deposits if deposit else self.withdrawals
        # deposit ids are the operator's (global); withdrawal ids belong to each account
        key = ident if deposit else f"{aid}:{ident}"
        previous = seen.get(key)
        if previous is not None:
            owner = previous.to_account if deposit else previous.from_account
            if (owner, previous.asset, previous.amount) == (aid, asset, amount):
                self._events.append(IdempotentReplay(previous))
                return
            raise _Refused(
                Reject.DUPLICATE_DEPOSIT_ID if deposit else Reject.DUPLICATE_WITHDRAWAL_ID,
                f"id {ident!r} was used with different values",
            )
        # the operator may fund the insurance fund; otherwise user accounts only
        acct = self.accounts[aid] if deposit and aid == INSURANCE else self._account(aid)
        if asset not in self.config.assets:
            raise _Refused(Reject.UNKNOWN_ASSET, f"unknown asset {asset}")
        if amount <= 0 or amount > MAX_UNITS:
            raise _Refused(Reject.INVALID_AMOUNT, f"amount must be in 1..{MAX_UNITS} atomic units")
        if deposit and acct.balance(asset) + amount > MAX_BALANCE:
            raise _Refused(Reject.INVALID_AMOUNT, "the balance would exceed the exchange's limit")
        if deposit:
            t = self._transfer(
                asset, EXTERNAL, aid, amount, LedgerReason.DEPOSIT, f"deposit:{ident}"
            )
        else:
            pool = self.pools[asset]
            if acct.available(asset) < amount:
                if not allow_borrow:
                    raise _Refused(
                        Reject.INSUFFICIENT_BALANCE,
                        f"available {acct.available(asset)} < {amount}",
                    )
                self._check_borrow(acct, asset, amount)
            elif amount > pool.free:  # what is lent out cannot leave
                raise _Refused(
                    Reject.INSUFFICIENT_LIQUIDITY, f"the {asset} pool has {pool.free} free"
                )
            elif self._has_exposure(acct):
                self._check_margin(acct, {asset: -amount}, "after the withdrawal")
            t = self._transfer(
                asset, aid, EXTERNAL, amount, LedgerReason.WITHDRAWAL, f"withdrawal:{ident}"
            )
        seen[key] = t

    # ---------------------------------------------------------------- lending
    def _check_borrow(self, acct: Account, asset: str, amount: int) -> None:
        """May `acct` take `amount` of `asset` out, borrowing what it does not have? Only
        funds no order holds; within the pool's free liquidity and max utilization; and
        with initial health >= 0 afterwards, open orders counted as filled."""
        if acct.hold(asset) > 0:
            raise _Refused(
                Reject.INSUFFICIENT_BALANCE,
                f"open orders hold {asset}: cancel them before borrowing it",
            )
        own = max(acct.balance(asset), 0)
        rates = self._rates_with_loan(asset, amount - own, own)
        self._check_margin(acct, {asset: -amount}, "", rates)

    def _rates_with_loan(self, asset: str, loan: int, own_leaving: int = 0) -> dict[str, int]:
        """May an account borrow `loan` of `asset` (with `own_leaving` of its own supply
        leaving the exchange too, for a withdrawal)? Refused (INSUFFICIENT_LIQUIDITY)
        beyond the pool's free liquidity or its maximum utilization; else the borrow
        rates with the loan taken (the margin check values the loan at the rate it
        causes). A trade moves supply between users, so only a loan uses liquidity."""
        pool = self.pools[asset]
        if loan + own_leaving > pool.free:
            raise _Refused(Reject.INSUFFICIENT_LIQUIDITY, f"the {asset} pool has {pool.free} free")
        supplied, borrowed = pool.supplied - own_leaving, pool.borrowed + pool.pending + loan
        limit = self.config.lending[asset].max_utilization_ppm
        if borrowed * LENDING_PPM > limit * supplied:
            raise _Refused(
                Reject.INSUFFICIENT_LIQUIDITY,
                f"the {asset} pool would pass its maximum utilization",
            )
        rates = self.borrow_rates()
        rates[asset] = borrow_rate_ppm(self.config.lending[asset], supplied, borrowed)
        return rates

    def _has_exposure(self, acct: Account) -> bool:
        """Does the account's margin matter: a loan, an open position or a perp order?"""
        return bool(acct.perp_orders) or at_risk(acct)

    def _check_margin(
        self,
        acct: Account,
        change: dict[str, int],
        when: str,
        rates: dict[str, int] | None = None,
        extra: Order | None = None,
        before: int | None = None,
    ) -> None:
        """Refuse (INSUFFICIENT_MARGIN) unless initial health after `change` (and with
        order `extra`) stays >= 0 or is not lower than it was (`before`, if the caller has
        already changed what the account's orders count)."""
        if not self.config.margin_checks:
            return
        after = self._initial_health(
            acct, change, self.borrow_rates() if rates is None else rates, extra
        )
        if after is not None and after < 0:
            # below initial already (a margin call, say): what does not lower it may pass,
            # so an account can always reduce, hedge or add collateral
            if before is None:
                before = self._initial_health(acct, {}, self.borrow_rates())
            if before is not None and after >= before:
                return
        if after is None or after < 0:
            raise _Refused(
                Reject.INSUFFICIENT_MARGIN,
                "initial health "
                + (when + " " if when else "")
                + "would be "
                + ("unknown (an asset has no fresh index price)" if after is None else f"{after}"),
            )

    def lending_state(self) -> dict[str, dict[str, int]]:
        """Per pool: supplied, borrowed, utilization and rates (ppm a year), parameters."""
        out = {}
        for asset, pool in self.pools.items():
            params = self.config.lending[asset]
            out[asset] = {
                "supplied": pool.supplied,
                "borrowed": pool.borrowed,
                "utilization_ppm": utilization_ppm(pool.supplied, pool.borrowed),
                "borrow_rate_ppm": borrow_rate_ppm(params, pool.supplied, pool.borrowed),
                "supply_rate_ppm": supply_rate_ppm(params, pool.supplied, pool.borrowed),
                "max_utilization_ppm": params.max_utilization_ppm,
                "reserve_factor_ppm": params.reserve_factor_ppm,
            }
        return out

    def borrow_rates(self) -> dict[str, int]:
        """Each pool's borrow rate now, ppm a year."""
        return {
            a: borrow_rate_ppm(self.config.lending[a], p.supplied, p.borrowed)
            for a, p in self.pools.items()
        }

    def _settle_interest(self, ts: int) -> None:
        """Borrowers pay the treasury, the treasury pays suppliers their share
        (engine/lending.py); the reserve and the dust stay with the treasury."""
        assert self.interest_ts is not None
        elapsed = ts - self.interest_ts
        self.interest_ts = ts
        for asset in sorted(self.pools):
            pool = self.pools[asset]
            if pool.borrowed <= 0:
                continue
            params = self.config.lending[asset]
            rate = borrow_rate_ppm(params, pool.supplied, pool.borrowed)
            ref = f"interest:{asset}:{ts}"
            debtors = [
                (aid, -bal)
                for aid, acct in self.accounts.items()
                if aid >= FIRST_USER_ACCOUNT and (bal := acct.balances.get(asset, 0)) < 0
            ]
            paid = 0
            for aid, debt in debtors:
                due = interest_due(debt, rate, elapsed)
                if due:
                    self._transfer(asset, aid, TREASURY, due, LedgerReason.INTEREST, ref)
                    paid += due
            share = paid * (LENDING_PPM - params.reserve_factor_ppm) // LENDING_PPM
            supplied = pool.supplied
            if share <= 0 or supplied <= 0:
                continue
            lenders = [
                (aid, bal)
                for aid, acct in self.accounts.items()
                if aid >= FIRST_USER_ACCOUNT and (bal := acct.balances.get(asset, 0)) > 0
            ]
            for aid, bal in lenders:
                earned = share * bal // supplied
                if earned:
                    self._transfer(asset, TREASURY, aid, earned, LedgerReason.INTEREST, ref)

    # ---------------------------------------------------------------- funding
    def _funding_due(self, ts: int) -> None:
        """At (or after) a sample time: sample every perp, then settle if the interval is
        over. Times are multiples of the sample and settlement intervals."""
        params = self.config.funding
        nxt = (ts // params.sample_ms + 1) * params.sample_ms
        if self.next_sample_ts is None or self.next_funding_ts is None:  # the first command
            self.next_sample_ts = nxt
            self.next_funding_ts = (ts // params.interval_ms + 1) * params.interval_ms
            return
        self.next_sample_ts = nxt
        settle = ts >= self.next_funding_ts
        if settle:
            self.next_funding_ts = (ts // params.interval_ms + 1) * params.interval_ms
        for market, mf in self.funding.items():
            self._sample_funding(market, mf, ts)
            if settle:
                self._settle_funding(market, mf, ts)

    def _sample_funding(self, market: str, mf: MarketFunding, ts: int) -> None:
        m = self.markets[market]
        index = self.oracle.index(m.spec.base)
        if index is None:
            return
        book, unit, impact = m.book, m.spec.base_unit, self.config.funding.impact_notional
        sample = premium(
            index,
            impact_price(
                ((v.price, v.total) for v in book.levels_from_best(Side.BUY)), impact, unit
            ),
            impact_price(
                ((v.price, v.total) for v in book.levels_from_best(Side.SELL)), impact, unit
            ),
        )
        mf.add_sample(sample)
        bid, ask = book.best(Side.BUY), book.best(Side.SELL)
        if bid is not None and ask is not None:
            mf.move_basis((bid.price + ask.price) // 2 - index, self.config.funding.sample_ms)
        assert self.next_funding_ts is not None
        self._events.append(
            FundingSampled(
                market,
                sample,
                mf.rate(),
                mf.basis,
                self.open_interest[market],
                self.next_funding_ts,
                ts,
            )
        )

    def _settle_funding(self, market: str, mf: MarketFunding, ts: int) -> None:
        """Longs pay shorts (or back) through the funding clearing account; the rounding
        dust left there goes to the treasury (engine/funding.py)."""
        spec = self.markets[market].spec
        index = self.oracle.index(spec.base)
        samples, avg, rate = mf.samples, mf.average_premium(), mf.rate()
        mf.premium_sum = mf.samples = 0
        if index is None or samples == 0:
            return  # no fresh index now, or none all interval: no funding this time
        mf.last_rate = rate
        ref = f"funding:{market}:{ts}"
        quote, unit = spec.quote, spec.base_unit
        paid = 0
        for aid in sorted(self.holders[market]):
            acct = self.accounts[aid]
            pos = acct.positions[market]
            amount = payment(pos.size, index, rate, unit)
            if amount > 0:
                self._transfer(quote, aid, FUNDING, amount, LedgerReason.FUNDING, ref)
            elif amount < 0:
                self._transfer(quote, FUNDING, aid, -amount, LedgerReason.FUNDING, ref)
            paid += amount
            self._events.append(FundingPayment(aid, market, pos.size, index, rate, amount, ts))
            if amount > 0:
                self._cover_holds(acct, quote)
        if paid > 0:
            self._transfer(quote, FUNDING, TREASURY, paid, LedgerReason.FUNDING, ref)
        self._events.append(
            FundingSettled(market, rate, avg, index, samples, self.open_interest[market], paid, ts)
        )

    # ------------------------------------------------------------------- fees
    def _tier(self, acct: Account) -> FeeTier:
        return self.config.fee_tiers.get(acct.tier) or self.config.fee_tiers[0]

    def _fee_for_fill(self, o: Order, notional: int, ppm: int) -> int:
        """Fee (negative: rebate) for one fill; cumulative per order so rounding never compounds."""
        if ppm > 0:
            o.fee_basis += notional * ppm
            total = ceil_div(o.fee_basis, PPM)
            fee = total - o.fees_paid
            o.fees_paid = total
            return fee
        if ppm < 0:
            o.rebate_basis += notional * -ppm
            total = o.rebate_basis // PPM
            rebate = total - o.rebates_got
            o.rebates_got = total
            return -rebate
        return 0

    # ------------------------------------------------------------------ holds
    def _required_hold(
        self,
        o: Order,
        spec: MarketSpec,
        tier: FeeTier,
        price: int | None = None,
        size: int | None = None,
    ) -> int:
        """What `o` must hold now, or at `price`/`size` if given (an amend being judged)."""
        if o.status not in LIVE_STATUSES or spec.kind is MarketKind.PERP:
            return 0  # a perp order holds nothing: margin (initial health) stands behind it
        remaining = (o.size if size is None else size) - o.filled
        if o.side is Side.SELL:
            return remaining
        notional = spec.notional(o.price if price is None else price, remaining)
        top_rate = max(tier.maker_ppm, tier.taker_ppm, 0)
        return notional + ceil_div(o.fee_basis + notional * top_rate, PPM) - o.fees_paid

    def _refresh_hold(self, o: Order, spec: MarketSpec, acct: Account) -> None:
        new = self._required_hold(o, spec, self._tier(acct))
        if new != o.hold:
            asset = spec.quote if o.side is Side.BUY else spec.base
            before = acct.holds.get(asset, 0)
            after = acct.holds[asset] = before + new - o.hold
            o.hold = new
            if acct.auto_borrow:  # what it holds beyond its balance: a pending loan
                own = max(acct.balances.get(asset, 0), 0)
                self.pools[asset].pending += max(after - own, 0) - max(before - own, 0)
        self._track(o, spec, acct)

    def _fill_effect(
        self, o: Order, spec: MarketSpec, top_fee: int, hold: int
    ) -> tuple[int, int, int]:
        """What `o` does if all of it fills at its limit, paying the top fee: (quantity:
        base or perp size, perp notional, quote). A spot buy pays at most `hold`."""
        rem = o.remaining
        buy = o.side is Side.BUY
        notional = spec.notional(o.price, rem)
        fee = ceil_div(notional * top_fee, PPM)
        if spec.kind is MarketKind.PERP:
            return (rem, notional, -fee) if buy else (-rem, -notional, -fee)
        return (rem, 0, -hold) if buy else (-rem, 0, notional - fee)

    def _track(self, o: Order, spec: MarketSpec, acct: Account) -> None:
        """Keep `acct.open_fills` equal to the sum of its open orders' fill effects (an
        order waiting for its trigger is not counted): updated whenever an order changes,
        so a margin check costs per market, not per order. Only for accounts that have had
        a margin check (`_open_fills`)."""
        fills = acct.open_fills
        if fills is None:
            return
        counted = acct.live.get(o.order_id) is o and o.status is not OrderStatus.UNTRIGGERED
        new = self._fill_effect(o, spec, max(self._tier(acct).taker_ppm, 0), o.hold) if (
            counted) else None  # fmt: skip
        old = o.contrib
        if new == old:
            return
        pair = fills.get(o.market)
        if pair is None:
            pair = fills[o.market] = ([0, 0, 0, 0], [0, 0, 0, 0])
        agg = pair[0] if o.side is Side.BUY else pair[1]
        if old is not None:
            agg[0] -= old[0]
            agg[1] -= old[1]
            agg[2] -= old[2]
            agg[3] -= 1
        if new is not None:
            agg[0] += new[0]
            agg[1] += new[1]
            agg[2] += new[2]
            agg[3] += 1
        o.contrib = new

    def _open_fills(self, acct: Account) -> dict[str, tuple[list[int], list[int]]]:
        """The account's open-order aggregate, built from its orders the first time."""
        fills = acct.open_fills
        if fills is None:
            fills = acct.open_fills = {}
            for oid in sorted(acct.live):
                o = acct.live[oid]
                self._track(o, self.markets[o.market].spec, acct)
        return fills

    # ----------------------------------------------------------------- orders
    def _place_command(self, cmd: c.PlaceOrder) -> None:
        self._place(cmd, cmd.account_id)

    def _validate_order(self, cmd: c.PlaceOrder, acct: Account) -> tuple[Market, int]:
        """Checks 1-9 of docs/orders.md; returns the market and the limit price to use."""
        market = self.markets.get(cmd.market)
        if market is None:
            raise _Refused(Reject.UNKNOWN_MARKET, f"unknown market {cmd.market}")
        self._check_state_for_new(market, cmd.reduce_only)
        spec = market.spec
        stop = cmd.type in STOP_TYPES
        if stop and spec.kind is not MarketKind.PERP:
            raise _Refused(
                Reject.UNSUPPORTED_ORDER_TYPE, "stop and take-profit orders are on perps only"
            )
        if stop and cmd.trigger_price is None:
            raise _Refused(Reject.TRIGGER_PRICE_REQUIRED, f"a {cmd.type.value} order needs one")
        if not stop and cmd.trigger_price is not None:
            raise _Refused(Reject.TRIGGER_PRICE_NOT_ALLOWED, "only stop and take-profit orders")
        if cmd.reduce_only and spec.kind is MarketKind.SPOT:
            raise _Refused(Reject.REDUCE_ONLY_NOT_SPOT)
        if spec.kind is MarketKind.PERP:
            self._check_perp_order(cmd, acct, spec)
        if cmd.size <= 0 or cmd.size > MAX_UNITS:
            raise _Refused(Reject.INVALID_SIZE, "size must be positive and not absurdly large")
        if cmd.size % spec.lot:
            raise _Refused(
                Reject.SIZE_NOT_ON_LOT, f"size must be a multiple of {spec.fmt_size(spec.lot)}"
            )
        if cmd.size < spec.min_size:
            raise _Refused(
                Reject.SIZE_BELOW_MINIMUM, f"minimum size is {spec.fmt_size(spec.min_size)}"
            )
        limit = cmd.type in LIMIT_TYPES
        if cmd.price is None and limit:
            raise _Refused(Reject.PRICE_REQUIRED, "a limit order needs a price")
        if cmd.price is not None and stop and not limit:
            raise _Refused(Reject.PRICE_NOT_ALLOWED, "a stop market order takes no price")
        if cmd.price is not None:
            self._check_price(cmd.price, spec)
        if cmd.trigger_price is not None:
            self._check_price(cmd.trigger_price, spec)
        if not limit and cmd.tif not in (TimeInForce.IOC, TimeInForce.FOK):
            raise _Refused(Reject.INVALID_TIME_IN_FORCE, "market orders are ioc or fok")
        if stop and cmd.tif in (TimeInForce.FOK, TimeInForce.POST_ONLY):
            raise _Refused(
                Reject.INVALID_TIME_IN_FORCE, "stop and take-profit orders are gtc, ioc or gtt"
            )
        if (cmd.tif is TimeInForce.GTT) != (cmd.expire_ts is not None):
            raise _Refused(Reject.INVALID_EXPIRE_TS, "expire_ts goes with time_in_force gtt only")
        if cmd.expire_ts is not None and not self._ts < cmd.expire_ts <= MAX_TS:
            raise _Refused(Reject.INVALID_EXPIRE_TS, "expire_ts is not in the future")
        if cmd.client_order_id is not None and cmd.client_order_id in acct.client_ids:
            live = acct.client_ids[cmd.client_order_id]
            raise _Refused(
                Reject.DUPLICATE_CLIENT_ORDER_ID,
                f"client_order_id is used by live order {live}",
                order_id=live,
            )
        if stop:  # priced (and checked against the book) when it triggers
            price = cmd.price if cmd.price is not None else cmd.trigger_price or 0
        else:
            price = cmd.price if cmd.price is not None else self._protective_price(market, cmd.side)
        if spec.notional(price, cmd.size) > MAX_UNITS:
            raise _Refused(
                Reject.INVALID_SIZE, "the order's notional is beyond the exchange's limit"
            )
        if cmd.tif is TimeInForce.POST_ONLY and self._crosses(market.book, cmd.side, price):
            raise _Refused(Reject.POST_ONLY_WOULD_TAKE)
        if stop and cmd.trigger_price is not None:
            mark = self.mark(spec.symbol)
            if mark is not None and self._reached(cmd.type, cmd.side, cmd.trigger_price, mark):
                raise _Refused(
                    Reject.WOULD_TRIGGER_IMMEDIATELY,
                    f"the mark {spec.fmt_price(mark)} is already past the trigger",
                )
        return market, price

    @staticmethod
    def _reached(type_: OrderType, side: Side, trigger: int, mark: int) -> bool:
        return mark >= trigger if triggers_on_rise(type_, side) else mark <= trigger

    def _check_perp_order(self, cmd: c.PlaceOrder, acct: Account, spec: MarketSpec) -> None:
        """A stale (or missing) index lets only reduce-only orders in; a reduce-only order
        may only shrink the position it faces, so it may not be larger than it."""
        if not cmd.reduce_only and self.oracle.index(spec.base) is None:
            raise _Refused(
                Reject.MARKET_REDUCE_ONLY, f"the {spec.base} index is stale: reduce-only orders"
            )
        if not cmd.reduce_only:
            return
        pos = acct.positions.get(spec.symbol)
        size = pos.size if pos is not None else 0
        if size == 0 or (size > 0) == (cmd.side is Side.BUY) or cmd.size > abs(size):
            raise _Refused(
                Reject.REDUCE_ONLY_WOULD_INCREASE,
                f"the position is {spec.fmt_size(size)}: a reduce-only order may only shrink it",
            )

    def _check_price(self, price: int, spec: MarketSpec) -> None:
        if price <= 0 or price > MAX_UNITS:
            raise _Refused(Reject.INVALID_PRICE, "price must be positive and not absurdly large")
        if price % spec.tick:
            raise _Refused(
                Reject.PRICE_NOT_ON_TICK, f"price must be a multiple of {spec.fmt_price(spec.tick)}"
            )

    def _check_state_for_new(self, market: Market, reduce_only: bool = False) -> None:
        state = market.state
        if state is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        if state is MarketState.CANCEL_ONLY:
            raise _Refused(Reject.MARKET_CANCEL_ONLY)
        if state is MarketState.REDUCE_ONLY and not (
            reduce_only and market.spec.kind is MarketKind.PERP
        ):  # a perp in reduce-only takes reduce-only orders; a spot market none
            raise _Refused(Reject.MARKET_REDUCE_ONLY)

    def _protective_price(self, market: Market, side: Side) -> int:
        best = market.book.best(side.opposite)
        if best is None:
            raise _Refused(Reject.NO_LIQUIDITY, "no opposite orders for a market order")
        tick, slip = market.spec.tick, self.config.market_slippage_ppm
        if side is Side.BUY:
            return ceil_div(ceil_div(best.price * (PPM + slip), PPM), tick) * tick
        return max(best.price * (PPM - slip) // PPM // tick * tick, tick)

    @staticmethod
    def _crosses(book: Book, side: Side, price: int) -> bool:
        best = book.best(side.opposite)
        if best is None:
            return False
        return best.price <= price if side is Side.BUY else best.price >= price

    def _walk(
        self,
        book: Book,
        side: Side,
        price: int,
        size: int,
        account_id: int,
        stp: StpMode,
        used: dict[int, int] | None = None,
        moved: dict[tuple[int, str], int] | None = None,
    ) -> tuple[int, int]:
        """(size, notional) a taker would fill, walking the book without changing it.

        Own orders are skipped with STP `cancel_maker` and stop the walk otherwise. `used`
        carries what earlier atomic legs already took from each maker, `moved` how far
        those fills moved each maker's perp position (a reduce-only maker fills no more
        than what is left of its position, as in `_match`); both are updated."""
        spec = self.markets[book.market].spec
        perp = spec.kind is MarketKind.PERP
        if moved is None:
            moved = {}
        need, notional = size, 0
        for level in book.levels_from_best(side.opposite):
            if (
                side is Side.BUY
                and level.price > price
                or side is Side.SELL
                and level.price < price
            ):
                break
            for maker in level.orders():
                taken = used.get(maker.order_id, 0) if used else 0
                if taken >= maker.remaining:
                    continue  # consumed or cancelled by an earlier atomic leg
                if maker.account_id == account_id:
                    if stp is StpMode.CANCEL_MAKER:
                        if used is not None:  # the real fill will cancel it: later legs skip it
                            used[maker.order_id] = maker.remaining
                        continue
                    return size - need, notional
                q = min(need, maker.remaining - taken)
                key = (maker.account_id, spec.symbol)
                if maker.reduce_only:
                    pos = self.accounts[maker.account_id].positions.get(spec.symbol)
                    held = (pos.size if pos is not None else 0) + moved.get(key, 0)
                    room = max(held, 0) if maker.side is Side.SELL else max(-held, 0)
                    if room == 0:  # the real match cancels it
                        if used is not None:
                            used[maker.order_id] = maker.remaining
                        continue
                    q = min(q, room)
                if q > 0:
                    notional += spec.notional(level.price, q)
                    if used is not None:
                        used[maker.order_id] = taken + q
                    if perp:
                        moved[key] = moved.get(key, 0) + (q if maker.side is Side.BUY else -q)
                need -= q
                if need == 0:
                    return size, notional
        return size - need, notional

    def _place(self, cmd: c.PlaceOrder, account_id: int, funds_checked: bool = False) -> Order:
        acct = self._account(account_id)
        market, price = self._validate_order(cmd, acct)
        spec = market.spec
        stp = cmd.stp or acct.stp
        tif = cmd.tif
        o = Order(
            self.next_order_id,
            account_id,
            cmd.client_order_id,
            spec.symbol,
            cmd.side,
            cmd.type,
            tif,
            price,
            cmd.size,
            stp,
            cmd.expire_ts,
            self._ts,
        )
        o.reduce_only = cmd.reduce_only
        if cmd.type in STOP_TYPES:  # waits for the mark; judged by margin when it triggers
            o.trigger_price = cmd.trigger_price
            o.status = OrderStatus.UNTRIGGERED
            self.next_order_id += 1
            self._index_live(o, acct)
            assert cmd.trigger_price is not None
            self.triggers[spec.symbol].add(
                o.order_id, cmd.trigger_price, triggers_on_rise(o.type, o.side)
            )
            self.untriggered += 1
            self._events.append(order_update(o.view()))
            return o
        need = self._required_hold(o, spec, self._tier(acct))
        hold_asset = spec.quote if cmd.side is Side.BUY else spec.base
        available = acct.available(hold_asset)
        if not funds_checked:
            rates = None
            short = need > 0 and need > available
            if short and acct.auto_borrow:
                # the order may hold more than the account has: what it lacks becomes a
                # loan as it fills, so the pool must have it and margin must pass
                rates = self._rates_with_loan(hold_asset, need - max(available, 0))
            if rates is not None or (
                not cmd.reduce_only and (spec.kind is MarketKind.PERP or self._has_exposure(acct))
            ):  # a spot order of an account with loans or positions can lower its health too
                self._check_margin(acct, {}, "with the order filled", rates, extra=o)
            if short and not acct.auto_borrow:
                raise _Refused(
                    Reject.INSUFFICIENT_BALANCE,
                    f"needs {need} {hold_asset} available, has {available}",
                )
        if (
            tif is TimeInForce.FOK
            and not funds_checked  # (an atomic batch has walked the book for all its legs)
            and self._walk(market.book, cmd.side, price, cmd.size, account_id, stp)[0] < cmd.size
        ):
            raise _Refused(Reject.FOK_NOT_FILLED, "the book cannot fill the whole size")
        self.next_order_id += 1
        self._refresh_hold(o, spec, acct)
        self._match_and_rest(o, market, acct)
        return o

    def _match_and_rest(self, o: Order, market: Market, acct: Account) -> None:
        """Match `o` as a taker, then rest or cancel its remainder; emits its final update."""
        stopped = self._match(o, market, acct)
        if o.status in LIVE_STATUSES:
            if o.remaining == 0:
                o.status = OrderStatus.FILLED
            elif stopped:
                self._finish(o, OrderStatus.CANCELLED, CancelReason.STP)
            elif o.type in LIMIT_TYPES and o.tif in (
                TimeInForce.GTC,
                TimeInForce.GTT,
                TimeInForce.POST_ONLY,
            ):
                o.status = OrderStatus.PARTIALLY_FILLED if o.filled else OrderStatus.OPEN
                market.book.add(o)
                self._index_live(o, acct)
            else:
                o.status = OrderStatus.CANCELLED
                o.cancel_reason = CancelReason.IOC_REMAINDER.value
        o.updated_ts = self._ts
        self._refresh_hold(o, market.spec, acct)
        self._emit_update(o, o.status not in LIVE_STATUSES)

    def _index_live(self, o: Order, acct: Account) -> None:
        """A live order (resting or waiting for its trigger) into the live indexes."""
        self.orders[o.order_id] = o
        acct.live[o.order_id] = o
        if o.market in self._perp_markets:
            acct.perp_orders += 1
        if o.reduce_only:
            acct.reduce_only += 1
        if o.client_order_id is not None:
            acct.client_ids[o.client_order_id] = o.order_id
        if o.expire_ts is not None:
            heapq.heappush(self.expiries, (o.expire_ts, o.order_id))
        self._track(o, self.markets[o.market].spec, acct)

    def _match(self, t: Order, market: Market, acct: Account) -> bool:
        """Fill `t` against the book; True when self-trade prevention stopped the taker."""
        book = market.book
        spec = market.spec
        buying = t.side is Side.BUY
        while t.remaining > 0:
            level = book.best(t.side.opposite)
            if level is None or (level.price > t.price if buying else level.price < t.price):
                return False
            maker = level.head
            while maker is not None and t.remaining > 0:
                nxt = maker.next
                if maker.account_id == t.account_id:
                    mode = t.stp
                    if mode is StpMode.CANCEL_TAKER:
                        return True
                    if mode is StpMode.CANCEL_MAKER or mode is StpMode.CANCEL_BOTH:
                        self._cancel_resting(maker, CancelReason.STP, OrderStatus.CANCELLED)
                        if mode is StpMode.CANCEL_BOTH:
                            return True
                    else:  # decrement: both shrink, no trade
                        q = min(t.remaining, maker.remaining)
                        book.shrink(maker, q)
                        maker.size -= q
                        t.size -= q
                        if maker.remaining == 0:
                            self._cancel_resting(maker, CancelReason.STP, OrderStatus.CANCELLED)
                        else:
                            maker.updated_ts = self._ts
                            self._refresh_hold(maker, spec, self.accounts[maker.account_id])
                            self._events.append(order_update(maker.view()))
                        if t.remaining == 0:
                            t.status = OrderStatus.CANCELLED
                            t.cancel_reason = CancelReason.STP.value
                            return False
                elif not (maker.reduce_only or t.reduce_only):
                    self._trade(t, maker, market, acct, min(t.remaining, maker.remaining))
                else:  # a reduce-only side fills no more than the position it reduces
                    q = min(t.remaining, maker.remaining)
                    if maker.reduce_only:
                        room = self._reduce_room(maker)
                        if room == 0:
                            self._cancel_resting(
                                maker, CancelReason.REDUCE_ONLY, OrderStatus.CANCELLED
                            )
                            maker = nxt
                            continue
                        q = min(q, room)
                    if t.reduce_only:
                        q = min(q, self._reduce_room(t))
                        if q == 0:
                            return False
                    self._trade(t, maker, market, acct, q)
                maker = nxt
        return False

    def _trade(self, t: Order, m: Order, market: Market, t_acct: Account, q: int) -> None:
        spec = market.spec
        m_acct = self.accounts[m.account_id]
        price = m.price
        notional = spec.notional(price, q)
        market.book.shrink(m, q)
        m.filled += q
        m.filled_notional += notional
        t.filled += q
        t.filled_notional += notional
        taker_fee = self._fee_for_fill(t, notional, self._tier(t_acct).taker_ppm)
        maker_fee = self._fee_for_fill(m, notional, self._tier(m_acct).maker_ppm)
        trade_id = self.next_trade_id
        self.next_trade_id += 1
        self._events.append(
            tuple.__new__(TradeEvent, (
                trade_id,
                spec.symbol,
                price,
                q,
                t.side,
                m.order_id,
                t.order_id,
                m.account_id,
                t.account_id,
                maker_fee,
                taker_fee,
                self._ts,
            ))  # fmt: skip
        )
        buyer, seller = (
            (t.account_id, m.account_id) if t.side is Side.BUY else (m.account_id, t.account_id)
        )
        ref = f"trade:{trade_id}"
        perp = spec.kind is MarketKind.PERP
        if perp:
            self._perp_fill(self.accounts[buyer], spec, q, price, ref)
            self._perp_fill(self.accounts[seller], spec, -q, price, ref)
        else:
            self._transfer(spec.quote, buyer, seller, notional, LedgerReason.TRADE, ref)
            self._transfer(spec.base, seller, buyer, q, LedgerReason.TRADE, ref)
        if taker_fee > 0:
            self._transfer(spec.quote, t.account_id, FEES, taker_fee, LedgerReason.FEE, ref)
        if maker_fee > 0:
            self._transfer(spec.quote, m.account_id, FEES, maker_fee, LedgerReason.FEE, ref)
        elif maker_fee < 0:
            self._transfer(spec.quote, FEES, m.account_id, -maker_fee, LedgerReason.FEE, ref)
        if perp:
            self._cover_holds(t_acct, spec.quote)
            self._cover_holds(m_acct, spec.quote)
        m.updated_ts = self._ts  # (the taker's hold is refreshed once, after its matching)
        if m.remaining == 0:
            market.book.remove(m)
            m.status = OrderStatus.FILLED
            self._unindex(m, m_acct)
        else:
            m.status = OrderStatus.PARTIALLY_FILLED
        self._refresh_hold(m, spec, m_acct)
        self._emit_update(m, m.status is OrderStatus.FILLED)

    def _perp_fill(self, acct: Account, spec: MarketSpec, qty: int, price: int, ref: str) -> None:
        """Move `acct`'s position by `qty` at `price`; realized PnL goes through clearing."""
        pos = acct.positions.get(spec.symbol)
        if pos is None:
            pos = acct.positions[spec.symbol] = Position(spec.symbol)
        before = pos.size
        pnl = pos.fill(qty, price, spec.base_unit)
        if acct.account_id >= FIRST_USER_ACCOUNT:
            self._touched.add(acct.account_id)
        moved = max(pos.size, 0) - max(before, 0)
        if moved:
            self.open_interest[spec.symbol] += moved
            self._oi_moved.add(spec.symbol)
        if not before:
            self.holders[spec.symbol].add(acct.account_id)
        elif not pos.size:
            self.holders[spec.symbol].discard(acct.account_id)
        self._events.append(
            PositionChanged(acct.account_id, spec.symbol, pos.size, pos.open_notional, pos.realized)
        )
        if acct.reduce_only:
            self._reduced.add((acct.account_id, spec.symbol))
        if pnl > 0:
            self._transfer(spec.quote, PNL_CLEARING, acct.account_id, pnl, LedgerReason.TRADE, ref)
        elif pnl < 0:
            self._transfer(spec.quote, acct.account_id, PNL_CLEARING, -pnl, LedgerReason.TRADE, ref)

    def _cover_holds(self, acct: Account, asset: str) -> None:
        """After a perp loss or fee: if `asset` no longer covers what spot orders hold,
        cancel them, newest first, until it does (CancelReason.MARGIN)."""
        if acct.hold(asset) <= 0 or acct.available(asset) >= 0 or acct.auto_borrow:
            return  # (with auto_borrow, holds may exceed the balance: margin stands behind)
        for o in sorted(acct.live.values(), key=lambda o: o.order_id, reverse=True):
            if acct.available(asset) >= 0:
                break
            spec = self.markets[o.market].spec
            if o.hold > 0 and (spec.quote if o.side is Side.BUY else spec.base) == asset:
                self._cancel_resting(o, CancelReason.MARGIN, OrderStatus.CANCELLED)

    def _unindex(self, o: Order, acct: Account) -> None:
        self.orders.pop(o.order_id, None)
        if acct.live.pop(o.order_id, None) is not None and o.market in self._perp_markets:
            acct.perp_orders -= 1
            if o.reduce_only:
                acct.reduce_only -= 1
        if o.client_order_id is not None and acct.client_ids.get(o.client_order_id) == o.order_id:
            del acct.client_ids[o.client_order_id]
        self._track(o, self.markets[o.market].spec, acct)

    def _emit_update(self, o: Order, finished: bool) -> None:
        """`o`'s order update; if it has `finished`, this is its last one, and the view it
        carries joins the window of recently finished orders."""
        view = o.view()
        self._events.append(order_update(view))
        if finished:
            self._remember_done(view)

    def _remember_done(self, view: OrderView) -> None:
        """The oldest finished order leaves the window as this one joins it."""
        done, queue, oid = self.done, self.done_queue, view.order_id
        if oid not in done:
            queue.append(oid)
        done[oid] = _plain_tuple(view)
        if len(queue) > RECENT_DONE_ORDERS:
            del done[queue.popleft()]

    def _finish(self, o: Order, status: OrderStatus, reason: CancelReason | None) -> None:
        o.status = status
        o.cancel_reason = reason.value if reason is not None else None

    def _cancel_resting(self, o: Order, reason: CancelReason | None, status: OrderStatus) -> None:
        """End a live resting order (cancel or expiry), release its hold, emit its update."""
        market = self.markets[o.market]
        acct = self.accounts[o.account_id]
        if o.level is not None:
            market.book.remove(o)
        elif o.status is OrderStatus.UNTRIGGERED:
            self.untriggered -= 1
            self.triggers[o.market].forget(o.order_id)
        self._finish(o, status, reason)
        o.updated_ts = self._ts
        self._unindex(o, acct)
        self._refresh_hold(o, market.spec, acct)
        self._emit_update(o, True)

    # ------------------------------------------------------- cancel and amend
    def _find_own(
        self, account_id: int, order_id: int | None, client_order_id: str | None
    ) -> Order:
        acct = self._account(account_id)
        if order_id is None and client_order_id is not None:
            order_id = acct.client_ids.get(client_order_id)
        o = self.orders.get(order_id) if order_id is not None else None
        if o is None and order_id is not None:
            done = self.finished(order_id)
            if done is not None and done.account_id == account_id:
                raise _Refused(Reject.ORDER_NOT_LIVE, f"order {order_id} is {done.status.value}")
        if o is None or o.account_id != account_id:
            raise _Refused(Reject.ORDER_NOT_FOUND, "no such order")
        return o

    def _cancel_command(self, cmd: c.CancelOrder) -> None:
        o = self._find_own(cmd.account_id, cmd.order_id, cmd.client_order_id)
        if self.markets[o.market].state is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        self._cancel_resting(o, cmd.reason, OrderStatus.CANCELLED)

    def _cancel_all(self, cmd: c.CancelAll) -> None:
        acct = self._account(cmd.account_id)
        if cmd.market is not None and cmd.market not in self.markets:
            raise _Refused(Reject.UNKNOWN_MARKET, f"unknown market {cmd.market}")
        self._cancel_orders_of(acct, cmd.reason, cmd.market)

    def _cancel_orders_of(
        self,
        acct: Account,
        reason: CancelReason | None,
        market: str | None = None,
        keep_reduce_only: bool = False,
    ) -> None:
        """Cancel the account's live orders (waiting stops too), oldest first: all of them or
        one market's, reduce-only ones kept if asked; never those of a halted market (they
        wait with it). Cancel-all, the dead-man switch and margin calls use it."""
        for oid in sorted(acct.live):
            o = acct.live.get(oid)
            if (
                o is None
                or (market is not None and o.market != market)
                or (keep_reduce_only and o.reduce_only)
                or self.markets[o.market].state is MarketState.HALTED
            ):
                continue
            self._cancel_resting(o, reason, OrderStatus.CANCELLED)

    def _batch_cancel(self, cmd: c.BatchCancel) -> None:
        if len(cmd.cancels) > self.config.max_batch:
            raise _Refused(Reject.BATCH_TOO_LARGE, f"at most {self.config.max_batch} items")
        for i, item in enumerate(cmd.cancels):
            self._events.append(BatchItem(i))
            try:
                self._cancel_command(
                    c.CancelOrder(
                        account_id=cmd.account_id,
                        order_id=item.order_id,
                        client_order_id=item.client_order_id,
                        reason=item.reason,
                    )
                )
            except _Refused as r:
                self._events.append(
                    Rejected(r.reason, cmd.account_id, r.detail, item.client_order_id, r.order_id)
                )

    def _amend(self, cmd: c.AmendOrder) -> None:
        o = self._find_own(cmd.account_id, cmd.order_id, cmd.client_order_id)
        market = self.markets[o.market]
        if market.state is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        if market.state is MarketState.CANCEL_ONLY:
            raise _Refused(Reject.MARKET_CANCEL_ONLY)
        spec = market.spec
        acct = self.accounts[o.account_id]
        if o.status is OrderStatus.UNTRIGGERED:
            raise _Refused(
                Reject.UNSUPPORTED_ORDER_TYPE,
                "an order waiting for its trigger cannot be amended: cancel it and place another",
            )
        new_price = o.price if cmd.price is None else cmd.price
        new_size = o.size if cmd.size is None else cmd.size
        if new_price == o.price and new_size == o.size:
            raise _Refused(Reject.NOTHING_TO_AMEND)
        if (
            market.state is MarketState.REDUCE_ONLY
            and spec.kind is MarketKind.PERP
            and not (new_price == o.price and new_size < o.size)
        ):  # a perp in reduce-only: an order may only shrink
            raise _Refused(Reject.MARKET_REDUCE_ONLY, "only a smaller size, at the same price")
        self._check_price(new_price, spec)
        if new_size <= 0 or new_size > MAX_UNITS:
            raise _Refused(Reject.INVALID_SIZE, "size must be positive")
        if new_size % spec.lot:
            raise _Refused(
                Reject.SIZE_NOT_ON_LOT, f"size must be a multiple of {spec.fmt_size(spec.lot)}"
            )
        if spec.notional(new_price, new_size) > MAX_UNITS:
            raise _Refused(
                Reject.INVALID_SIZE, "the order's notional is beyond the exchange's limit"
            )
        if new_size <= o.filled:
            raise _Refused(
                Reject.AMEND_SIZE_NOT_ABOVE_FILLED, "new size must exceed the filled size"
            )
        if o.reduce_only and new_size - o.filled > self._reduce_room(o):
            raise _Refused(
                Reject.REDUCE_ONLY_WOULD_INCREASE,
                "a reduce-only order may not outgrow the position",
            )
        if new_price == o.price and new_size < o.size:
            market.book.shrink(o, o.size - new_size)
            o.size = new_size
            o.updated_ts = self._ts
            self._refresh_hold(o, spec, acct)
            self._events.append(order_update(o.view()))
            return
        if o.tif is TimeInForce.POST_ONLY and self._crosses(market.book, o.side, new_price):
            raise _Refused(Reject.POST_ONLY_WOULD_TAKE)
        need = self._required_hold(o, spec, self._tier(acct), new_price, new_size)
        asset = spec.quote if o.side is Side.BUY else spec.base
        more, available = need - o.hold, acct.available(asset)
        rates = None
        if more > 0 and more > available:  # it would hold more than the account has
            if not acct.auto_borrow:
                raise _Refused(
                    Reject.INSUFFICIENT_BALANCE, f"needs {more} more {asset}, has {available}"
                )
            rates = self._rates_with_loan(asset, more - max(available, 0))
        if spec.kind is MarketKind.PERP or rates is not None or self._has_exposure(acct):
            self._check_amended_margin(o, spec, acct, new_price, new_size, need, rates)
        market.book.remove(o)
        o.price, o.size = new_price, new_size
        self._unindex(o, acct)  # re-indexed by _match_and_rest if it rests again
        self._refresh_hold(o, spec, acct)
        self._match_and_rest(o, market, acct)

    def _check_amended_margin(
        self,
        o: Order,
        spec: MarketSpec,
        acct: Account,
        price: int,
        size: int,
        hold: int,
        rates: dict[str, int] | None,
    ) -> None:
        """Initial health with `o` counted as amended (price, size and what it would hold)."""
        health = self._initial_health(acct, {}, self.borrow_rates())
        before = o.price, o.size, o.hold
        o.price, o.size, o.hold = price, size, hold
        self._track(o, spec, acct)
        try:
            self._check_margin(acct, {}, "with the amended order filled", rates, None, health)
        finally:
            o.price, o.size, o.hold = before
            self._track(o, spec, acct)

    # ----------------------------------------------------------------- expiry
    def _expire_due(self, ts: int) -> None:
        while self.expiries and self.expiries[0][0] <= ts:
            exp, oid = heapq.heappop(self.expiries)
            o = self.orders.get(oid)
            if o is not None and o.expire_ts == exp:
                self._cancel_resting(o, None, OrderStatus.EXPIRED)

    # ------------------------------------------------- triggers and reduce-only
    def _after_command(self) -> None:
        """Trigger the stop and take-profit orders the mark has reached and fit
        reduce-only orders to positions that moved, until neither has work left (a
        triggered order may move the mark or a position in turn)."""
        while True:
            fired = self._run_triggers() if self.untriggered else False
            fitted = self._fit_reduce_only() if self._reduced else False
            if not fired and not fitted:
                return

    def _run_triggers(self) -> bool:
        fired = False
        marks = self._index_marks(fresh=True)
        for market, waiting in self.triggers.items():
            m = self.markets[market]
            if not waiting or m.state in (MarketState.HALTED, MarketState.CANCEL_ONLY):
                continue
            mark = self._perp_mark(market, marks)
            if mark is None:
                continue  # no fresh index: orders wait
            for trigger, oid in waiting.due(mark):
                o = self.orders.get(oid)
                if (
                    o is None
                    or o.status is not OrderStatus.UNTRIGGERED
                    or o.trigger_price != trigger
                ):
                    continue  # cancelled or expired since
                self._trigger(o, m)
                fired = True
        return fired

    def _trigger(self, o: Order, market: Market) -> None:
        """The mark reached `o`'s trigger: it becomes a limit or market order now, judged
        like a new one (margin; a reduce-only one is fitted to the position)."""
        acct = self.accounts[o.account_id]
        self.untriggered -= 1
        self._unindex(o, acct)  # re-indexed by _match_and_rest if it rests
        o.status = OrderStatus.OPEN
        o.updated_ts = self._ts
        reason: CancelReason | None = None
        if market.state is MarketState.REDUCE_ONLY and not o.reduce_only:
            reason = CancelReason.MARKET_STATE
        elif o.reduce_only:
            room = self._reduce_room(o)
            if room == 0:
                reason = CancelReason.REDUCE_ONLY
            elif o.remaining > room:
                o.size = o.filled + room
        if reason is None and o.type not in LIMIT_TYPES:
            if market.book.best(o.side.opposite) is None:
                reason = CancelReason.NO_LIQUIDITY
            else:
                o.price = self._protective_price(market, o.side)
        if reason is None and not o.reduce_only and self.config.margin_checks:
            after = self._initial_health(acct, {}, self.borrow_rates(), o)
            if after is None or after < 0:
                reason = CancelReason.MARGIN
        if reason is not None:
            self._finish(o, OrderStatus.CANCELLED, reason)
            self._emit_update(o, True)
            return
        self._match_and_rest(o, market, acct)

    def _reduce_room(self, o: Order) -> int:
        """How much `o` may still fill without growing its account's position."""
        pos = self.accounts[o.account_id].positions.get(o.market)
        size = pos.size if pos is not None else 0
        return max(size, 0) if o.side is Side.SELL else max(-size, 0)

    def _fit_reduce_only(self) -> bool:
        """Shrink (or cancel) resting reduce-only orders larger than what is left of the
        position they reduce; each order on its own is capped by the position."""
        changed = False
        todo = sorted(self._reduced)
        self._reduced.clear()
        for aid, market in todo:
            acct = self.accounts[aid]
            for oid in sorted(acct.live):
                o = acct.live.get(oid)
                if (
                    o is None
                    or not o.reduce_only
                    or o.market != market
                    or o.status is OrderStatus.UNTRIGGERED
                ):
                    continue
                room = self._reduce_room(o)
                if room == 0:
                    self._cancel_resting(o, CancelReason.REDUCE_ONLY, OrderStatus.CANCELLED)
                    changed = True
                elif o.remaining > room:
                    self.markets[market].book.shrink(o, o.remaining - room)
                    o.size = o.filled + room
                    o.updated_ts = self._ts
                    self._track(o, self.markets[market].spec, acct)
                    self._events.append(order_update(o.view()))
                    changed = True
        return changed

    # ----------------------------------------------------------------- batches
    def _batch_place(self, cmd: c.BatchPlace) -> None:
        n = len(cmd.orders)
        if n == 0:
            raise _Refused(Reject.BATCH_EMPTY)
        if n > self.config.max_batch:
            raise _Refused(Reject.BATCH_TOO_LARGE, f"at most {self.config.max_batch} orders")
        if cmd.atomic:
            self._atomic_batch(cmd)
            return
        for i, item in enumerate(cmd.orders):
            self._events.append(BatchItem(i))
            try:
                self._place(item, cmd.account_id)
            except _Refused as r:
                self._events.append(
                    Rejected(r.reason, cmd.account_id, r.detail, item.client_order_id, r.order_id)
                )

    def _atomic_batch(self, cmd: c.BatchPlace) -> None:
        """All legs fill completely with the funds available, or nothing happens."""
        acct = self._account(cmd.account_id)
        for item in cmd.orders:
            if item.type is not OrderType.MARKET and item.tif not in (
                TimeInForce.IOC,
                TimeInForce.FOK,
            ):
                raise _Refused(
                    Reject.ATOMIC_LEG_NOT_IMMEDIATE, "atomic legs must be ioc, fok or market"
                )
        for i, item in enumerate(cmd.orders):
            if item.reduce_only:  # judged against a position earlier legs would change
                raise _Refused(
                    Reject.ATOMIC_BATCH_FAILED, f"leg {i}: reduce-only legs are not supported"
                )
        used: dict[int, int] = {}
        moved: dict[tuple[int, str], int] = {}
        avail: dict[str, int] = {}
        margin_change: dict[str, int] = {}  # balances and "M:size"/"M:notional" after all legs
        legs: list[c.PlaceOrder] = []
        taker_ppm = max(self._tier(acct).taker_ppm, 0)
        for i, item in enumerate(cmd.orders):
            try:
                market, price = self._validate_order(item, acct)
            except _Refused as r:
                raise _Refused(
                    Reject.ATOMIC_BATCH_FAILED, f"leg {i}: {r.reason.name} {r.detail}"
                ) from r
            if item.type in STOP_TYPES:  # it would wait for its trigger, not fill now
                raise _Refused(
                    Reject.ATOMIC_BATCH_FAILED, f"leg {i}: a stop or take-profit order waits"
                )
            spec = market.spec
            filled, notional = self._walk(
                market.book,
                item.side,
                price,
                item.size,
                acct.account_id,
                item.stp or acct.stp,
                used,
                moved,
            )
            if filled < item.size:
                raise _Refused(Reject.ATOMIC_BATCH_FAILED, f"leg {i}: the book cannot fill it")
            fee = ceil_div(notional * taker_ppm, PPM)
            if spec.kind is MarketKind.PERP:  # judged by margin, all legs together, below
                sign = 1 if item.side is Side.BUY else -1
                for key, d in (
                    (spec.symbol + ":size", sign * item.size),
                    (spec.symbol + ":notional", sign * notional),
                    (spec.quote, -fee),
                ):
                    margin_change[key] = margin_change.get(key, 0) + d
                legs.append(item if item.price is not None else replace(item, price=price))
                continue
            for asset in (spec.base, spec.quote):
                avail.setdefault(asset, acct.available(asset))
                margin_change[asset] = margin_change.get(asset, 0)
            if item.side is Side.BUY:
                avail[spec.quote] -= notional + fee
                avail[spec.base] += item.size
            else:
                avail[spec.base] -= item.size
                avail[spec.quote] += notional - fee
            short = sorted(a for a, v in avail.items() if v < 0)
            if short and not acct.auto_borrow:
                raise _Refused(Reject.ATOMIC_BATCH_FAILED, f"leg {i}: insufficient {short[0]}")
            margin_change[spec.base] += item.size if item.side is Side.BUY else -item.size
            margin_change[spec.quote] += -(notional + fee) if item.side is Side.BUY else (
                notional - fee)  # fmt: skip
            legs.append(item if item.price is not None else replace(item, price=price))
        rates: dict[str, int] | None = None
        for asset in sorted(a for a, v in avail.items() if v < 0):  # auto_borrow loans
            try:
                loan_rates = self._rates_with_loan(asset, -avail[asset])
            except _Refused as r:
                raise _Refused(Reject.ATOMIC_BATCH_FAILED, r.detail) from r
            rates = {**(rates or loan_rates), asset: loan_rates[asset]}
        if (
            rates is not None
            or any(k.endswith(":size") for k in margin_change)
            or self._has_exposure(acct)
        ):
            after = self._initial_health(
                acct, margin_change, self.borrow_rates() if rates is None else rates
            )
            if after is None or after < 0:
                raise _Refused(
                    Reject.ATOMIC_BATCH_FAILED,
                    "initial health after the batch would be "
                    + ("unknown (no fresh index price)" if after is None else f"{after}"),
                )
        for i, leg in enumerate(legs):
            self._events.append(BatchItem(i))
            self._place(leg, cmd.account_id, funds_checked=True)

    # ------------------------------------------------------------ dead man
    def _set_dead_man(self, cmd: c.SetDeadManSwitch) -> None:
        acct = self._account(cmd.account_id)
        if not 0 <= cmd.timeout_ms <= DEAD_MAN_MAX_MS:
            raise _Refused(
                Reject.INVALID_TIMEOUT, f"timeout_ms is 0 (disarm) up to {DEAD_MAN_MAX_MS}"
            )
        deadline = self._ts + cmd.timeout_ms if cmd.timeout_ms else None
        if deadline is None:
            self.dead_man.pop(acct.account_id, None)
        else:
            self.dead_man[acct.account_id] = deadline
        self._events.append(DeadManSwitch(acct.account_id, deadline, False, self._ts))

    def _fire_dead_men(self, ts: int) -> None:
        """Cancel every order (waiting stops too) of each account whose switch ran out."""
        for aid in sorted(a for a, deadline in self.dead_man.items() if deadline <= ts):
            del self.dead_man[aid]
            self._cancel_orders_of(self.accounts[aid], CancelReason.DEAD_MAN)
            self._events.append(DeadManSwitch(aid, None, True, ts))

    def _set_risk_plan(self, cmd: c.SetRiskPlan) -> None:
        acct = self._account(cmd.account_id)
        plan = RiskPlan(
            cmd.cure_window_ms, cmd.max_slice_ppm, cmd.order, cmd.hedge_groups, cmd.keep_last
        )
        cfg = self.config
        problems = plan_problems(
            plan, set(self.markets), set(cfg.assets), self._quote, cfg.max_cure_window_ms
        )
        if problems:
            code, detail = problems[0]
            raise _Refused(Reject[code], "; ".join(d for _, d in problems) if detail else code)
        acct.risk_plan = plan
        self._events.append(
            RiskPlanSet(
                acct.account_id,
                plan.cure_window_ms,
                plan.max_slice_ppm,
                plan.order,
                plan.hedge_groups,
                plan.keep_last,
            )
        )

    # ---------------------------------------------------------------- markets
    def _set_market_state(self, cmd: c.SetMarketState) -> None:
        market = self.markets.get(cmd.market)
        if market is None:
            raise _Refused(Reject.UNKNOWN_MARKET, f"unknown market {cmd.market}")
        market.state = cmd.state
        self._events.append(MarketStateChanged(cmd.market, cmd.state))

    def _set_oracle_prices(self, cmd: c.SetOraclePrices) -> None:
        """All prices or none: each asset known, not the quote asset, once, 0 < price."""
        if not cmd.prices:
            raise _Refused(Reject.INVALID_PRICE, "no prices")
        quote = self.config.quote_asset
        if not quote:
            raise _Refused(Reject.UNKNOWN_ASSET, "markets have no single quote asset")
        seen: set[str] = set()
        for asset, price in cmd.prices:
            if asset not in self.config.assets:
                raise _Refused(Reject.UNKNOWN_ASSET, f"unknown asset {asset}")
            if asset == quote:
                raise _Refused(Reject.UNKNOWN_ASSET, f"{asset} is the quote asset: no index")
            if asset in seen:
                raise _Refused(Reject.INVALID_PRICE, f"{asset} priced twice")
            if not 0 < price <= MAX_UNITS:
                raise _Refused(Reject.INVALID_PRICE, f"{asset}: price must be positive")
            seen.add(asset)
        for asset, price in sorted(cmd.prices):
            self.oracle.set(asset, price, self._ts)
            self._prices_moved.add(asset)
            self._events.append(IndexUpdated(asset, price, self._ts))

    # ------------------------------------------------------------- read side
    def balance(self, account_id: int, asset: str) -> int:
        acct = self.accounts.get(account_id)
        return acct.balance(asset) if acct else 0

    def hold(self, account_id: int, asset: str) -> int:
        acct = self.accounts.get(account_id)
        return acct.hold(asset) if acct else 0

    def book_levels(self, market: str, side: Side) -> list[tuple[int, int]]:
        return self.markets[market].book.depth(side)

    def order(self, order_id: int) -> OrderView | None:
        o = self.orders.get(order_id)
        return o.view() if o is not None else self.finished(order_id)

    def finished(self, order_id: int) -> OrderView | None:
        """A recently finished order, if it is one."""
        row = self.done.get(order_id)
        return tuple.__new__(OrderView, row) if row is not None else None

    def account_state(self, account_id: int) -> dict[str, Any] | None:
        """Balances, holds and settings of a user account, as integers (None if unknown)."""
        acct = self.accounts.get(account_id)
        if acct is None or account_id < FIRST_USER_ACCOUNT:
            return None
        tier = self._tier(acct)
        return {
            "account_id": account_id,
            "name": acct.name,
            "balances": {a: (acct.balance(a), acct.hold(a)) for a in self.config.assets},
            "stp": acct.stp.value,
            "auto_borrow": acct.auto_borrow,
            "tier": acct.tier,
            "maker_fee_ppm": tier.maker_ppm,
            "taker_fee_ppm": tier.taker_ppm,
            "open_orders": len(acct.live),
            "margin_state": (acct.margin.state if acct.margin else MarginState.NORMAL).value,
            "margin_deadline": acct.margin.deadline if acct.margin else None,
            "margin_since": acct.margin.since if acct.margin else None,
            **self._risk_fields(risk_view(self, acct)),
            "rates": self._balance_rates(acct),
            "positions": self._positions_view(acct),
        }

    def insurance_state(self) -> dict[str, Any]:
        """The insurance fund: balances (every asset), the positions it took over, and its
        equity at the index (what stands behind bad debt it pays, engine/liquidation.py)."""
        acct = self.accounts[INSURANCE]
        balances, positions = self._portfolio(acct, {})
        marks = self._index_marks(fresh=False)
        return {
            "account_id": INSURANCE,
            "equity": self._health_of(balances, positions, {}, Level.EQUITY, marks),
            "balances": {a: acct.balance(a) for a in self.config.assets},
            "positions": self._positions_view(acct),
        }

    @staticmethod
    def _risk_fields(view: RiskView) -> dict[str, Any]:
        return {
            "health": view.health,
            "health_by_asset": view.by_asset,
            "liquidation_prices": view.liquidation_prices,
        }

    def what_if(
        self, account_id: int, orders: list[WhatIfOrder], prices: dict[str, int]
    ) -> dict[str, Any]:
        """The account's risk now and after `orders` filled at `prices` (engine/portfolio.py);
        {"error": (Reject, detail)} for a question it cannot answer."""
        acct = self.accounts.get(account_id)
        if acct is None or account_id < FIRST_USER_ACCOUNT:
            return {"error": (Reject.UNKNOWN_ACCOUNT, "no such account")}
        for asset, price in prices.items():
            if asset not in self.config.assets or asset == self.config.quote_asset:
                return {"error": (Reject.UNKNOWN_ASSET, f"no index for {asset}")}
            if not 0 < price <= MAX_UNITS:
                return {"error": (Reject.INVALID_PRICE, f"{asset}: price must be positive")}
        change, reason, detail = what_if_change(self, acct, orders)
        if reason is not None:
            return {"error": (reason, detail)}
        return {
            "before": self._risk_fields(risk_view(self, acct)),
            "after": self._risk_fields(risk_view(self, acct, change, prices)),
        }

    def _positions_view(self, acct: Account) -> list[dict[str, Any]]:
        """Open perp positions with entry price, mark and unrealized PnL (integers)."""
        out = []
        for market, pos in sorted(acct.positions.items()):
            if not pos.size:
                continue
            unit = self.markets[market].spec.base_unit
            mark = self.mark(market)
            out.append(
                {
                    "market": market,
                    "base": self.markets[market].spec.base,
                    "size": pos.size,
                    "entry_price": pos.entry_price(unit),
                    "mark_price": mark,
                    "unrealized_pnl": pos.unrealized(mark, unit) if mark is not None else None,
                    "realized_pnl": pos.realized,
                }
            )
        return out

    def _balance_rates(self, acct: Account) -> dict[str, int]:
        """Per asset, ppm a year: the supply rate earned on a positive balance, minus the
        borrow rate paid on a negative one, 0 on none."""
        lending = self.lending_state()
        out = {}
        for asset in self.config.assets:
            bal = acct.balance(asset)
            pool = lending[asset]
            out[asset] = (
                pool["supply_rate_ppm"] if bal > 0 else -pool["borrow_rate_ppm"] if bal < 0 else 0
            )
        return out

    def health(self, account_id: int) -> dict[Level, int | None]:
        """The account's health at every level and its equity (engine/risk.py), at the last
        index prices (stale ones too: the view says which are stale)."""
        balances, positions = self._portfolio(self.accounts[account_id], {})
        rates = self.borrow_rates()
        marks = self._index_marks(fresh=False)
        return {level: self._health_of(balances, positions, rates, level, marks) for level in Level}

    def _initial_health(
        self,
        acct: Account,
        change: dict[str, int],
        rates: dict[str, int],
        extra: Order | None = None,
    ) -> int | None:
        """Initial health after `change` to the balances (and with order `extra`), at fresh
        index prices only, with each market's open orders counted as filled on the side
        that hurts more. Perp fills move the position ("M:size", "M:notional" keys) and
        pay the top fee; realizing PnL is a transfer inside the account, so it is left out."""
        balances, positions = self._portfolio(acct, change)
        marks = self._index_marks(fresh=True)
        top_fee = max(self._tier(acct).taker_ppm, 0)
        # per market, what its bids and its asks do if they all fill (acct.open_fills):
        # [quantity (base, or perp size), perp notional, quote, orders]
        fills = self._open_fills(acct)
        sides = {m: (list(b), list(a)) for m, (b, a) in fills.items() if b[3] or a[3]}
        if extra is not None:
            spec = self.markets[extra.market].spec
            effect = self._fill_effect(extra, spec, top_fee, 0)
            if spec.kind is MarketKind.SPOT and extra.side is Side.BUY:  # holds nothing yet
                notional = spec.notional(extra.price, extra.remaining)
                effect = (effect[0], 0, -notional - ceil_div(notional * top_fee, PPM))
            pair = sides.get(extra.market)
            if pair is None:
                pair = sides[extra.market] = ([0, 0, 0, 0], [0, 0, 0, 0])
            agg = pair[0] if extra.side is Side.BUY else pair[1]
            for k in range(3):
                agg[k] += effect[k]
            agg[3] += 1
        # Health is a sum of per-asset pieces: a fill combination on one asset's markets
        # changes that asset's piece and the quote balance only, so only those are redone.
        quote, level = self._quote, Level.INITIAL
        groups: dict[str, list[str]] = {}
        for market in sorted(sides):
            groups.setdefault(self.markets[market].spec.base, []).append(market)
        perps_of: dict[str, list[str]] = {}  # base asset -> its perp markets in play
        for market in sorted(set(positions) | set(sides)):
            spec = self.markets[market].spec
            if spec.kind is MarketKind.PERP:
                perps_of.setdefault(spec.base, []).append(market)
        perp_marks = {m: self._perp_mark(m, marks) for ms in perps_of.values() for m in ms}
        tokens = upnl = realized = 0  # the assets without orders, once
        for asset in sorted(({a for a in balances if a != quote} | set(perps_of)) - set(groups)):
            piece = self._piece(asset, balances, positions, perps_of, perp_marks, marks, rates)
            if piece is None:
                return None
            tokens, upnl, realized = tokens + piece[0], upnl + piece[1], realized + piece[2]
        # Per asset with orders, every combination of its markets' fills: the asset's piece
        # and how much quote it moves. The worst case is then tried over every choice of
        # one combination per asset (a quote loan weighs more than a quote balance, so
        # assets are not independent).
        options: list[list[tuple[tuple[int, int, int], int]]] = []
        for base in sorted(groups):
            markets = groups[base]
            choices = [[-1] + [k for k in (0, 1) if sides[m][k][3]] for m in markets]
            found: list[tuple[tuple[int, int, int], int]] = []
            for combo in product(*choices):
                before = balances.get(quote, 0)
                self._count_fills(balances, positions, markets, sides, combo, 1)
                piece = self._piece(base, balances, positions, perps_of, perp_marks, marks, rates)
                moved = balances.get(quote, 0) - before
                self._count_fills(balances, positions, markets, sides, combo, -1)
                if piece is None:
                    return None
                found.append((piece, moved))
            options.append(found)
        cash, rate = balances.get(quote, 0), rates.get(quote, 0)
        worst: int | None = None
        for pick in product(*options):  # (one empty pick when there are no orders)
            t, u, r, q = tokens, upnl, realized, cash
            for (token, pu, pr), moved in pick:
                t, u, r, q = t + token, u + pu, r + pr, q + moved
            h = combine(quote_num(q + r, rate, level, u), t, self._risk_top)
            if worst is None or h < worst:
                worst = h
        return worst

    def _piece(
        self,
        asset: str,
        balances: dict[str, int],
        positions: dict[str, list[int]],
        perps_of: dict[str, list[str]],
        perp_marks: dict[str, int | None],
        marks: dict[str, int],
        rates: dict[str, int],
    ) -> tuple[int, int, int] | None:
        """One asset's part of initial health: (its token value scaled to DEN * top, the
        unrealized PnL of its perps, the PnL a flat position realized); None without a
        price it needs."""
        balance = balances.get(asset, 0)
        size = abs_size = size_mark = upnl = realized = 0
        for market in perps_of.get(asset, ()):
            pos = positions.get(market)
            if pos is None:
                continue
            n, notional = pos
            if not n:
                realized -= notional
                continue
            mark = perp_marks[market]
            if mark is None:
                return None
            upnl += n * mark // self.markets[market].spec.base_unit - notional
            size += n
            abs_size += abs(n)
            size_mark += n * mark
        if balance == 0 and not abs_size:
            return 0, upnl, realized
        index = marks.get(asset)
        if index is None:
            return None
        value = token_num(
            balance, size, abs_size, size_mark, index, self.config.risk.get(asset),
            rates.get(asset, 0), Level.INITIAL,
        )  # fmt: skip
        return value * (self._risk_top // 10 ** self._decimals[asset]), upnl, realized

    def _count_fills(
        self,
        balances: dict[str, int],
        positions: dict[str, list[int]],
        markets: list[str],
        sides: dict[str, tuple[list[int], list[int]]],
        combo: tuple[int, ...],
        sign: int,
    ) -> None:
        """Add (sign 1) or take back (-1) the fills of `combo`: per market, -1 for none,
        0 for its bids, 1 for its asks."""
        quote = self._quote
        for market, choice in zip(markets, combo, strict=True):
            if choice < 0:
                continue
            fill = sides[market][choice]
            spec = self.markets[market].spec
            if spec.kind is MarketKind.PERP:
                pos = positions.get(market)
                if pos is None:
                    pos = positions[market] = [0, 0]
                pos[0] += sign * fill[0]
                pos[1] += sign * fill[1]
            else:
                balances[spec.base] = balances.get(spec.base, 0) + sign * fill[0]
            balances[quote] = balances.get(quote, 0) + sign * fill[2]

    @staticmethod
    def _portfolio(
        acct: Account, change: dict[str, int]
    ) -> tuple[dict[str, int], dict[str, list[int]]]:
        """The account's balances and open positions ([size, open notional] per perp), with
        `change` applied: asset keys move balances, "M:size" / "M:notional" positions."""
        balances = dict(acct.balances)
        positions = {m: [p.size, p.open_notional] for m, p in acct.positions.items() if p.size}
        for key, delta in change.items():
            market, colon, what = key.partition(":")
            if not colon:
                balances[key] = balances.get(key, 0) + delta
                continue
            pos = positions.get(market)
            if pos is None:
                pos = positions[market] = [0, 0]
            pos[0 if what == "size" else 1] += delta
        return balances, positions

    def _health_of(
        self,
        balances: dict[str, int],
        positions: dict[str, list[int]],
        rates: dict[str, int],
        level: Level,
        marks: dict[str, int],
        perp_marks: dict[str, int] | None = None,
        parts: dict[str, int] | None = None,
        slopes: dict[str, int] | None = None,
    ) -> int | None:
        """engine/risk.py on balances and positions, at the index prices `marks` and each
        perp's mark (or the one `perp_marks` gives it); `parts` receives the contribution
        of each asset. A position the counted fills made flat has realized its open
        notional in the quote asset."""
        perps: list[PerpExposure] = []
        realized = 0
        for market, (size, notional) in positions.items():
            if not size:
                realized -= notional
                continue
            spec = self.markets[market].spec
            if perp_marks is not None and market in perp_marks:
                mark: int | None = perp_marks[market]
            else:
                mark = self._perp_mark(market, marks)
            if mark is None:
                return None
            upnl = size * mark // spec.base_unit - notional
            perps.append(PerpExposure(spec.base, size, mark, upnl))
        if realized:
            balances = dict(balances)
            balances[self._quote] = balances.get(self._quote, 0) + realized
        cfg = self.config
        return health(
            balances, perps, marks, self._decimals, cfg.risk, rates, self._quote, level, parts,
            slopes,
        )  # fmt: skip

    def _index_marks(self, fresh: bool) -> dict[str, int]:
        if fresh:
            return {a: p for a in self.oracle.prices if (p := self.oracle.index(a)) is not None}
        return {a: e.price for a, e in self.oracle.prices.items()}

    def _perp_mark(self, market: str, marks: dict[str, int]) -> int | None:
        m = self.markets[market]
        bid, ask = m.book.best(Side.BUY), m.book.best(Side.SELL)
        return mark_price(
            marks.get(m.spec.base),
            bid.price if bid is not None else None,
            ask.price if ask is not None else None,
            self.funding[market].basis,
        )

    def mark(self, market: str) -> int | None:
        """A perp's mark price now (from the last index, stale or not)."""
        return self._perp_mark(market, self._index_marks(False))

    def asset_totals(self) -> dict[str, tuple[int, int, int]]:
        """Per asset: (sum over user accounts, over system accounts, the external account).
        Conservation: the three add up to exactly 0."""
        out: dict[str, tuple[int, int, int]] = {}
        for asset in self.config.assets:
            users = system = 0
            for aid, acct in self.accounts.items():
                if aid >= FIRST_USER_ACCOUNT:
                    users += acct.balance(asset)
                elif aid != EXTERNAL:
                    system += acct.balance(asset)
            out[asset] = (users, system, self.accounts[EXTERNAL].balance(asset))
        return out

    def open_orders(self, account_id: int) -> list[OrderView]:
        """The account's live orders, oldest first."""
        return self.live_orders(account_id)[::-1]

    def live_orders(
        self, account_id: int, market: str | None = None, below: int | None = None,
        limit: int | None = None,
    ) -> list[OrderView]:
        """A page of the account's live orders (resting or waiting for a trigger), newest
        first: only `market`'s if given, only ids below `below` if given, at most `limit`.
        (The ids come nearly in order, so sorting them is close to linear; a page deep
        in the list starts from a binary search.)"""
        acct = self.accounts.get(account_id)
        if acct is None:
            return []
        live = acct.live
        ids = sorted(live)
        i = len(ids) if below is None else bisect_left(ids, below)
        out: list[OrderView] = []
        while i > 0 and (limit is None or len(out) < limit):
            i -= 1
            o = live[ids[i]]
            if market is None or o.market == market:
                out.append(o.view())
        return out

    # ------------------------------------------------ snapshot and invariants
    def snapshot(self) -> dict[str, Any]:
        from engine.snapshot import take_snapshot

        return take_snapshot(self)

    @classmethod
    def restore(cls, config: ExchangeConfig, snapshot: dict[str, Any]) -> Exchange:
        from engine.snapshot import restore_snapshot

        return restore_snapshot(cls(config), snapshot)

    def state_hash(self) -> str:
        from engine.snapshot import hash_snapshot

        return hash_snapshot(self.snapshot())

    def check_invariants(self) -> list[str]:
        from engine.invariants import check

        return check(self)
