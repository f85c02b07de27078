"""The invariants that must hold after every command (property tests call `check`).

* per asset, the sum of all balances (system accounts included) is exactly 0;
* `available` is never negative where something is held, unless the account has
  `auto_borrow` on (its orders may hold more than it has: they borrow as they fill);
* per perp market, the positions sum to exactly 0, the open interest is the sum of
  the long ones, and the funding clearing account is back at 0 after every command;
* each lending pool's `supplied` / `borrowed` are the sums of the users' positive /
  negative balances;
* every hold equals the sum of what the account's live orders need;
* no book is crossed; level totals and counts match their orders;
* every resting order is live, belongs to a live account and is indexed; an order
  waiting for its trigger is in no book but in its market's trigger book;
* a resting reduce-only order is never larger than the position it reduces;
* the accounts in a margin call or liquidation are exactly those with a margin case,
  and only normal accounts have breach triggers; no normal account with fresh prices
  has maintenance health below 0 (beyond one atomic unit per perp position and one
  for rounding: the perp marks cancel out of health only up to rounding).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from engine.accounts import FIRST_USER_ACCOUNT, FUNDING
from engine.liquidation import at_risk
from engine.risk import Level
from engine.types import OrderStatus, Side

if TYPE_CHECKING:
    from engine.exchange import Exchange


def check(ex: Exchange) -> list[str]:
    problems: list[str] = []
    totals: dict[str, int] = defaultdict(int)
    supplied: dict[str, int] = defaultdict(int)
    borrowed: dict[str, int] = defaultdict(int)
    for acct in ex.accounts.values():
        for asset, bal in acct.balances.items():
            totals[asset] += bal
            if acct.account_id < FIRST_USER_ACCOUNT:
                continue
            supplied[asset] += max(bal, 0)
            borrowed[asset] += max(-bal, 0)
            if acct.hold(asset) > 0 and acct.available(asset) < 0 and not acct.auto_borrow:
                problems.append(f"account {acct.account_id} {asset} holds more than it has")
    problems += [f"{asset} does not conserve: sum {t}" for asset, t in totals.items() if t != 0]
    sizes: dict[str, int] = defaultdict(int)
    for acct in ex.accounts.values():
        for perp, pos in acct.positions.items():
            sizes[perp] += pos.size
    problems += [f"{m} positions sum to {n}, not 0" for m, n in sorted(sizes.items()) if n]
    longs = {
        m: sum(max(a.positions[m].size, 0) for a in ex.accounts.values() if m in a.positions)
        for m in ex.open_interest
    }
    if longs != ex.open_interest:
        problems.append(f"open interest {ex.open_interest} is not the longs {longs}")
    held = {
        m: {a.account_id for a in ex.accounts.values() if m in a.positions and a.positions[m].size}
        for m in ex.holders
    }
    if held != ex.holders:
        problems.append("the perp holder index differs from the positions")
    if any(ex.accounts[FUNDING].balances.values()):
        problems.append(f"funding clearing holds {ex.accounts[FUNDING].balances}")
    pending: dict[str, int] = defaultdict(int)
    for acct in ex.accounts.values():
        if acct.account_id >= FIRST_USER_ACCOUNT and acct.auto_borrow:
            for asset, hold in acct.holds.items():
                pending[asset] += max(hold - max(acct.balance(asset), 0), 0)
    for asset, pool in ex.pools.items():
        if pool.pending != pending[asset]:
            problems.append(f"{asset} pool says {pool.pending} pending, orders {pending[asset]}")
        if (pool.supplied, pool.borrowed) != (supplied[asset], borrowed[asset]):
            problems.append(
                f"{asset} pool says {pool.supplied} supplied / {pool.borrowed} borrowed, "
                f"balances say {supplied[asset]} / {borrowed[asset]}"
            )

    waiting = [o for o in ex.orders.values() if o.status is OrderStatus.UNTRIGGERED]
    if ex.untriggered != len(waiting) or any(o.level is not None for o in waiting):
        problems.append(f"{ex.untriggered} untriggered counted, {len(waiting)} waiting")
    queued = {oid for t in ex.triggers.values() for _, oid in t.rising + t.falling}
    missing = sorted(o.order_id for o in waiting if o.order_id not in queued)
    if missing:
        problems.append(f"untriggered orders {missing} are in no trigger book")
    for perp, waits in ex.triggers.items():
        if waits.ids != {o.order_id for o in waiting if o.market == perp}:
            problems.append(f"{perp} trigger book waits for {sorted(waits.ids)}")

    if list(ex.done) != list(ex.done_queue):
        problems.append("the finished orders' queue differs from their rows")
    if any(oid in ex.done for oid in ex.orders):
        problems.append("a live order is among the finished ones")

    want_holds: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for oid, o in ex.orders.items():
        owner = ex.accounts.get(o.account_id)
        if owner is None or owner.live.get(oid) is not o:
            problems.append(f"order {oid} not indexed under account {o.account_id}")
            continue
        acct = owner
        if not o.status.is_live:
            problems.append(f"order {oid} in the live set with status {o.status.value}")
        market = ex.markets[o.market]
        tier = ex._tier(acct)
        need = ex._required_hold(o, market.spec, tier)
        if need != o.hold:
            problems.append(f"order {oid} holds {o.hold}, needs {need}")
        asset = market.spec.quote if o.side is Side.BUY else market.spec.base
        want_holds[o.account_id][asset] += o.hold
        if o.client_order_id is not None and acct.client_ids.get(o.client_order_id) != oid:
            problems.append(f"order {oid} client id not indexed")
    for acct in ex.accounts.values():
        perp_orders = sum(1 for o in acct.live.values() if o.market in ex._perp_markets)
        if acct.perp_orders != perp_orders:
            problems.append(f"account {acct.account_id} counts {acct.perp_orders} perp orders")
        fills: dict[str, tuple[list[int], list[int]]] = {}
        for o in acct.live.values():
            if o.status is OrderStatus.UNTRIGGERED:
                continue
            spec = ex.markets[o.market].spec
            effect = ex._fill_effect(o, spec, max(ex._tier(acct).taker_ppm, 0), o.hold)
            pair = fills.setdefault(o.market, ([0, 0, 0, 0], [0, 0, 0, 0]))
            agg = pair[0] if o.side is Side.BUY else pair[1]
            for k in range(3):
                agg[k] += effect[k]
            agg[3] += 1
        tracked = acct.open_fills
        kept = {m: v for m, v in (tracked or {}).items() if any(x for side in v for x in side)}
        if tracked is not None and kept != fills:
            problems.append(f"account {acct.account_id} open fills {kept} != {fills}")
        reducing = [o for o in acct.live.values() if o.reduce_only]
        if acct.reduce_only != len(reducing):
            problems.append(f"account {acct.account_id} counts {acct.reduce_only} reduce-only")
        for o in reducing:  # never more than the position it reduces
            if o.status is not OrderStatus.UNTRIGGERED and o.remaining > ex._reduce_room(o):
                problems.append(f"reduce-only order {o.order_id} outgrows its position")
        if len(acct.live) != sum(1 for o in acct.live.values() if ex.orders.get(o.order_id) is o):
            problems.append(f"account {acct.account_id} lists orders that are not live")
        for asset in set(acct.holds) | set(want_holds[acct.account_id]):
            if acct.hold(asset) != want_holds[acct.account_id][asset]:
                problems.append(
                    f"account {acct.account_id} {asset} hold {acct.hold(asset)} != "
                    f"{want_holds[acct.account_id][asset]}"
                )

    for sym, market in ex.markets.items():
        book = market.book
        bb, ba = book.best(Side.BUY), book.best(Side.SELL)
        if bb is not None and ba is not None and bb.price >= ba.price:
            problems.append(f"{sym} crossed: bid {bb.price} >= ask {ba.price}")
        for side in (Side.BUY, Side.SELL):
            for level in book.levels_from_best(side):
                orders = list(level.orders())
                if not orders or level.count != len(orders):
                    problems.append(
                        f"{sym} level {level.price} count {level.count} != {len(orders)}"
                    )
                if level.total != sum(o.remaining for o in orders):
                    problems.append(f"{sym} level {level.price} total mismatch")
                for o in orders:
                    if (
                        ex.orders.get(o.order_id) is not o
                        or o.price != level.price
                        or o.side is not side
                    ):
                        problems.append(f"{sym} resting order {o.order_id} misplaced")
                    if o.remaining <= 0:
                        problems.append(f"{sym} resting order {o.order_id} has nothing left")
    resting = sum(lv.count for m in ex.markets.values() for lv in m.book.bids.values())
    resting += sum(lv.count for m in ex.markets.values() for lv in m.book.asks.values())
    if resting + len(waiting) != len(ex.orders):
        problems.append(
            f"{len(ex.orders)} live orders but {resting} resting, {len(waiting)} waiting"
        )
    problems += _margin_problems(ex)
    return problems


def _margin_problems(ex: Exchange) -> list[str]:
    problems = []
    cases = {aid for aid, a in ex.accounts.items() if a.margin is not None}
    if cases != ex.margin_cases:
        problems.append(f"margin cases {sorted(ex.margin_cases)} != accounts {sorted(cases)}")
    if set(ex.breach.entries) & cases or set(ex.allowance) & cases:
        problems.append("an account in a margin case is in the breach index")
    marks = ex._index_marks(fresh=True)
    rates = ex.borrow_rates()
    for aid, acct in ex.accounts.items():
        if aid < FIRST_USER_ACCOUNT or acct.margin is not None or not at_risk(acct):
            continue
        balances, positions = ex._portfolio(acct, {})
        m = ex._health_of(balances, positions, rates, Level.MAINTENANCE, marks)
        if m is not None and m < -1 - len(positions):
            problems.append(f"account {aid} is normal with maintenance health {m}")
    return problems
