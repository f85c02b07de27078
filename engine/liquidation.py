"""Margin calls and liquidation, portfolio-aware and following the trader's risk plan
(DESIGN section 9). Runs at the end of every command that may have lowered someone's
health; docs/liquidation.md is the long form.

Rules owned here:
* who is looked at: accounts whose portfolio may have lost value in the command,
  accounts whose breach trigger an index move crossed (engine/margin_index.py),
  and accounts already in a margin call or liquidation (on any index move, their
  own changes, and when their deadline comes). An account holding or owing an
  asset without a fresh index is paused: neither called nor liquidated;
* maintenance health < 0: every order that is not reduce-only is cancelled. With a
  cure window in the plan and equity above the backstop floor (`backstop_floor` of
  the maintenance requirement, equity - maintenance health) the account enters
  `margin_call` until `deadline`; it may only add collateral and place orders that
  do not lower its initial health (reduce or hedge). Liquidation-end health >= 0
  ends the call. Otherwise, at the deadline or below the floor, `liquidating`:
  every order is cancelled and slices begin;
* a step, every `liquidation_step_ms`, aims to raise liquidation-end health by
  `max_slice_pct` of the shortfall when liquidation began (at most what is still
  missing). Candidates are the perp positions, the spot balances (sold) and
  non-quote loans (bought back), each in its market; the plan's hedge groups move
  together pro rata, and markets on one asset outside any group also form an
  implicit group. They are tried in the plan's `order`, then greedily (the largest
  maintenance-risk reduction per unit of notional at the mark first), with
  `keep_last` assets last; a candidate whose full unwind would not raise
  liquidation-end health is skipped. The smallest share of a candidate that reaches
  the step's aim is found by bisection on what the book would really give. When
  no candidate helps, everything left is unwound;
* each leg is an IOC order (reduce-only on perps, self-trade prevention
  `cancel_maker`) limited to mark -/+ `liquidation_slippage`; what the book does not
  take within the limit the insurance fund takes over at the limit (backstop);
  the liquidation fee on the leg's whole notional goes to the fund;
* with nothing left to unwind and health still short, every negative balance is
  bad debt: the fund pays what it has of that asset, the rest is written off
  against that asset's suppliers pro rata to their balances (largest remainders
  get the rounding units; reason `socialized_loss`). No other trader's position is
  ever closed. The fund's own balance may go negative through backstop purchases
  and when there are no suppliers left to share a loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.accounts import FIRST_USER_ACCOUNT, INSURANCE, Account, MarginCase
from engine.book import Order
from engine.events import BadDebt, LiquidationSlice, MarginStateChanged
from engine.fixedpoint import ceil_div
from engine.risk import DEN, Level
from engine.types import (
    CancelReason,
    LedgerReason,
    MarginState,
    MarketKind,
    MarketState,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)

if TYPE_CHECKING:
    from engine.exchange import Exchange

PPM = 1_000_000
_CLOSED_STATES = (MarketState.HALTED, MarketState.CANCEL_ONLY)
Leg = tuple[str, Side, int]  # market, side, size


# ------------------------------------------------------------------ who to look at
def settle_margins(ex: Exchange) -> None:
    """Look at every account this command may have pushed under (or back over)
    maintenance, until no liquidation moved anyone else."""
    ts = ex._ts
    while True:  # each pass follows the fills of the previous one; it ends because an
        # account takes at most one liquidation step per command (its deadline moves on)
        todo = ex._touched
        ex._touched = set()
        if ex._prices_moved:
            for asset in sorted(ex._prices_moved):
                price = ex.oracle.index(asset)
                if price is not None:
                    todo |= ex.breach.due(asset, price)
            todo |= ex.margin_cases
            todo |= ex.margin_unknown
            ex._prices_moved.clear()
        for aid in ex.margin_cases:
            case = ex.accounts[aid].margin
            if case is not None and case.deadline <= ts:
                todo.add(aid)
        if not todo:
            return
        for aid in sorted(todo):
            if aid >= FIRST_USER_ACCOUNT:
                review(ex, ex.accounts[aid])
        if ex.untriggered or ex._reduced:
            ex._after_command()
        if not ex._touched:
            return


def at_risk(acct: Account) -> bool:
    """Can this account's maintenance health be below 0: does it owe or hold a position?"""
    for bal in acct.balances.values():  # (plain loops: this runs for every order)
        if bal < 0:
            return True
    for pos in acct.positions.values():  # noqa: SIM110 (measured: faster compiled)
        if pos.size:
            return True
    return False


