"""Account routes: the account view, settings, withdrawals, ledger, fills, API keys.

Rule owned here: the account view is read from the engine between batches
(`Sequencer.query`), so it is always the committed state; histories (ledger,
fills) come from the database projections written in the same transaction.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api.admin import money_result, new_key_pair, raise_rejection
from app.api.deps import (
    Principal,
    market_spec,
    page,
    parse_cursor,
    query,
    runtime,
    signed,
    submit,
    to_units,
)
from app.api.orders import order_command
from app.api.schemas import (
    DeadManRequest,
    KeyRequest,
    RiskPlanRequest,
    SettingsRequest,
    WhatIfRequest,
    WithdrawalRequest,
    error_responses,
)
from app.errors import ApiError
from app.runtime import Runtime
from app.store import queries
from app.views import fill_row_wire, funding_payment_wire, health_wire, ledger_row_wire
from engine import commands as c
from engine.events import AccountSettingsChanged, DeadManSwitch, RiskPlanSet
from engine.fixedpoint import format_units
from engine.portfolio import WhatIfOrder
from engine.riskplan import RiskPlan
from engine.types import StpMode

router = APIRouter(prefix="/v1", tags=["account"])
ERR = error_responses(400, 401, 403, 404, 409, 422, 429, 503)


def position_wire(
    rt: Runtime, p: dict[str, Any], liquidation: dict[str, int | None]
) -> dict[str, Any]:
    spec = rt.config.markets[p["market"]]
    quote = rt.config.assets[spec.quote].decimals

    def price(v: int | None) -> str | None:
        return None if v is None else spec.fmt_price(v)

    return {
        "market": p["market"],
        "size": spec.fmt_size(p["size"]),
        "entry_price": price(p["entry_price"]),
        "mark_price": price(p["mark_price"]),
        "unrealized_pnl": None
        if p["unrealized_pnl"] is None
        else format_units(p["unrealized_pnl"], quote),
        "realized_pnl": format_units(p["realized_pnl"], quote),
        "liquidation_price": price(liquidation.get(p["base"])),
    }


def risk_wire(rt: Runtime, view: dict[str, Any]) -> dict[str, Any]:
    """Health per level, each asset's part in it, and liquidation prices (engine/portfolio.py)."""
    quote = rt.config.assets[rt.config.quote_asset].decimals
    return {
        "health": health_wire(view["health"], quote),
        "health_by_asset": {
            asset: health_wire(levels, quote) for asset, levels in view["health_by_asset"].items()
        },
        "liquidation_prices": {
            asset: None if p is None else format_units(p, quote)
            for asset, p in view["liquidation_prices"].items()
        },
    }


@router.get("/account", responses=ERR, summary="Balances, holds, settings and margin state")
async def account(request: Request, who: Principal = Depends(signed("read"))) -> dict[str, Any]:
    rt = runtime(request)
    aid = who.account_id
    state = await query(rt, lambda ex: ex.account_state(aid))
    if state is None:
        raise ApiError("UNKNOWN_ACCOUNT", "no such account")
    balances = []
    for asset, (bal, hold) in state["balances"].items():
        dec = rt.config.assets[asset].decimals
        balances.append(
            {
                "asset": asset,
                "balance": format_units(bal, dec),
                "hold": format_units(hold, dec),
                "available": format_units(bal - hold, dec),
                "rate": format_units(state["rates"][asset], 6),
            }
        )
    return {
        "account_id": str(aid),
        "name": state["name"],
        "balances": balances,
        "positions": [
            position_wire(rt, p, state["liquidation_prices"]) for p in state["positions"]
        ],
        **risk_wire(rt, state),
        "margin_state": state["margin_state"],
        "deadline": state["margin_deadline"],
        "open_orders": state["open_orders"],
        "settings": {
            "stp": state["stp"],
            "auto_borrow": state["auto_borrow"],
            "fee_tier": state["tier"],
            "maker_fee_ppm": state["maker_fee_ppm"],
            "taker_fee_ppm": state["taker_fee_ppm"],
        },
    }


