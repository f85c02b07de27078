"""Operator routes (admin key): accounts, deposits, market states, fee tiers.

Rule owned here: deposits are idempotent on `deposit_id`; a retry with the same
values returns the original ledger entry and changes nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from app.api.deps import (
    Principal,
    market_spec,
    parse_id,
    query,
    runtime,
    signed,
    submit,
    to_units,
)
from app.api.orders import rejection
from app.api.schemas import (
    AccountRequest,
    DepositRequest,
    FeeTierRequest,
    MarketStateRequest,
    error_responses,
)
from app.errors import ApiError
from app.runtime import Runtime
from app.store import queries
from app.views import transfer_wire
from engine import commands as c
from engine.events import AccountCreated, Event, IdempotentReplay, Rejected, Transfer
from engine.exchange import Exchange
from engine.fixedpoint import format_units
from engine.types import LedgerReason, MarketState

router = APIRouter(prefix="/v1/admin", tags=["operator"])
ERR = error_responses(400, 401, 403, 404, 409, 422, 429, 503)
DEFAULT_PERMISSIONS = ("read", "trade", "withdraw")


def new_key_pair() -> tuple[str, str]:
    return "k" + secrets.token_hex(12), secrets.token_hex(32)


def money_result(
    rt: Runtime, events: list[Event], account_id: int, response: Response, **extra: Any
) -> dict[str, Any]:
    """`{"entry", "replayed"}` of a deposit or withdrawal: 201 when it moved money, 200 for an
    idempotent retry (the original entry, nothing changed); rejections raise."""
    raise_rejection(events)
    for e in events:  # (interest settled first by the same command is not the answer)
        if isinstance(e, IdempotentReplay) or (
            isinstance(e, Transfer) and e.reason in (LedgerReason.DEPOSIT, LedgerReason.WITHDRAWAL)
        ):
            replayed = isinstance(e, IdempotentReplay)
            transfer = e.original if isinstance(e, IdempotentReplay) else e
            response.status_code = 200 if replayed else 201
            entry = transfer_wire(rt.config, transfer, account_id)
            return {"entry": entry, "replayed": replayed, **extra}
    raise ApiError("INTERNAL_ERROR", "the command moved no money", status=500)


def raise_rejection(events: list[Event]) -> None:
    for e in events:
        if isinstance(e, Rejected):
            raise rejection(e)


@router.post("/accounts", status_code=201, responses=ERR, summary="Create a trading account")
async def create_account(
    body: AccountRequest, request: Request, _: Principal = Depends(signed("admin"))
) -> dict[str, Any]:
    rt = runtime(request)
    key, secret = new_key_pair()
    events = await submit(
        rt,
        c.CreateAccount(
            name=body.name, api_key=key, api_secret=secret, permissions=DEFAULT_PERMISSIONS
        ),
    )
    raise_rejection(events)
    created = next(e for e in events if isinstance(e, AccountCreated))
    return {
        "account_id": str(created.account_id),
        "name": body.name,
        "api_key": key,
        "api_secret": secret,
        "permissions": list(DEFAULT_PERMISSIONS),
    }


@router.get("/accounts", responses=ERR, summary="List accounts (extension)")
async def list_accounts(
    request: Request, _: Principal = Depends(signed("admin"))
) -> dict[str, Any]:
    rt = runtime(request)
    rows, _ = await queries.list_accounts(rt.db)
    return {
        "accounts": [
            {
                "account_id": str(r["account_id"]),
                "name": r["name"],
                "tier": r["tier"],
                "created_ts": r["created_ts"],
            }
            for r in rows
        ]
    }


@router.post("/deposits", responses=ERR, summary="Credit a deposit (idempotent on deposit_id)")
async def deposit(
    body: DepositRequest,
    request: Request,
    response: Response,
    _: Principal = Depends(signed("admin")),
) -> dict[str, Any]:
    rt = runtime(request)
    account_id = parse_id(body.account_id, "UNKNOWN_ACCOUNT")
    asset = rt.config.assets.get(body.asset)
    if asset is None:
        raise ApiError("UNKNOWN_ASSET", f"unknown asset {body.asset}")
    amount = to_units(body.amount, asset.decimals, "INVALID_AMOUNT", "amount")
    events = await submit(
        rt,
        c.Deposit(
            account_id=account_id, asset=body.asset, amount=amount, deposit_id=body.deposit_id
        ),
    )
    return money_result(rt, events, account_id, response)


@router.get(
    "/audit", responses=ERR, summary="Seq, state hash, invariants, totals, recovery (extension)"
)
async def audit(request: Request, _: Principal = Depends(signed("admin"))) -> dict[str, Any]:
    """What an operator checks after a restart: the engine's invariants, per-asset
    conservation (users + system + external == 0), the stored snapshots and how the
    last recovery went."""
    rt = runtime(request)

    def read(ex: Exchange) -> tuple[int, str, list[str], dict[str, tuple[int, int, int]]]:
        return ex.last_seq, ex.state_hash(), ex.check_invariants(), ex.asset_totals()

    seq, state_hash, problems, totals = await query(rt, read)
    wire_totals = {}
    for asset, (users, system, external) in totals.items():
        dec = rt.config.assets[asset].decimals
        wire_totals[asset] = {
            "users": format_units(users, dec),
            "system": format_units(system, dec),
            "external": format_units(external, dec),
        }
    snapshots = await rt.db.list_snapshots()
    return {
        "seq": seq,
        "state_hash": state_hash,
        "invariants": problems,
        "totals": wire_totals,
        "snapshots": [{"seq": s, "ts": ts, "state_hash": h} for s, ts, h in snapshots],
        "recovery": rt.recovery.wire(),
    }


@router.post("/markets/{market}/state", responses=ERR, summary="Set a market's state")
async def set_market_state(
    market: str, body: MarketStateRequest, request: Request, _: Principal = Depends(signed("admin"))
) -> dict[str, Any]:
    rt = runtime(request)
    market_spec(rt, market)
    events = await submit(rt, c.SetMarketState(market=market, state=MarketState(body.state)))
    raise_rejection(events)
    return {"market": market, "state": body.state}


@router.post(
    "/accounts/{account_id}/fee-tier",
    responses=ERR,
    summary="Set an account's fee tier (extension)",
)
async def set_fee_tier(
    account_id: str, body: FeeTierRequest, request: Request, _: Principal = Depends(signed("admin"))
) -> dict[str, Any]:
    rt = runtime(request)
    aid = parse_id(account_id, "UNKNOWN_ACCOUNT")
    events = await submit(rt, c.SetAccountSettings(account_id=aid, tier=body.tier))
    raise_rejection(events)
    return {"account_id": str(aid), "tier": body.tier}