def _health(
    ex: Exchange,
    acct: Account,
    level: Level,
    marks: dict[str, int],
    rates: dict[str, int],
    change: dict[str, int] | None = None,
    slopes: dict[str, int] | None = None,
) -> int | None:
    balances, positions = ex._portfolio(acct, change or {})
    return ex._health_of(balances, positions, rates, level, marks, slopes=slopes)


def review(ex: Exchange, acct: Account) -> None:
    aid = acct.account_id
    case = acct.margin
    if case is None and not at_risk(acct):
        ex.breach.drop(aid)
        ex.allowance.pop(aid, None)
        ex.margin_unknown.discard(aid)
        return
    marks = ex._index_marks(fresh=True)
    rates = ex.borrow_rates()
    slopes: dict[str, int] = {}
    m = _health(ex, acct, Level.MAINTENANCE, marks, rates, slopes=slopes)
    if m is None:  # an index is stale or missing: paused until prices come
        ex.breach.drop(aid)
        ex.allowance.pop(aid, None)
        ex.margin_unknown.add(aid)
        return
    ex.margin_unknown.discard(aid)
    if case is None:
        if m >= 0:
            index_account(ex, acct, marks, m, slopes)
        else:
            ex.breach.drop(aid)
            ex.allowance.pop(aid, None)
            _breached(ex, acct, marks, rates, m)
        return
    le, eq = _levels(ex, acct, marks, rates)
    if le >= 0:
        _end(ex, acct, marks, rates, "liquidation_end_restored")
    elif case.state is MarginState.MARGIN_CALL:
        if ex._ts >= case.deadline:
            _liquidate(ex, acct, marks, rates, "cure_window_expired")
        elif eq <= _floor(ex, eq, m):
            _liquidate(ex, acct, marks, rates, "below_backstop_floor")
    elif ex._ts >= case.deadline:
        _step(ex, acct, case, marks, rates)


def _levels(
    ex: Exchange, acct: Account, marks: dict[str, int], rates: dict[str, int]
) -> tuple[int, int]:
    le = _health(ex, acct, Level.LIQUIDATION_END, marks, rates)
    eq = _health(ex, acct, Level.EQUITY, marks, rates)
    assert le is not None and eq is not None  # same prices as maintenance, which had them
    return le, eq


def _floor(ex: Exchange, equity: int, maintenance: int) -> int:
    return (equity - maintenance) * ex.config.backstop_floor_ppm // PPM


def index_account(
    ex: Exchange,
    acct: Account,
    marks: dict[str, int],
    m: int,
    slopes: dict[str, int] | None = None,
) -> None:
    """Triggers from maintenance health `m` (and its `slopes`, if computed) with every
    loan at the highest rate its pool's curve can reach (a bound that rate moves cannot
    break between re-indexings), less a rounding allowance per perp position
    (docs/liquidation.md)."""
    low = m
    if any(b < 0 for b in acct.balances.values()):
        slopes = {}
        low = _health(ex, acct, Level.MAINTENANCE, marks, ex.max_rates, slopes=slopes) or 0
    elif slopes is None:
        slopes = {}
        _health(ex, acct, Level.MAINTENANCE, marks, ex.borrow_rates(), slopes=slopes)
    low -= 2 + sum(1 for p in acct.positions.values() if p.size)
    # a quarter of the cushion is kept for funding and interest payments, which then need
    # no new look (engine/exchange.py `_transfer`); prices may use the rest
    spare = max(low, 0) // 4
    ex.allowance[acct.account_id] = spare
    scale = DEN * ex._risk_top
    budget = (max(low, 0) - spare) * scale
    total = sum(abs(s) * marks[a] for a, s in slopes.items())
    if total == 0:
        ex.breach.drop(acct.account_id)
        return
    triggers = []
    for asset in sorted(slopes):
        s = slopes[asset]
        if s == 0:
            continue
        price = marks[asset]
        move = price * budget // total
        if s > 0:
            if price - move > 0:
                triggers.append((asset, price - move, False))
        else:
            triggers.append((asset, price + move, True))
    ex.breach.put(acct.account_id, tuple(triggers))