@router.post("/account/what-if", responses=ERR, summary="Health after orders and prices")
async def what_if(
    body: WhatIfRequest, request: Request, who: Principal = Depends(signed("read"))
) -> dict[str, Any]:
    """Nothing is placed: the account's risk now (`before`) and with every order counted
    as completely filled at the given index prices (top level, like `before`)."""
    rt = runtime(request)
    orders = []
    for item in body.orders:
        cmd = order_command(rt, who.account_id, item)
        orders.append(WhatIfOrder(cmd.market, cmd.side, cmd.size, cmd.price))
    quote = rt.config.quote_asset
    decimals = rt.config.assets[quote].decimals if quote else 0
    prices = {
        asset: to_units(text, decimals, "INVALID_PRICE", "price")
        for asset, text in body.prices.items()
    }
    aid = who.account_id
    out = await query(rt, lambda ex: ex.what_if(aid, orders, prices))
    if "error" in out:
        reason, detail = out["error"]
        raise ApiError(reason.name, detail)
    return {**risk_wire(rt, out["after"]), "before": risk_wire(rt, out["before"])}


def plan_wire(rt: Runtime, plan: RiskPlan) -> dict[str, Any]:
    """The GET and PUT risk-plan answer: the plan and the operator's cure-window limit."""
    return {
        "plan": {
            "cure_window_s": plan.cure_window_ms // 1000,
            "max_slice_pct": plan.max_slice_ppm // 10_000,
            "order": list(plan.order),
            "hedge_groups": [list(g) for g in plan.hedge_groups],
            "keep_last": list(plan.keep_last),
        },
        "max_cure_window_s": rt.config.max_cure_window_ms // 1000,
    }


@router.get("/account/risk-plan", responses=ERR, summary="How your risk is unwound")
async def get_risk_plan(
    request: Request, who: Principal = Depends(signed("read"))
) -> dict[str, Any]:
    rt = runtime(request)
    aid = who.account_id
    return plan_wire(rt, await query(rt, lambda ex: ex.accounts[aid].risk_plan))


@router.put("/account/risk-plan", responses=ERR, summary="Set how your risk is unwound")
async def put_risk_plan(
    body: RiskPlanRequest, request: Request, who: Principal = Depends(signed("trade", "order"))
) -> dict[str, Any]:
    """Replaces the plan (DESIGN section 9, docs/api.md); refused with the first problem's
    code and every problem in the message."""
    rt = runtime(request)
    if not 0 <= body.cure_window_s <= 10**9 or not 0 <= body.max_slice_pct <= 100:
        raise ApiError("INVALID_RISK_PLAN", "cure_window_s >= 0, max_slice_pct in (0, 100]")
    events = await submit(
        rt,
        c.SetRiskPlan(
            account_id=who.account_id,
            cure_window_ms=body.cure_window_s * 1000,
            max_slice_ppm=body.max_slice_pct * 10_000,
            order=tuple(body.order),
            hedge_groups=tuple(tuple(g) for g in body.hedge_groups),
            keep_last=tuple(body.keep_last),
        ),
    )
    raise_rejection(events)
    e = next(e for e in events if isinstance(e, RiskPlanSet))
    return plan_wire(
        rt, RiskPlan(e.cure_window_ms, e.max_slice_ppm, e.order, e.hedge_groups, e.keep_last)
    )


@router.post(
    "/account/dead-man-switch", responses=ERR, summary="Cancel all unless refreshed in time"
)
async def dead_man_switch(
    body: DeadManRequest, request: Request, who: Principal = Depends(signed("trade", "order"))
) -> dict[str, Any]:
    """Arms (or refreshes) the switch: every order of the account is cancelled
    `timeout_ms` after this call unless it comes again; 0 disarms. It lives in the
    engine's state, so an armed switch survives a restart."""
    rt = runtime(request)
    events = await submit(
        rt, c.SetDeadManSwitch(account_id=who.account_id, timeout_ms=body.timeout_ms)
    )
    raise_rejection(events)
    switch = next(e for e in events if isinstance(e, DeadManSwitch))
    return {
        "armed": switch.deadline is not None,
        "timeout_ms": body.timeout_ms,
        "deadline": switch.deadline,
    }


@router.put("/account/settings", responses=ERR, summary="Default STP mode and auto-borrow")
async def settings(
    body: SettingsRequest, request: Request, who: Principal = Depends(signed("trade", "order"))
) -> dict[str, Any]:
    rt = runtime(request)
    events = await submit(
        rt,
        c.SetAccountSettings(
            account_id=who.account_id,
            stp=StpMode(body.stp) if body.stp else None,
            auto_borrow=body.auto_borrow,
        ),
    )
    raise_rejection(events)
    changed = next(e for e in events if isinstance(e, AccountSettingsChanged))
    return {
        "settings": {
            "stp": changed.stp.value,
            "auto_borrow": changed.auto_borrow,
            "fee_tier": changed.tier,
        }
    }


