"""Whole-engine state as plain data: snapshot, restore and a stable hash.

Rule owned here: `restore(snapshot(x))` behaves exactly like `x` for every future
command, and `state_hash` depends only on that behaviour-relevant state (lists
are in a defined order; the expiry heap is rebuilt, not stored). Request signatures
are not engine state: the journal keeps them with their commands and recovery reads
them back from there (app/recovery.py).

A snapshot is taken on the event loop and encoded on another thread while the engine
goes on, so it shares nothing mutable with the engine: live orders are copied into new
rows; finished orders are kept as immutable plain tuples of their last view's fields
and are shared, which keeps the copy short with the thousands the engine remembers.

Versions: 2 keeps finished orders as their OrderView fields. `upgrade_snapshot` brings
a version 1 snapshot (finished orders with all of ORDER_FIELDS, and request signatures
before they left the engine) to version 2.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from engine.accounts import FIRST_USER_ACCOUNT, SYSTEM_ACCOUNTS, Account, ApiKey, MarginCase
from engine.book import DONE_FIELDS, ORDER_FIELDS, Order
from engine.events import Transfer
from engine.funding import MarketFunding
from engine.positions import Position
from engine.riskplan import DEFAULT_PLAN, RiskPlan
from engine.triggers import triggers_on_rise
from engine.types import (
    LedgerReason,
    MarginState,
    MarketState,
    OrderStatus,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)

if TYPE_CHECKING:
    from engine.exchange import Exchange

_ENUMS = {
    "side": Side,
    "type": OrderType,
    "tif": TimeInForce,
    "status": OrderStatus,
    "stp": StpMode,
}


def _order_out(o: Order) -> list[Any]:
    """The fields of ORDER_FIELDS in its order, enums by value (spelled out: compiled,
    this is 3x faster than a getattr loop; `_value_` rather than the `.value` property,
    which runs Python even from compiled code; tests/test_snapshot_hash.py checks the two
    agree)."""
    return [
        o.order_id, o.account_id, o.client_order_id, o.market, o.side._value_,
        o.type._value_, o.tif._value_, o.price, o.trigger_price, o.size, o.filled,
        o.filled_notional, o.status._value_, o.reduce_only, o.stp._value_, o.expire_ts,
        o.created_ts, o.updated_ts, o.cancel_reason, o.hold, o.fee_basis, o.fees_paid,
        o.rebate_basis, o.rebates_got,
    ]  # fmt: skip


def order_fields(o: Order) -> list[Any]:
    """ORDER_FIELDS of `o` read one by one: what `_order_out` must equal."""
    return [getattr(o, f).value if f in _ENUMS else getattr(o, f) for f in ORDER_FIELDS]


def _order_in(row: list[Any]) -> Order:
    # Built through __init__ (the compiled Order has no bare __new__), then overwritten.
    o = Order(
        0, 0, None, "", Side.BUY, OrderType.LIMIT, TimeInForce.GTC, 0, 0,
        StpMode.CANCEL_TAKER, None, 0,
    )  # fmt: skip
    for f, v in zip(ORDER_FIELDS, row, strict=True):
        setattr(o, f, _ENUMS[f](v) if f in _ENUMS else v)
    o.prev = o.next = o.level = None
    o.contrib = None
    return o


def _done_in(row: list[Any]) -> tuple[Any, ...]:
    """A finished order's snapshot row as the engine keeps it (enum members again)."""
    return tuple(
        _ENUMS[f](v) if f in _ENUMS else v
        for f, v in zip(ORDER_FIELDS[:DONE_FIELDS], row, strict=True)
    )


def _transfer_out(t: Transfer) -> list[Any]:
    return [
        t.transfer_id,
        t.asset,
        t.from_account,
        t.to_account,
        t.amount,
        t.reason.value,
        t.ref,
        t.from_balance,
        t.to_balance,
        t.ts,
    ]


def _transfer_in(r: list[Any]) -> Transfer:
    return Transfer(r[0], r[1], r[2], r[3], r[4], LedgerReason(r[5]), r[6], r[7], r[8], r[9])


SNAPSHOT_VERSION = 2