# --------------------------------------------------------------- state changes
def _event(
    ex: Exchange,
    acct: Account,
    state: MarginState,
    previous: MarginState,
    deadline: int | None,
    marks: dict[str, int],
    rates: dict[str, int],
    reason: str,
) -> None:
    m = _health(ex, acct, Level.MAINTENANCE, marks, rates)
    le, eq = _levels(ex, acct, marks, rates)
    assert m is not None
    ex._events.append(
        MarginStateChanged(acct.account_id, state, previous, deadline, m, le, eq, reason, ex._ts)
    )


def _cancel_orders(ex: Exchange, acct: Account, everything: bool) -> None:
    """A margin call cancels what adds risk (all but reduce-only), liquidation everything."""
    reason = CancelReason.LIQUIDATION if everything else CancelReason.MARGIN_CALL
    ex._cancel_orders_of(acct, reason, keep_reduce_only=not everything)


def _breached(
    ex: Exchange, acct: Account, marks: dict[str, int], rates: dict[str, int], m: int
) -> None:
    _cancel_orders(ex, acct, everything=False)
    le, eq = _levels(ex, acct, marks, rates)
    window = acct.risk_plan.cure_window_ms
    if window <= 0:
        _liquidate(ex, acct, marks, rates, "no_cure_window")
    elif eq <= _floor(ex, eq, m):
        _liquidate(ex, acct, marks, rates, "below_backstop_floor")
    else:
        deadline = ex._ts + window
        acct.margin = MarginCase(MarginState.MARGIN_CALL, ex._ts, deadline, 0, 0)
        ex.margin_cases.add(acct.account_id)
        _event(
            ex, acct, MarginState.MARGIN_CALL, MarginState.NORMAL, deadline, marks, rates,
            "maintenance_below_zero",
        )  # fmt: skip


def _liquidate(
    ex: Exchange, acct: Account, marks: dict[str, int], rates: dict[str, int], reason: str
) -> None:
    previous = acct.margin.state if acct.margin is not None else MarginState.NORMAL
    le, _ = _levels(ex, acct, marks, rates)
    case = acct.margin = MarginCase(MarginState.LIQUIDATING, ex._ts, ex._ts, max(-le, 1), 0)
    ex.margin_cases.add(acct.account_id)
    _event(ex, acct, MarginState.LIQUIDATING, previous, None, marks, rates, reason)
    _step(ex, acct, case, marks, rates)


def _end(
    ex: Exchange, acct: Account, marks: dict[str, int], rates: dict[str, int], reason: str
) -> None:
    case = acct.margin
    assert case is not None
    acct.margin = None
    ex.margin_cases.discard(acct.account_id)
    _event(ex, acct, MarginState.NORMAL, case.state, None, marks, rates, reason)
    m = _health(ex, acct, Level.MAINTENANCE, marks, rates)
    if m is not None and m >= 0:
        index_account(ex, acct, marks, m)
    else:  # (liquidation-end >= 0 implies maintenance >= 0; kept for safety)
        ex._touched.add(acct.account_id)


# -------------------------------------------------------------------- slices
def _exposures(ex: Exchange, acct: Account) -> tuple[dict[str, tuple[Side, int]], set[str]]:
    """What can be unwound, per market: (side of the unwinding order, size); and the
    markets with something left that cannot be unwound now (halted or cancel-only)."""
    out: dict[str, tuple[Side, int]] = {}
    closed: set[str] = set()
    for market, pos in sorted(acct.positions.items()):
        if pos.size:
            if ex.markets[market].state in _CLOSED_STATES:
                closed.add(market)
            else:
                out[market] = (Side.SELL if pos.size > 0 else Side.BUY, abs(pos.size))
    for asset, bal in sorted(acct.balances.items()):
        spot = ex.spot_market_of.get(asset)
        if not bal or spot is None:
            continue
        lot = ex.markets[spot].spec.lot
        size = bal // lot * lot if bal > 0 else ceil_div(-bal, lot) * lot
        if not size:
            continue  # dust below one lot: nothing can sell it
        if ex.markets[spot].state in _CLOSED_STATES:
            closed.add(spot)
        else:
            out[spot] = (Side.SELL if bal > 0 else Side.BUY, size)
    return out, closed


