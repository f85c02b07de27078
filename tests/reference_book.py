"""An independent, deliberately simple reference of docs/orders.md (spot).

Written from the spec alone, never from `engine/exchange.py`: plain dicts and
lists, linear scans, no cleverness. The differential tests drive it and the
real engine with the same commands and compare what they do.

Conventions (where the spec leaves room, the choice is written next to it):
* a market order must say `ioc` or `fok`: the command's default `gtc` is refused
  with `INVALID_TIME_IN_FORCE` like any other;
* a client order id names the account's live order holding it (ids may be reused
  once an order ends); one held by no live order is `ORDER_NOT_FOUND`;
* expiry of GTT orders runs at the start of every command (before anything
  else), in every market state;
* an order's STP mode is resolved at placement (its `stp`, else the account's);
* a buy's fee reserve uses the account's tier; the engine re-prices live holds
  on a tier change (or refuses it), which this model does not do, so the tests
  change a tier only while the account has no live order;
* an atomic batch places its legs in turn (each sees what the earlier ones did,
  STP cancellations included) and a leg "fills completely" when it trades its
  whole size (an STP decrement shrinking it does not count as filling);
* amend checks: the new price (tick), then the new size (> 0 `INVALID_SIZE`, lot,
  above the filled size);
* cancel checks: found, live, then not halted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from engine.commands import (
    AmendOrder,
    BatchPlace,
    CancelAll,
    CancelOrder,
    Command,
    CreateAccount,
    Deposit,
    PlaceOrder,
    SetAccountSettings,
    SetMarketState,
    Tick,
    Withdraw,
)
from engine.markets import ExchangeConfig, MarketSpec
from engine.types import (
    CancelReason,
    MarketState,
    OrderStatus,
    OrderType,
    Reject,
    Side,
    StpMode,
    TimeInForce,
)

PPM = 1_000_000
EXTERNAL, FEES = 1, 2
SYSTEM_ACCOUNTS = (1, 2, 3, 4, 5)

# (price, size, maker_order_id, taker_order_id, maker_fee, taker_fee)
TradeTuple = tuple[int, int, int, int, int, int]
# (asset, from_account, to_account, amount, reason)
TransferTuple = tuple[str, int, int, int, str]


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass
class RefOrder:
    order_id: int
    account_id: int
    client_order_id: str | None
    market: str
    side: Side
    type: OrderType
    tif: TimeInForce
    price: int  # the limit (for a market order: its protective limit)
    size: int
    stp: StpMode
    expire_ts: int | None
    filled: int = 0
    filled_notional: int = 0
    status: OrderStatus = OrderStatus.OPEN
    cancel_reason: str | None = None
    pos_basis: int = 0  # sum(notional_i * rate_i) over fills with a positive rate
    neg_basis: int = 0  # sum(notional_i * |rate_i|) over fills with a negative rate
    fees_paid: int = 0
    rebates: int = 0
    hold: int = 0  # in quote (buy) or base (sell)
    arrival: int = 0  # position in the queue of its price level (smaller = earlier)
    resting: bool = False

    @property
    def live(self) -> bool:
        return self.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)

    @property
    def remaining(self) -> int:
        return self.size - self.filled if self.live else 0


@dataclass
class RefResult:
    rejected: Reject | None = None
    reject_order_id: int | None = None  # for DUPLICATE_CLIENT_ORDER_ID: the live order
    order_id: int | None = None  # the new order of a PlaceOrder
    trades: list[TradeTuple] = field(default_factory=list)
    transfers: list[TransferTuple] = field(default_factory=list)
    items: list[RefResult] = field(default_factory=list)  # one per batch item
    replay: bool = False  # an idempotent deposit / withdrawal replay
    touched: set[int] = field(default_factory=set)  # order ids changed by the command
    account_id: int | None = None  # CreateAccount


@dataclass
class _Account:
    tier: int
    stp: StpMode = StpMode.CANCEL_TAKER


class _Refused(Exception):
    def __init__(self, reason: Reject, order_id: int | None = None) -> None:
        super().__init__(reason.name)
        self.reason = reason
        self.order_id = order_id


class ReferenceExchange:
    def __init__(self, config: ExchangeConfig) -> None:
        self.cfg = config
        self.accounts: dict[int, _Account] = {}
        self.next_account_id = 1000
        self.balances: dict[tuple[int, str], int] = {}
        self.orders: dict[int, RefOrder] = {}  # every order ever accepted
        self.live: dict[int, RefOrder] = {}  # the live ones
        self.books: dict[str, list[RefOrder]] = {m: [] for m in config.markets}  # resting
        self.by_client: dict[tuple[int, str], list[int]] = {}  # (account, client id) -> ids
        self.next_order_id = 1
        self.arrivals = 0
        self.market_state: dict[str, MarketState] = {m: MarketState.OPEN for m in config.markets}
        self.deposits: dict[str, tuple[int, str, int]] = {}
        self.withdrawals: dict[str, tuple[int, str, int]] = {}
        self.ts = 0

    # ------------------------------------------------------------------ accessors

    def balance(self, account_id: int, asset: str) -> int:
        return self.balances.get((account_id, asset), 0)

    def hold(self, account_id: int, asset: str) -> int:
        total = 0
        for o in self.live.values():
            if o.account_id != account_id:
                continue
            m = self.cfg.markets[o.market]
            if (m.quote if o.side is Side.BUY else m.base) == asset:
                total += o.hold
        return total

    def available(self, account_id: int, asset: str) -> int:
        return self.balance(account_id, asset) - self.hold(account_id, asset)

    def resting(self, market: str, side: Side) -> list[RefOrder]:
        """Resting orders of one side, best first (price, then arrival)."""
        found = [o for o in self.books[market] if o.side is side]
        if side is Side.BUY:
            found.sort(key=lambda o: (-o.price, o.arrival))
        else:
            found.sort(key=lambda o: (o.price, o.arrival))
        return found

    def book_levels(self, market: str, side: Side) -> list[tuple[int, int]]:
        levels: list[tuple[int, int]] = []
        for o in self.resting(market, side):
            if levels and levels[-1][0] == o.price:
                levels[-1] = (o.price, levels[-1][1] + o.remaining)
            else:
                levels.append((o.price, o.remaining))
        return levels

    def order_status(self, order_id: int) -> OrderStatus | None:
        o = self.orders.get(order_id)
        return None if o is None else o.status

    def order_filled(self, order_id: int) -> int | None:
        o = self.orders.get(order_id)
        return None if o is None else o.filled

    def order_remaining(self, order_id: int) -> int | None:
        o = self.orders.get(order_id)
        return None if o is None else o.remaining

    def live_orders(self, account_id: int | None = None) -> list[RefOrder]:
        return [
            o for _, o in sorted(self.live.items())
            if account_id is None or o.account_id == account_id
        ]

    def account_ids(self) -> list[int]:
        return sorted(self.accounts)

    # ------------------------------------------------------------------ commands

    def apply(self, cmd: Command) -> RefResult:
        res = RefResult()
        self.ts = cmd.ts
        self._expire(cmd.ts, res)
        try:
            if isinstance(cmd, CreateAccount):
                acct = self.next_account_id
                self.next_account_id += 1
                self.accounts[acct] = _Account(tier=cmd.tier)
                res.account_id = acct
            elif isinstance(cmd, SetAccountSettings):
                a = self.accounts.get(cmd.account_id)
                if a is None:
                    raise _Refused(Reject.UNKNOWN_ACCOUNT)
                if cmd.stp is not None:
                    a.stp = cmd.stp
                if cmd.tier is not None:
                    a.tier = cmd.tier
            elif isinstance(cmd, Deposit):
                self._deposit(cmd, res)
            elif isinstance(cmd, Withdraw):
                self._withdraw(cmd, res)
            elif isinstance(cmd, PlaceOrder):
                res.order_id = self._place(cmd, cmd.ts, res)
            elif isinstance(cmd, CancelOrder):
                self._cancel(cmd, res)
            elif isinstance(cmd, CancelAll):
                self._cancel_all(cmd, res)
            elif isinstance(cmd, AmendOrder):
                self._amend(cmd, res)
            elif isinstance(cmd, BatchPlace):
                self._batch(cmd, res)
            elif isinstance(cmd, SetMarketState):
                if cmd.market not in self.cfg.markets:
                    raise _Refused(Reject.UNKNOWN_MARKET)
                self.market_state[cmd.market] = cmd.state
            elif isinstance(cmd, Tick):
                pass
            else:
                raise NotImplementedError(type(cmd).__name__)
        except _Refused as r:
            res.rejected = r.reason
            res.reject_order_id = r.order_id
        return res

    # ------------------------------------------------------------------ money

    def _move(self, asset: str, frm: int, to: int, amount: int, reason: str,
              res: RefResult) -> None:
        if amount == 0:
            return
        assert amount > 0
        self.balances[(frm, asset)] = self.balance(frm, asset) - amount
        self.balances[(to, asset)] = self.balance(to, asset) + amount
        res.transfers.append((asset, frm, to, amount, reason))

    def _deposit(self, cmd: Deposit, res: RefResult) -> None:
        key = (cmd.account_id, cmd.asset, cmd.amount)
        seen = self.deposits.get(cmd.deposit_id)
        if seen is not None:
            if seen != key:
                raise _Refused(Reject.DUPLICATE_DEPOSIT_ID)
            res.replay = True
            return
        if cmd.amount <= 0:
            raise _Refused(Reject.INVALID_AMOUNT)
        if cmd.asset not in self.cfg.assets:
            raise _Refused(Reject.UNKNOWN_ASSET)
        if cmd.account_id not in self.accounts:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        self._move(cmd.asset, EXTERNAL, cmd.account_id, cmd.amount, "deposit", res)
        self.deposits[cmd.deposit_id] = key

    def _withdraw(self, cmd: Withdraw, res: RefResult) -> None:
        key = (cmd.account_id, cmd.asset, cmd.amount)
        seen = self.withdrawals.get(cmd.withdrawal_id)
        if seen is not None:
            if seen != key:
                raise _Refused(Reject.DUPLICATE_WITHDRAWAL_ID)
            res.replay = True
            return
        if cmd.amount <= 0:
            raise _Refused(Reject.INVALID_AMOUNT)
        if cmd.asset not in self.cfg.assets:
            raise _Refused(Reject.UNKNOWN_ASSET)
        if cmd.account_id not in self.accounts:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        if self.available(cmd.account_id, cmd.asset) < cmd.amount:
            raise _Refused(Reject.INSUFFICIENT_BALANCE)
        self._move(cmd.asset, cmd.account_id, EXTERNAL, cmd.amount, "withdrawal", res)
        self.withdrawals[cmd.withdrawal_id] = key

    # ------------------------------------------------------------------ fees and holds

    def _rates(self, account_id: int) -> tuple[int, int]:
        tier = self.cfg.fee_tiers[self.accounts[account_id].tier]
        return tier.maker_ppm, tier.taker_ppm

    def _reserve_rate(self, account_id: int) -> int:
        maker, taker = self._rates(account_id)
        return max(maker, taker, 0)

    def _hold_of(self, o: RefOrder, price: int, remaining: int) -> int:
        """What order `o` must hold with this limit and remaining size (docs: Holds)."""
        if remaining <= 0:
            return 0
        if o.side is Side.SELL:
            return remaining
        m = self.cfg.markets[o.market]
        n = m.notional(price, remaining)
        r = self._reserve_rate(o.account_id)
        return n + ceil_div(o.pos_basis + n * r, PPM) - o.fees_paid

    def _refresh_hold(self, o: RefOrder) -> None:
        o.hold = self._hold_of(o, o.price, o.remaining) if o.live else 0

    def _charge(self, o: RefOrder, notional: int, rate: int) -> int:
        """Cumulative fee of one fill: > 0 a fee, < 0 a rebate (docs: Fees)."""
        if rate > 0:
            before = ceil_div(o.pos_basis, PPM)
            o.pos_basis += notional * rate
            o.fees_paid = ceil_div(o.pos_basis, PPM)
            return o.fees_paid - before
        if rate < 0:
            before = o.neg_basis // PPM
            o.neg_basis += notional * (-rate)
            o.rebates = o.neg_basis // PPM
            return -(o.rebates - before)
        return 0

    # ------------------------------------------------------------------ order life

    def _set_status(self, o: RefOrder) -> None:
        if o.filled >= o.size:
            o.status = OrderStatus.FILLED
        elif o.filled > 0:
            o.status = OrderStatus.PARTIALLY_FILLED
        else:
            o.status = OrderStatus.OPEN

    def _rest(self, o: RefOrder) -> None:
        """Into the book, at the tail of its price level."""
        self.arrivals += 1
        o.arrival = self.arrivals
        o.resting = True
        self.books[o.market].append(o)

    def _unrest(self, o: RefOrder) -> None:
        if o.resting:
            o.resting = False
            self.books[o.market].remove(o)

    def _end(self, o: RefOrder, status: OrderStatus, reason: str | None,
             res: RefResult) -> None:
        o.status = status
        o.cancel_reason = reason
        o.hold = 0
        self._unrest(o)
        self.live.pop(o.order_id, None)
        res.touched.add(o.order_id)

    def _expire(self, ts: int, res: RefResult) -> None:
        for o in self.live_orders():
            if o.tif is TimeInForce.GTT and o.expire_ts is not None and o.expire_ts <= ts:
                self._end(o, OrderStatus.EXPIRED, None, res)

    def _crosses(self, side: Side, limit: int, maker_price: int) -> bool:
        return maker_price <= limit if side is Side.BUY else maker_price >= limit

    def _best_opposite(self, market: str, side: Side) -> RefOrder | None:
        found = self.resting(market, side.opposite)
        return found[0] if found else None

    # ------------------------------------------------------------------ placing

    def _place(self, cmd: PlaceOrder, ts: int, res: RefResult) -> int:
        acct = self.accounts.get(cmd.account_id)
        if acct is None:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        m = self.cfg.markets.get(cmd.market)
        if m is None:
            raise _Refused(Reject.UNKNOWN_MARKET)
        state = self.market_state[m.symbol]
        if state is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        if state is MarketState.CANCEL_ONLY:
            raise _Refused(Reject.MARKET_CANCEL_ONLY)
        if state is MarketState.REDUCE_ONLY:
            raise _Refused(Reject.MARKET_REDUCE_ONLY)
        if cmd.type not in (OrderType.LIMIT, OrderType.MARKET):
            raise _Refused(Reject.UNSUPPORTED_ORDER_TYPE)
        if cmd.reduce_only:
            raise _Refused(Reject.REDUCE_ONLY_NOT_SPOT)
        if cmd.size <= 0:
            raise _Refused(Reject.INVALID_SIZE)
        if cmd.size % m.lot != 0:
            raise _Refused(Reject.SIZE_NOT_ON_LOT)
        if cmd.size < m.min_size:
            raise _Refused(Reject.SIZE_BELOW_MINIMUM)
        if cmd.type is OrderType.LIMIT and cmd.price is None:
            raise _Refused(Reject.PRICE_REQUIRED)
        if cmd.price is not None:
            if cmd.price <= 0:
                raise _Refused(Reject.INVALID_PRICE)
            if cmd.price % m.tick != 0:
                raise _Refused(Reject.PRICE_NOT_ON_TICK)
        tif = cmd.tif
        if cmd.type is OrderType.MARKET and tif not in (TimeInForce.IOC, TimeInForce.FOK):
            raise _Refused(Reject.INVALID_TIME_IN_FORCE)
        if tif is TimeInForce.GTT:
            if cmd.expire_ts is None or cmd.expire_ts <= ts:
                raise _Refused(Reject.INVALID_EXPIRE_TS)
        elif cmd.expire_ts is not None:
            raise _Refused(Reject.INVALID_EXPIRE_TS)
        if cmd.client_order_id is not None:
            for o in self.live_orders(cmd.account_id):
                if o.client_order_id == cmd.client_order_id:
                    raise _Refused(Reject.DUPLICATE_CLIENT_ORDER_ID, o.order_id)
        limit = cmd.price
        if limit is None:  # a market order without a price: protective limit
            best = self._best_opposite(m.symbol, cmd.side)
            if best is None:
                raise _Refused(Reject.NO_LIQUIDITY)
            limit = self._protective_limit(m, cmd.side, best.price)
        if tif is TimeInForce.POST_ONLY:
            best = self._best_opposite(m.symbol, cmd.side)
            if best is not None and self._crosses(cmd.side, limit, best.price):
                raise _Refused(Reject.POST_ONLY_WOULD_TAKE)
        order = RefOrder(
            order_id=self.next_order_id, account_id=cmd.account_id,
            client_order_id=cmd.client_order_id, market=m.symbol, side=cmd.side,
            type=cmd.type, tif=tif, price=limit, size=cmd.size,
            stp=cmd.stp if cmd.stp is not None else acct.stp,
            expire_ts=cmd.expire_ts,
        )
        need = self._hold_of(order, limit, cmd.size)
        asset = m.quote if cmd.side is Side.BUY else m.base
        if self.available(cmd.account_id, asset) < need:
            raise _Refused(Reject.INSUFFICIENT_BALANCE)
        if tif is TimeInForce.FOK and not self._fok_fills(order):
            raise _Refused(Reject.FOK_NOT_FILLED)
        # accepted
        self.next_order_id += 1
        self.orders[order.order_id] = order
        self.live[order.order_id] = order
        if order.client_order_id is not None:
            key = (order.account_id, order.client_order_id)
            self.by_client.setdefault(key, []).append(order.order_id)
        order.hold = need
        res.touched.add(order.order_id)
        self._match(order, res)
        self._after_match(order, res)
        return order.order_id

    def _protective_limit(self, m: MarketSpec, side: Side, best: int) -> int:
        slip = self.cfg.market_slippage_ppm
        if side is Side.BUY:
            return ceil_div(best * (PPM + slip), PPM * m.tick) * m.tick
        return max(m.tick, (best * (PPM - slip)) // (PPM * m.tick) * m.tick)

    def _fok_fills(self, order: RefOrder) -> bool:
        want = order.size
        for maker in self.resting(order.market, order.side.opposite):
            if not self._crosses(order.side, order.price, maker.price):
                break
            if maker.account_id == order.account_id:
                if order.stp is StpMode.CANCEL_MAKER:
                    continue
                break
            want -= min(want, maker.remaining)
            if want == 0:
                return True
        return want == 0

    def _after_match(self, order: RefOrder, res: RefResult) -> None:
        if not order.live:
            return
        rests = order.type is OrderType.LIMIT and order.tif in (
            TimeInForce.GTC, TimeInForce.GTT, TimeInForce.POST_ONLY)
        if rests:
            self._rest(order)
        else:
            self._end(order, OrderStatus.CANCELLED, CancelReason.IOC_REMAINDER.value, res)

    def _match(self, taker: RefOrder, res: RefResult) -> None:
        while taker.live and taker.remaining > 0:
            best = self._best_opposite(taker.market, taker.side)
            if best is None or not self._crosses(taker.side, taker.price, best.price):
                return
            if best.account_id == taker.account_id:
                stp_reason = CancelReason.STP.value
                mode = taker.stp
                if mode is StpMode.CANCEL_TAKER:
                    self._end(taker, OrderStatus.CANCELLED, stp_reason, res)
                    return
                if mode is StpMode.CANCEL_MAKER:
                    self._end(best, OrderStatus.CANCELLED, stp_reason, res)
                    continue
                if mode is StpMode.CANCEL_BOTH:
                    self._end(best, OrderStatus.CANCELLED, stp_reason, res)
                    self._end(taker, OrderStatus.CANCELLED, stp_reason, res)
                    return
                # decrement
                d = min(taker.remaining, best.remaining)
                best.size -= d
                taker.size -= d
                res.touched.update((best.order_id, taker.order_id))
                for o in (best, taker):
                    if o.size - o.filled == 0:
                        self._end(o, OrderStatus.CANCELLED, stp_reason, res)
                    else:
                        self._refresh_hold(o)
                continue
            self._trade(best, taker, res)

    def _trade(self, maker: RefOrder, taker: RefOrder, res: RefResult) -> None:
        m = self.cfg.markets[taker.market]
        price = maker.price
        size = min(taker.remaining, maker.remaining)
        notional = m.notional(price, size)
        buyer, seller = (taker, maker) if taker.side is Side.BUY else (maker, taker)
        self._move(m.quote, buyer.account_id, seller.account_id, notional, "trade", res)
        self._move(m.base, seller.account_id, buyer.account_id, size, "trade", res)
        taker_fee = self._charge(taker, notional, self._rates(taker.account_id)[1])
        maker_fee = self._charge(maker, notional, self._rates(maker.account_id)[0])
        for o, fee in ((taker, taker_fee), (maker, maker_fee)):
            if fee > 0:
                self._move(m.quote, o.account_id, FEES, fee, "fee", res)
            elif fee < 0:
                self._move(m.quote, FEES, o.account_id, -fee, "fee", res)
        for o in (maker, taker):
            o.filled += size
            o.filled_notional += notional
            self._set_status(o)
            self._refresh_hold(o)
            if not o.live:
                self._unrest(o)
                self.live.pop(o.order_id, None)
        res.touched.update((maker.order_id, taker.order_id))
        res.trades.append(
            (price, size, maker.order_id, taker.order_id, maker_fee, taker_fee))

    # ------------------------------------------------------------------ cancel / amend

    def _find(self, account_id: int, order_id: int | None,
              client_order_id: str | None) -> RefOrder:
        """The account's order by id, or its live order by client id.

        A client order id is unique only among live orders (it may be reused once the
        order ends), so it names a live order; one held by no live order is not found.
        """
        if order_id is not None:
            o = self.orders.get(order_id)
            if o is None or o.account_id != account_id:
                raise _Refused(Reject.ORDER_NOT_FOUND)
            return o
        if client_order_id is None:
            raise _Refused(Reject.ORDER_NOT_FOUND)
        mine = [self.orders[i] for i in self.by_client.get((account_id, client_order_id), [])]
        live = [o for o in mine if o.live]
        if not live:
            raise _Refused(Reject.ORDER_NOT_FOUND)
        return live[0]

    def _cancel(self, cmd: CancelOrder, res: RefResult) -> None:
        o = self._find(cmd.account_id, cmd.order_id, cmd.client_order_id)
        if not o.live:
            raise _Refused(Reject.ORDER_NOT_LIVE)
        if self.market_state[o.market] is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        self._end(o, OrderStatus.CANCELLED, cmd.reason.value, res)

    def _cancel_all(self, cmd: CancelAll, res: RefResult) -> None:
        if cmd.account_id not in self.accounts:
            raise _Refused(Reject.UNKNOWN_ACCOUNT)
        if cmd.market is not None and cmd.market not in self.cfg.markets:
            raise _Refused(Reject.UNKNOWN_MARKET)
        for o in self.live_orders(cmd.account_id):
            if cmd.market is not None and o.market != cmd.market:
                continue
            if self.market_state[o.market] is MarketState.HALTED:
                continue
            self._end(o, OrderStatus.CANCELLED, cmd.reason.value, res)

    def _amend(self, cmd: AmendOrder, res: RefResult) -> None:
        o = self._find(cmd.account_id, cmd.order_id, cmd.client_order_id)
        if not o.live:
            raise _Refused(Reject.ORDER_NOT_LIVE)
        state = self.market_state[o.market]
        if state is MarketState.HALTED:
            raise _Refused(Reject.MARKET_HALTED)
        if state is MarketState.CANCEL_ONLY:
            raise _Refused(Reject.MARKET_CANCEL_ONLY)
        m = self.cfg.markets[o.market]
        new_price = o.price if cmd.price is None else cmd.price
        new_size = o.size if cmd.size is None else cmd.size
        if new_price == o.price and new_size == o.size:
            raise _Refused(Reject.NOTHING_TO_AMEND)
        if cmd.price is not None:
            if new_price <= 0:
                raise _Refused(Reject.INVALID_PRICE)
            if new_price % m.tick != 0:
                raise _Refused(Reject.PRICE_NOT_ON_TICK)
        if cmd.size is not None:
            if new_size <= 0:
                raise _Refused(Reject.INVALID_SIZE)
            if new_size % m.lot != 0:
                raise _Refused(Reject.SIZE_NOT_ON_LOT)
            if new_size <= o.filled:
                raise _Refused(Reject.AMEND_SIZE_NOT_ABOVE_FILLED)
        if new_price == o.price and new_size < o.size:
            o.size = new_size  # reduced in place, priority kept
            self._refresh_hold(o)
            res.touched.add(o.order_id)
            return
        best = self._best_opposite(o.market, o.side)
        crosses = best is not None and self._crosses(o.side, new_price, best.price)
        if crosses and o.tif is TimeInForce.POST_ONLY:
            raise _Refused(Reject.POST_ONLY_WOULD_TAKE)
        new_hold = self._hold_of(o, new_price, new_size - o.filled)
        asset = m.quote if o.side is Side.BUY else m.base
        if new_hold - o.hold > self.available(o.account_id, asset):
            raise _Refused(Reject.INSUFFICIENT_BALANCE)
        self._unrest(o)  # leaves the book
        o.price = new_price
        o.size = new_size
        o.hold = new_hold
        res.touched.add(o.order_id)
        self._match(o, res)
        self._after_match(o, res)  # back at the tail of its level

    # ------------------------------------------------------------------ batches

    def _batch(self, cmd: BatchPlace, res: RefResult) -> None:
        if not cmd.orders:
            raise _Refused(Reject.BATCH_EMPTY)
        if len(cmd.orders) > self.cfg.max_batch:
            raise _Refused(Reject.BATCH_TOO_LARGE)
        if not cmd.atomic:
            for leg in cmd.orders:
                item = RefResult()
                try:
                    item.order_id = self._place(leg, cmd.ts, item)
                except _Refused as r:
                    item.rejected = r.reason
                    item.reject_order_id = r.order_id
                self._fold(res, item)
            return
        for leg in cmd.orders:
            if not (leg.type is OrderType.MARKET or leg.tif in (TimeInForce.IOC,
                                                                 TimeInForce.FOK)):
                raise _Refused(Reject.ATOMIC_LEG_NOT_IMMEDIATE)
        saved = self._checkpoint()
        items: list[RefResult] = []
        ok = True
        for leg in cmd.orders:
            item = RefResult()
            try:
                item.order_id = self._place(leg, cmd.ts, item)
            except _Refused as r:
                item.rejected = r.reason
                ok = False
                break
            if self.orders[item.order_id].filled != leg.size:  # (a decrement shrinks the size)
                ok = False
                break
            items.append(item)
        if not ok:
            self._rollback(saved)
            raise _Refused(Reject.ATOMIC_BATCH_FAILED)
        for item in items:
            self._fold(res, item)

    def _checkpoint(self) -> tuple[Any, ...]:
        """What placing orders can change (dead orders never change again)."""
        return (copy.deepcopy((self.live, self.books)), dict(self.balances), dict(self.orders),
                {k: list(v) for k, v in self.by_client.items()}, self.next_order_id,
                self.arrivals)

    def _rollback(self, saved: tuple[Any, ...]) -> None:
        (live, books), balances, orders, by_client, next_order_id, arrivals = saved
        self.live, self.books, self.balances, self.by_client = live, books, balances, by_client
        self.orders = orders
        self.orders.update(live)  # the saved copies of the live orders
        self.next_order_id, self.arrivals = next_order_id, arrivals

    @staticmethod
    def _fold(res: RefResult, item: RefResult) -> None:
        res.items.append(item)
        res.trades.extend(item.trades)
        res.transfers.extend(item.transfers)
        res.touched |= item.touched