def upgrade_snapshot(snap: dict[str, Any]) -> bool:
    """Bring a snapshot written by an earlier version to SNAPSHOT_VERSION, in place.
    True if it was older: its state hash then differs from the one it was stored with."""
    if snap.get("version") != 1:
        return False
    snap.pop("signatures", None)
    snap["done"] = [row[:DONE_FIELDS] for row in snap["done"]]
    snap["version"] = SNAPSHOT_VERSION
    return True


def take_snapshot(ex: Exchange) -> dict[str, Any]:
    return {
        "version": SNAPSHOT_VERSION,
        "last_seq": ex.last_seq,
        "last_ts": ex.last_ts,
        "next": [ex.next_account_id, ex.next_order_id, ex.next_trade_id, ex.next_transfer_id],
        "accounts": [
            [
                a.account_id,
                a.name,
                a.tier,
                a.stp.value,
                a.auto_borrow,
                a.created_ts,
                sorted(a.balances.items()),
                sorted(a.holds.items()),
            ]
            for a in sorted(ex.accounts.values(), key=lambda a: a.account_id)
        ],
        "api_keys": [
            [
                k.api_key,
                k.account_id,
                k.secret,
                list(k.permissions),
                k.label,
                k.created_ts,
                k.revoked,
            ]
            for k in sorted(ex.api_keys.values(), key=lambda k: k.api_key)
        ],
        "markets": {
            sym: {
                "state": m.state.value,
                "resting": [_order_out(o) for o in m.book.resting_orders()],
            }
            for sym, m in sorted(ex.markets.items())
        },
        "done": list(ex.done.values()),  # immutable plain tuples: shared, not copied
        "untriggered": [
            _order_out(o)
            for _, o in sorted(ex.orders.items())
            if o.status is OrderStatus.UNTRIGGERED
        ],
        "deposits": sorted([k, _transfer_out(t)] for k, t in ex.deposits.items()),
        "withdrawals": sorted([k, _transfer_out(t)] for k, t in ex.withdrawals.items()),
        "oracle": [[e.asset, e.price, e.ts, e.stale] for _, e in sorted(ex.oracle.prices.items())],
        "interest_ts": ex.interest_ts,
        "funding": [
            [m, f.premium_sum, f.samples, f.basis, f.last_rate]
            for m, f in sorted(ex.funding.items())
        ],
        "funding_ts": [ex.next_sample_ts, ex.next_funding_ts],
        "dead_man": sorted([aid, deadline] for aid, deadline in ex.dead_man.items()),
        "risk_plans": [
            [a.account_id, p.cure_window_ms, p.max_slice_ppm, list(p.order),
             [list(g) for g in p.hedge_groups], list(p.keep_last)]
            for a in sorted(ex.accounts.values(), key=lambda a: a.account_id)
            if (p := a.risk_plan) != DEFAULT_PLAN
        ],  # fmt: skip
        "margin": [
            [a.account_id, *a.margin.as_list()]
            for a in sorted(ex.accounts.values(), key=lambda a: a.account_id)
            if a.margin is not None
        ],
        "breach": [
            [aid, [list(t) for t in triggers]]
            for aid, triggers in sorted(ex.breach.entries.items())
        ],
        "margin_unknown": sorted(ex.margin_unknown),
        "allowance": sorted([aid, left] for aid, left in ex.allowance.items()),
        "positions": [
            [a.account_id, m, p.size, p.open_notional, p.realized]
            for a in sorted(ex.accounts.values(), key=lambda a: a.account_id)
            for m, p in sorted(a.positions.items())
        ],
    }