def _limit(ex: Exchange, market: str, side: Side, marks: dict[str, int]) -> int | None:
    """The slice's limit: the index -/+ `liquidation_slippage`, on the tick toward the index.
    Perps too: health values them at the index, and a perp's mark (up to 10% away) could
    be pushed by one thin quote to make the fund overpay."""
    spec = ex.markets[market].spec
    index = marks.get(spec.base)
    if index is None:
        return None
    slip, tick = ex.config.liquidation_slippage_ppm, spec.tick
    if side is Side.SELL:
        return max(ceil_div(ceil_div(index * (PPM - slip), PPM), tick) * tick, tick)
    return max(index * (PPM + slip) // PPM // tick * tick, tick)


def _legs(
    exposures: dict[str, tuple[Side, int]],
    markets: list[str],
    share: int,
    lots: dict[str, int],
    whole: int = PPM,
) -> list[Leg]:
    """`share / whole` of each market's exposure, rounded up to a lot, at most all of it."""
    out = []
    for market in markets:
        side, size = exposures[market]
        lot = lots[market]
        qty = min(ceil_div(ceil_div(size * share, whole), lot) * lot, size)
        if qty > 0:
            out.append((market, side, qty))
    return out


def _outcome(
    ex: Exchange, acct: Account, legs: list[Leg], limits: dict[str, int], at_index: bool = False
) -> dict[str, int]:
    """The balance and position change of `legs` as the book would fill them now (the rest
    at the limit, by the backstop), fees included; at the index and without fees with
    `at_index` (to rank candidates by the risk they remove)."""
    change: dict[str, int] = {}
    quote = ex._quote
    taker = max(ex._tier(acct).taker_ppm, 0)
    fee_ppm = ex.config.liquidation_fee_ppm
    marks = ex._index_marks(fresh=True)
    for market, side, qty in legs:
        m = ex.markets[market]
        spec = m.spec
        if at_index:
            notional, fees = spec.notional(marks.get(spec.base, 0), qty), 0
        else:
            limit = limits[market]
            got, got_notional = ex._walk(
                m.book, side, limit, qty, acct.account_id, StpMode.CANCEL_MAKER
            )
            notional = got_notional + spec.notional(limit, qty - got)
            fees = ceil_div(got_notional * taker, PPM) + ceil_div(notional * fee_ppm, PPM)
        sign = 1 if side is Side.BUY else -1
        if spec.kind is MarketKind.PERP:
            change[f"{market}:size"] = change.get(f"{market}:size", 0) + sign * qty
            change[f"{market}:notional"] = change.get(f"{market}:notional", 0) + sign * notional
            change[quote] = change.get(quote, 0) - fees
        else:
            change[spec.base] = change.get(spec.base, 0) + sign * qty
            change[quote] = change.get(quote, 0) - sign * notional - fees
    return change


def _candidates(
    ex: Exchange, acct: Account, exposures: dict[str, tuple[Side, int]], closed: set[str]
) -> list[list[str]]:
    """Groups of markets to unwind together, in the order to try them: the plan's hedge
    groups (none while a member with exposure is closed: it waits for that market),
    single markets, and markets on one asset unwinding in opposite directions (a hedge
    the plan did not name). The plan's `order` ranks single markets and its own groups."""
    plan = acct.risk_plan
    grouped: set[str] = set()
    groups: list[tuple[list[str], bool]] = []  # (markets, ranked by the plan's order)
    for g in plan.hedge_groups:
        grouped |= set(g)
        members = [m for m in g if m in exposures]
        if members and not any(m in closed for m in g):
            groups.append((members, True))
    by_asset: dict[str, list[str]] = {}
    for market in sorted(exposures):
        if market not in grouped:
            groups.append(([market], True))
            by_asset.setdefault(ex.markets[market].spec.base, []).append(market)
    for _, ms in sorted(by_asset.items()):
        if len({exposures[m][0] for m in ms}) > 1:
            groups.append((ms, False))
    marks = ex._index_marks(fresh=True)
    rates = ex.borrow_rates()
    eq0 = _health(ex, acct, Level.EQUITY, marks, rates) or 0
    m0 = _health(ex, acct, Level.MAINTENANCE, marks, rates) or 0
    lots = {m: ex.markets[m].spec.lot for m in exposures}

    def key(item: tuple[list[str], bool]) -> tuple[int, int, int, int, str]:
        group, rankable = item
        ranked = [plan.order.index(m) for m in group if m in plan.order] if rankable else []
        kept = [
            plan.keep_last.index(ex.markets[m].spec.base)
            for m in group
            if ex.markets[m].spec.kind is MarketKind.SPOT
            and ex.markets[m].spec.base in plan.keep_last
        ]
        change = _outcome(ex, acct, _legs(exposures, group, PPM, lots), {}, at_index=True)
        eq = _health(ex, acct, Level.EQUITY, marks, rates, change) or 0
        m = _health(ex, acct, Level.MAINTENANCE, marks, rates, change) or 0
        freed = (eq0 - m0) - (eq - m)  # maintenance requirement removed
        notional = sum(
            ex.markets[mk].spec.notional(marks.get(ex.markets[mk].spec.base, 0), exposures[mk][1])
            for mk in group
        )
        ratio = freed * 10**12 // max(notional, 1)
        tier = 0 if ranked else (2 if kept else 1)
        return (tier, min(ranked, default=0), min(kept, default=0), -ratio, ",".join(group))

    return [group for group, _ in sorted(groups, key=key)]


def _step(
    ex: Exchange, acct: Account, case: MarginCase, marks: dict[str, int], rates: dict[str, int]
) -> None:
    """One liquidation step: slices until its aim is reached or nothing helps."""
    _cancel_orders(ex, acct, everything=True)  # (orders placed since the last step too)
    case.steps += 1
    case.deadline = ex._ts + ex.config.liquidation_step_ms
    le = _health(ex, acct, Level.LIQUIDATION_END, marks, rates)
    assert le is not None
    plan = acct.risk_plan
    aim = min(-le, max(ceil_div(case.need * plan.max_slice_ppm, PPM), 1))
    start = le
    for _ in range(2 * len(ex.markets) + 2):
        if le >= 0 or le - start >= aim:
            break
        exposures, closed = _exposures(ex, acct)
        if not exposures:
            break
        limits = {}
        for market, (side, _) in exposures.items():
            limit = _limit(ex, market, side, marks)
            if limit is None:
                return  # no fresh price for a market to unwind: paused
            limits[market] = limit
        lots = {m: ex.markets[m].spec.lot for m in exposures}
        chosen: list[Leg] | None = None
        for group in _candidates(ex, acct, exposures, closed):
            full = _legs(exposures, group, PPM, lots)
            gain = _gain(ex, acct, full, limits, marks, rates, le)
            if gain <= 0:
                continue
            want = aim - (le - start)
            if gain <= want:
                chosen = full
            else:  # the smallest share that reaches the aim, in lots of its largest leg
                whole = max(exposures[m][1] // lots[m] for m in group)
                lo, hi = 0, whole
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    legs = _legs(exposures, group, mid, lots, whole)
                    if _gain(ex, acct, legs, limits, marks, rates, le) >= want:
                        hi = mid
                    else:
                        lo = mid
                chosen = _legs(exposures, group, hi, lots, whole)
            break
        if chosen is None:
            equity = _health(ex, acct, Level.EQUITY, marks, rates)
            if equity is None or equity > 0:
                break  # nothing helps now (a thin book, say): the next step tries again
            # nothing can help an account worth nothing: unwind everything left
            chosen = _legs(exposures, sorted(exposures), PPM, lots)
        for market, side, qty in chosen:
            _slice(ex, acct, case, market, side, qty, limits[market])
        new = _health(ex, acct, Level.LIQUIDATION_END, marks, ex.borrow_rates())
        assert new is not None
        le = new
    if le < 0:
        left, closed = _exposures(ex, acct)
        if not left and not closed:
            _bad_debt(ex, acct)
    rates = ex.borrow_rates()
    le2 = _health(ex, acct, Level.LIQUIDATION_END, marks, rates)
    if le2 is not None and le2 >= 0:
        _end(ex, acct, marks, rates, "liquidation_end_restored")


def _gain(
    ex: Exchange,
    acct: Account,
    legs: list[Leg],
    limits: dict[str, int],
    marks: dict[str, int],
    rates: dict[str, int],
    le: int,
) -> int:
    after = _health(ex, acct, Level.LIQUIDATION_END, marks, rates, _outcome(ex, acct, legs, limits))
    return (after if after is not None else le) - le


def _slice(
    ex: Exchange, acct: Account, case: MarginCase, market: str, side: Side, qty: int, limit: int
) -> None:
    """One IOC leg through the book; the backstop takes the rest at the limit."""
    m = ex.markets[market]
    spec = m.spec
    aid = acct.account_id
    perp = spec.kind is MarketKind.PERP
    o = Order(
        ex.next_order_id, aid, f"liquidation-{case.steps}", market, side, OrderType.LIMIT,
        TimeInForce.IOC, limit, qty, StpMode.CANCEL_MAKER, None, ex._ts, reduce_only=perp,
    )  # fmt: skip
    ex.next_order_id += 1
    ex._refresh_hold(o, spec, acct)
    ex._match_and_rest(o, m, acct)
    got, got_notional = o.filled, o.filled_notional
    rest = qty - got
    if perp:  # (a reduce-only IOC stops at the position: the backstop takes what is left)
        pos = acct.positions.get(market)
        rest = min(rest, abs(pos.size) if pos is not None else 0)
    rest_notional = spec.notional(limit, rest)
    ref = f"liquidation:{aid}:{case.steps}"
    ins = ex.accounts[INSURANCE]
    if rest:
        if perp:
            sign = 1 if side is Side.BUY else -1
            ex._perp_fill(acct, spec, sign * rest, limit, ref)
            ex._perp_fill(ins, spec, -sign * rest, limit, ref)
        elif side is Side.SELL:
            ex._transfer(spec.base, aid, INSURANCE, rest, LedgerReason.LIQUIDATION, ref)
            ex._transfer(spec.quote, INSURANCE, aid, rest_notional, LedgerReason.LIQUIDATION, ref)
        else:
            ex._transfer(spec.quote, aid, INSURANCE, rest_notional, LedgerReason.LIQUIDATION, ref)
            ex._transfer(spec.base, INSURANCE, aid, rest, LedgerReason.LIQUIDATION, ref)
    fee = ceil_div((got_notional + rest_notional) * ex.config.liquidation_fee_ppm, PPM)
    if fee:
        ex._transfer(spec.quote, aid, INSURANCE, fee, LedgerReason.LIQUIDATION, ref)
    after = _health(ex, acct, Level.LIQUIDATION_END, ex._index_marks(fresh=True), ex.borrow_rates())
    ex._events.append(
        LiquidationSlice(
            aid, case.steps, market, side, qty, limit, got, got_notional, rest, rest_notional,
            fee, after if after is not None else 0, ex._ts,
        )
    )  # fmt: skip


# ----------------------------------------------------------------- bad debt
def _bad_debt(ex: Exchange, acct: Account) -> None:
    """Nothing left to unwind: the fund covers each negative balance as far as it can,
    then that asset's suppliers share the rest pro rata."""
    aid = acct.account_id
    ins = ex.accounts[INSURANCE]
    ref = f"bad_debt:{aid}:{ex._ts}"
    quote = ex._quote
    # in the quote asset the fund pays up to its equity at the index: what it took over
    # (spot bought by the backstop, positions) stands behind a negative quote balance
    balances, positions = ex._portfolio(ins, {})
    equity = ex._health_of(balances, positions, {}, Level.EQUITY, ex._index_marks(fresh=True))
    for asset in sorted(acct.balances):
        owed = -acct.balances[asset]
        if owed <= 0:
            continue
        if asset == quote and equity is not None:
            can = max(equity, 0)
        else:
            can = max(ins.balance(asset), 0)
        paid = min(owed, can)
        if asset == quote and equity is not None:
            equity -= paid
        if paid:
            ex._transfer(asset, INSURANCE, aid, paid, LedgerReason.LIQUIDATION, ref)
        rest = owed - paid
        suppliers = sorted(
            (a.account_id, b)
            for a in ex.accounts.values()
            if a.account_id >= FIRST_USER_ACCOUNT
            and a.account_id != aid
            and (a.margin is None or a.margin.state is not MarginState.LIQUIDATING)
            and (b := a.balances.get(asset, 0)) > 0
        )
        supplied = sum(b for _, b in suppliers)
        share_total = min(rest, supplied)
        shares = {s: share_total * b // supplied for s, b in suppliers} if supplied else {}
        left = share_total - sum(shares.values())
        # the units rounding left over go to the largest remainders (then the lowest ids)
        by_remainder = sorted(suppliers, key=lambda sb: (-(share_total * sb[1] % supplied), sb[0]))
        for s, _ in by_remainder[:left]:
            shares[s] += 1
        for s, _ in suppliers:
            if shares[s]:
                ex._transfer(asset, s, aid, shares[s], LedgerReason.SOCIALIZED_LOSS, ref)
                # what its orders hold may now exceed what it has: cancel them as needed
                ex._cover_holds(ex.accounts[s], asset)
        uncovered = rest - share_total  # no suppliers left: the fund carries it
        if uncovered:
            ex._transfer(asset, INSURANCE, aid, uncovered, LedgerReason.LIQUIDATION, ref)
        ex._events.append(
            BadDebt(aid, asset, owed, paid + uncovered, share_total, len(suppliers), ex._ts)
        )
