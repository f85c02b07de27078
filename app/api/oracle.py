"""`POST /v1/oracle/prices`: index prices from the oracle (oracle or admin key).

Rule owned here: a request's prices are one command, applied all or none; a
price is a decimal string in the quote asset (USDC) per whole unit of the asset,
with at most the quote asset's decimals.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from app.api.admin import raise_rejection
from app.api.deps import Principal, runtime, signed, submit, to_units
from app.api.schemas import OraclePricesRequest, error_responses
from app.errors import ApiError
from engine import commands as c
from engine.events import IndexUpdated
from engine.fixedpoint import format_units

router = APIRouter(prefix="/v1/oracle", tags=["operator"])
ERR = error_responses(400, 401, 403, 422, 429, 503)


@router.post("/prices", responses=ERR, summary="Set index prices (oracle or admin key)")
async def set_prices(
    body: OraclePricesRequest, request: Request, _: Principal = Depends(signed("oracle"))
) -> dict[str, Any]:
    rt = runtime(request)
    quote = rt.config.quote_asset
    if not quote:
        raise ApiError("UNKNOWN_ASSET", "markets have no single quote asset to price in")
    decimals = rt.config.assets[quote].decimals
    prices = tuple(
        (asset, to_units(text, decimals, "INVALID_PRICE", "price"))
        for asset, text in sorted(body.prices.items())
    )
    events = await submit(rt, c.SetOraclePrices(prices=prices))
    raise_rejection(events)
    return {
        "prices": {
            e.asset: {"price": format_units(e.price, decimals), "ts": e.ts, "stale": False}
            for e in events
            if isinstance(e, IndexUpdated)
        }
    }
