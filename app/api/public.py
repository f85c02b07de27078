"""Public routes: health, time, assets, markets, book, trades, candles, ticker, metrics.

Rule owned here: public market data comes from the read models fed after each
commit, so it never shows state that is not durable.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from app.api.deps import market_spec, page, parse_cursor, public_limit, query, runtime
from app.api.responses import OrjsonResponse
from app.api.schemas import error_responses
from app.errors import ApiError
from app.metrics import render_metrics
from app.store import queries
from app.views import funding_row_wire, lending_wire, liquidation_wire, market_wire
from engine.fixedpoint import format_units
from engine.types import MarketKind

router = APIRouter(prefix="/v1", tags=["public"], dependencies=[Depends(public_limit)])
metrics_router = APIRouter(tags=["public"])
ERR = error_responses(404, 422, 429)


@router.get("/health", responses=error_responses(503), summary="Liveness and readiness")
async def health(request: Request) -> Any:
    rt = runtime(request)
    db = "ok"
    if rt.store is None or not await rt.store.ping():
        db = "down"
    status = rt.status  # starting, recovering, failed, ready
    if rt.sequencer is not None and not rt.sequencer.ready:
        status = "recovering"  # rebuilding from the journal after a failed commit
    body = {
        "status": "ok" if rt.ready and db == "ok" else status if not rt.ready else "degraded",
        "seq": rt.sequencer.committed_seq if rt.sequencer else rt.engine.last_seq,
        "db": db,
    }
    if rt.startup_error:
        body["error"] = rt.startup_error
    return OrjsonResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/time", summary="Server time in ms")
async def server_time() -> dict[str, int]:
    return {"server_time": int(time.time() * 1000)}


@router.get("/assets", summary="Assets, their decimals and index prices")
async def assets(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    quote = rt.config.assets[rt.config.quote_asset].decimals if rt.config.quote_asset else 0
    return {
        "assets": [
            {
                "symbol": a.symbol,
                "decimals": a.decimals,
                "index": rt.marketdata.index_wire(a.symbol, quote),
            }
            for a in rt.config.assets.values()
        ]
    }


@router.get("/lending", responses=error_responses(503), summary="Lending pools and rates")
async def lending(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    state = await query(rt, lambda ex: ex.lending_state())
    return {"pools": [lending_wire(asset, rt.config.assets[asset].decimals, pool)
                      for asset, pool in state.items()]}  # fmt: skip


@router.get("/insurance", responses=error_responses(422, 429, 503), summary="Insurance fund")
async def insurance(
    request: Request,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
) -> dict[str, Any]:
    """The fund's balances, the positions it took over (backstop) and its history:
    takeovers and bad debts, newest first (docs/liquidation.md)."""
    rt = runtime(request)
    state = await query(rt, lambda ex: ex.insurance_state())
    rows, nxt = await queries.list_insurance_history(rt.db, limit, cursor)
    cfg = rt.config
    return {
        "account_id": str(state["account_id"]),
        "equity": None if state["equity"] is None
        else format_units(state["equity"], cfg.assets[cfg.quote_asset].decimals),
        "balances": {a: format_units(v, cfg.assets[a].decimals)
                     for a, v in state["balances"].items()},
        "positions": [
            {
                "market": p["market"],
                "size": cfg.markets[p["market"]].fmt_size(p["size"]),
                "entry_price": None if p["entry_price"] is None
                else cfg.markets[p["market"]].fmt_price(p["entry_price"]),
            }
            for p in state["positions"]
        ],
        "history": [liquidation_wire(cfg, r) for r in rows],
        "next_cursor": nxt,
    }  # fmt: skip


@router.get("/markets", summary="Markets with tick, lot, minimum size, kind and state")
async def markets(request: Request) -> dict[str, Any]:
    rt = runtime(request)
    return {
        "markets": [
            market_wire(spec, rt.marketdata.market_state(sym), rt.config.risk.get(spec.base))
            for sym, spec in rt.config.markets.items()
        ]
    }


@router.get("/markets/{market}/book", responses=ERR, summary="Order book with CRC32 checksum")
async def book(request: Request, market: str, depth: int = Query(default=50, ge=1, le=1000)) -> Any:
    rt = runtime(request)
    market_spec(rt, market)
    return rt.marketdata.book_snapshot(market, depth)


@router.get("/markets/{market}/trades", responses=ERR, summary="Recent trades, newest first")
async def trades(
    request: Request, market: str, limit: int = Query(default=100, ge=1, le=1000)
) -> Any:
    rt = runtime(request)
    market_spec(rt, market)
    return {"trades": rt.marketdata.recent_trades(market, limit)}


@router.get("/markets/{market}/candles", responses=ERR, summary="OHLCV candles, oldest first")
async def candles(
    request: Request,
    market: str,
    interval: str = Query(default="1m", pattern="^(1m|5m|1h)$"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Any:
    rt = runtime(request)
    market_spec(rt, market)
    return {"candles": rt.marketdata.candles(market, interval, limit)}


@router.get("/markets/{market}/ticker", responses=ERR, summary="Best bid/ask, last, 24h figures")
async def ticker(request: Request, market: str) -> Any:
    rt = runtime(request)
    market_spec(rt, market)
    return rt.marketdata.ticker(market, int(time.time() * 1000))


@router.get("/markets/{market}/funding", responses=ERR, summary="Funding settlements, newest first")
async def funding(
    request: Request,
    market: str,
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
) -> Any:
    rt = runtime(request)
    spec = market_spec(rt, market)
    if spec.kind is not MarketKind.PERP:
        raise ApiError("UNKNOWN_MARKET", f"{market} is not a perpetual: it has no funding")
    rows, nxt = await queries.list_funding(rt.db, market, limit, parse_cursor(cursor))
    return page("funding", [funding_row_wire(rt.config, r) for r in rows], nxt)


@router.get("/markets/{market}", responses=ERR, summary="One market")
async def one_market(request: Request, market: str) -> Any:
    rt = runtime(request)
    spec = market_spec(rt, market)
    return market_wire(spec, rt.marketdata.market_state(market), rt.config.risk.get(spec.base))


@metrics_router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(request: Request) -> str:
    return render_metrics(runtime(request))


def not_found() -> ApiError:
    return ApiError("NOT_FOUND", "no such route")