@router.post("/withdrawals", responses=ERR, summary="Withdraw (idempotent on withdrawal_id)")
async def withdraw(
    body: WithdrawalRequest,
    request: Request,
    response: Response,
    who: Principal = Depends(signed("withdraw", "order")),
) -> dict[str, Any]:
    rt = runtime(request)
    asset = rt.config.assets.get(body.asset)
    if asset is None:
        raise ApiError("UNKNOWN_ASSET", f"unknown asset {body.asset}")
    amount = to_units(body.amount, asset.decimals, "INVALID_AMOUNT", "amount")
    events = await submit(
        rt,
        c.Withdraw(
            account_id=who.account_id,
            asset=body.asset,
            amount=amount,
            withdrawal_id=body.withdrawal_id,
            allow_borrow=body.allow_borrow,
        ),
    )
    return money_result(rt, events, who.account_id, response, status="completed")


@router.get("/ledger", responses=ERR, summary="Every balance change with its reason")
async def ledger(
    request: Request,
    asset: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
    who: Principal = Depends(signed("read")),
) -> dict[str, Any]:
    rt = runtime(request)
    if asset is not None and asset not in rt.config.assets:
        raise ApiError("UNKNOWN_ASSET", f"unknown asset {asset}")
    rows, nxt = await queries.list_ledger(
        rt.db,
        who.account_id,
        asset=asset,
        limit=limit,
        cursor=parse_cursor(cursor),
    )
    return page("entries", [ledger_row_wire(rt.config, r) for r in rows], nxt)


@router.get("/funding-payments", responses=ERR, summary="Your funding payments, newest first")
async def funding_payments(
    request: Request,
    market: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
    who: Principal = Depends(signed("read")),
) -> dict[str, Any]:
    rt = runtime(request)
    if market is not None:
        market_spec(rt, market)
    if cursor is not None and not re.fullmatch(r"\d{1,18}:[A-Za-z0-9-]{1,40}", cursor):
        raise ApiError("INVALID_CURSOR", "no such cursor")
    rows, nxt = await queries.list_funding_payments(
        rt.db, who.account_id, market=market, limit=limit, cursor=cursor
    )
    return {
        "payments": [funding_payment_wire(rt.config, r) for r in rows],
        "next_cursor": nxt,
    }


@router.get("/fills", responses=ERR, summary="Your fills, newest first")
async def fills(
    request: Request,
    market: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
    who: Principal = Depends(signed("read")),
) -> dict[str, Any]:
    rt = runtime(request)
    if market is not None:
        market_spec(rt, market)
    rows, nxt = await queries.list_fills(
        rt.db,
        who.account_id,
        market=market,
        limit=limit,
        cursor=parse_cursor(cursor),
    )
    return page("fills", [fill_row_wire(rt.config, r) for r in rows], nxt)


@router.post(
    "/account/keys", status_code=201, responses=ERR, summary="New API key with some permissions"
)
async def create_key(
    body: KeyRequest, request: Request, who: Principal = Depends(signed("trade", "order"))
) -> dict[str, Any]:
    rt = runtime(request)
    key, secret = new_key_pair()
    perms = tuple(dict.fromkeys(body.permissions))
    events = await submit(
        rt,
        c.CreateApiKey(
            account_id=who.account_id,
            api_key=key,
            api_secret=secret,
            permissions=perms,
            label=body.label,
        ),
    )
    raise_rejection(events)
    return {"api_key": key, "api_secret": secret, "permissions": list(perms), "label": body.label}


@router.delete("/account/keys/{api_key}", responses=ERR, summary="Revoke an API key")
async def revoke_key(
    api_key: str, request: Request, who: Principal = Depends(signed("trade", "cancel"))
) -> dict[str, Any]:
    rt = runtime(request)
    events = await submit(rt, c.RevokeApiKey(account_id=who.account_id, api_key=api_key))
    raise_rejection(events)
    return {"api_key": api_key, "revoked": True}