def restore_snapshot(ex: Exchange, snap: dict[str, Any]) -> Exchange:
    if snap.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {snap.get('version')} (upgrade_snapshot)")
    ex.last_seq, ex.last_ts = snap["last_seq"], snap["last_ts"]
    ex.next_account_id, ex.next_order_id, ex.next_trade_id, ex.next_transfer_id = snap["next"]
    ex.accounts = {}
    for aid, name, tier, stp, auto_borrow, created, balances, holds in snap["accounts"]:
        acct = Account(aid, name, tier, created)
        acct.stp, acct.auto_borrow = StpMode(stp), auto_borrow
        acct.balances, acct.holds = dict(balances), dict(holds)
        ex.accounts[aid] = acct
    ex.api_keys = {
        key: ApiKey(key, aid, secret, tuple(perms), label, created, revoked)
        for key, aid, secret, perms, label, created, revoked in snap["api_keys"]
    }
    ex.orders = {}
    for sym, data in snap["markets"].items():
        live = ex.markets[sym]  # (a name of its own: compiled, a variable has one type)
        live.state = MarketState(data["state"])
        for row in data["resting"]:
            o = _order_in(row)
            live.book.add(o)
            ex._index_live(o, ex.accounts[o.account_id])
        live.book.take_delta()
    for row in snap.get("untriggered", []):  # waiting for their trigger: not in a book
        o = _order_in(row)
        ex._index_live(o, ex.accounts[o.account_id])
        assert o.trigger_price is not None
        ex.triggers[o.market].add(o.order_id, o.trigger_price, triggers_on_rise(o.type, o.side))
        ex.untriggered += 1
    ex.done = {row[0]: _done_in(row) for row in snap["done"]}
    ex.done_queue = deque(ex.done)
    ex.deposits = {k: _transfer_in(t) for k, t in snap["deposits"]}
    ex.withdrawals = {k: _transfer_in(t) for k, t in snap["withdrawals"]}
    for asset, price, ts, stale in snap.get("oracle", []):  # absent before the oracle existed
        ex.oracle.restore(asset, price, ts, stale)
    ex.interest_ts = snap.get("interest_ts", ex.last_ts if ex.last_seq else None)
    for aid, name in SYSTEM_ACCOUNTS.items():  # system accounts added since the snapshot
        ex.accounts.setdefault(aid, Account(aid, name, 0, 0))
    for aid, market, size, open_notional, realized in snap.get("positions", []):
        ex.accounts[aid].positions[market] = Position(market, size, open_notional, realized)
        ex.open_interest[market] += max(size, 0)
        if size:
            ex.holders[market].add(aid)
    for market, premium_sum, samples, basis, last_rate in snap.get("funding", []):
        ex.funding[market] = MarketFunding(market, premium_sum, samples, basis, last_rate)
    ex.next_sample_ts, ex.next_funding_ts = snap.get("funding_ts", [None, None])
    ex.dead_man = {aid: deadline for aid, deadline in snap.get("dead_man", [])}
    for aid, cure, slice_ppm, order, groups, keep in snap.get("risk_plans", []):
        ex.accounts[aid].risk_plan = RiskPlan(
            cure, slice_ppm, tuple(order), tuple(tuple(g) for g in groups), tuple(keep)
        )
    for aid, state, since, deadline, need, steps in snap.get("margin", []):
        ex.accounts[aid].margin = MarginCase(MarginState(state), since, deadline, need, steps)
        ex.margin_cases.add(aid)
    ex.breach.rebuild(
        {aid: tuple((a, p, r) for a, p, r in triggers) for aid, triggers in snap.get("breach", [])}
    )
    ex.margin_unknown = set(snap.get("margin_unknown", []))
    ex.allowance = {aid: left for aid, left in snap.get("allowance", [])}
    for aid, acct in ex.accounts.items():  # pools are the users' balances, summed
        if aid >= FIRST_USER_ACCOUNT:
            for asset, bal in acct.balances.items():
                ex.pools[asset].move(0, bal)
            if acct.auto_borrow:  # and the loans its open orders will take
                for asset, hold in acct.holds.items():
                    ex.pools[asset].pending += max(hold - max(acct.balance(asset), 0), 0)
    return ex


def canonical_json(snap: dict[str, Any]) -> bytes:
    """The canonical JSON text of a snapshot: sorted keys, no spaces, non-ASCII escaped.

    orjson writes those same bytes 4-5x faster for the data of a snapshot (strings,
    integers, lists, dicts with string keys, None and booleans; no floats) whenever its
    output has no byte the standard library would escape (non-ASCII, and DEL) and it
    accepts the data (64-bit integers); otherwise the standard library writes them."""
    try:
        data = orjson.dumps(snap, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = b"\x80"  # not accepted: fall through to json
    if not data.isascii() or b"\x7f" in data:
        data = json.dumps(snap, sort_keys=True, separators=(",", ":")).encode()
    return data


def hash_snapshot(snap: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (`canonical_json`)."""
    return hashlib.sha256(canonical_json(snap)).hexdigest()
