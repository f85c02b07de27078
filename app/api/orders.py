"""Order routes: place, batch, amend, cancel, cancel-all, reads.

Rule owned here: one request is one engine command (a batch too), so a request
is applied entirely or not at all; the response is built from that command's
events only after they are committed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api.deps import (
    Principal,
    check_timestamp,
    market_spec,
    page,
    parse_cursor,
    parse_id,
    query,
    runtime,
    signed,
    submit,
    to_units,
)
from app.api.schemas import (
    AmendRequest,
    BatchRequest,
    CancelBatchRequest,
    OrderRequest,
    error_responses,
)
from app.errors import ApiError
from app.runtime import Runtime
from app.store import queries
from app.views import fill_from_trade, fill_row_wire, order_wire
from engine import commands as c
from engine.events import BatchItem, Event, OrderUpdate, Rejected, TradeEvent
from engine.exchange import Exchange
from engine.types import OrderType, Side, StpMode, TimeInForce

router = APIRouter(prefix="/v1", tags=["orders"])
ERR = error_responses(400, 401, 403, 404, 409, 422, 429, 503)


def order_command(rt: Runtime, account_id: int, body: OrderRequest) -> c.PlaceOrder:
    spec = market_spec(rt, body.market)
    otype = OrderType(body.type)
    immediate = otype in (OrderType.MARKET, OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET)
    tif = body.time_in_force or ("ioc" if immediate else "gtc")
    return c.PlaceOrder(
        account_id=account_id,
        market=body.market,
        side=Side(body.side),
        type=otype,
        size=to_units(body.size, spec.base_decimals, "SIZE_NOT_ON_LOT", "size"),
        price=None
        if body.price is None
        else to_units(body.price, spec.quote_decimals, "PRICE_NOT_ON_TICK", "price"),
        tif=TimeInForce(tif),
        expire_ts=check_timestamp(body.expire_ts),
        client_order_id=body.client_order_id,
        stp=StpMode(body.stp) if body.stp else None,
        reduce_only=body.reduce_only,
        trigger_price=None
        if body.trigger_price is None
        else to_units(
            body.trigger_price, spec.quote_decimals, "PRICE_NOT_ON_TICK", "trigger_price"
        ),
    )


def rejection(e: Rejected) -> ApiError:
    extra = {"order_id": str(e.order_id)} if e.order_id is not None else None
    return ApiError(e.reason.name, e.detail or e.reason.name.replace("_", " ").lower(), extra=extra)


def order_result(rt: Runtime, events: list[Event], account_id: int) -> dict[str, Any]:
    """`{"order", "fills"}` from the events of one placement/amend; raises on a rejection."""
    order = None
    for e in events:
        if isinstance(e, Rejected):
            raise rejection(e)
        if isinstance(e, OrderUpdate) and e.order.account_id == account_id:
            order = e.order
    if order is None:
        raise ApiError("INTERNAL_ERROR", "the command produced no order", status=500)
    fills = [
        fill_from_trade(rt.config, e, account_id)
        for e in events
        if isinstance(e, TradeEvent) and e.taker_order_id == order.order_id
    ]
    return {"order": order_wire(rt.config, order), "fills": fills}


def split_items(events: list[Event], n: int) -> list[list[Event]]:
    """Events of a batch command cut at the `BatchItem` markers (one list per item)."""
    items: list[list[Event]] = [[] for _ in range(n)]
    current: list[Event] | None = None
    for e in events:
        if isinstance(e, BatchItem):
            current = items[e.item]
        elif current is not None:
            current.append(e)
    return items


def error_item(err: ApiError) -> dict[str, Any]:
    return err.body()


@router.post("/orders", status_code=201, responses=ERR, summary="Place an order")
async def place_order(
    body: OrderRequest,
    request: Request,
    response: Response,
    who: Principal = Depends(signed("trade", "order")),
) -> dict[str, Any]:
    result = await place(runtime(request), who.account_id, body)
    if result.get("replayed"):
        response.status_code = 200
    return result


@router.post("/orders/batch", responses=ERR, summary="Place up to 20 orders (optionally atomic)")
async def place_batch(
    body: BatchRequest, request: Request, who: Principal = Depends(signed("trade", "order"))
) -> dict[str, Any]:
    return await place_batch_items(runtime(request), who.account_id, body)


@router.post("/orders/cancel-batch", responses=ERR, summary="Cancel up to 20 orders (extension)")
async def cancel_batch(
    body: CancelBatchRequest, request: Request, who: Principal = Depends(signed("trade", "cancel"))
) -> dict[str, Any]:
    rt = runtime(request)
    if not body.cancels:
        raise ApiError("BATCH_EMPTY", "a batch needs at least one cancel")
    if len(body.cancels) > rt.config.max_batch:
        raise ApiError("BATCH_TOO_LARGE", f"at most {rt.config.max_batch} cancels per batch")
    cancels = []
    for item in body.cancels:
        oid = None
        if item.order_id is not None:
            text = item.order_id  # anything but an id of ours: an order that is not found
            oid = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0
        cancels.append(
            c.CancelOrder(
                account_id=who.account_id, order_id=oid, client_order_id=item.client_order_id
            )
        )
    events = await submit(rt, c.BatchCancel(account_id=who.account_id, cancels=tuple(cancels)))
    results: list[dict[str, Any]] = []
    for item_events in split_items(events, len(cancels)):
        try:
            results.append({"order": order_result(rt, item_events, who.account_id)["order"]})
        except ApiError as err:
            results.append(error_item(err))
    return {"results": results}


@router.get("/orders", responses=ERR, summary="List orders (newest first)")
async def list_orders(
    request: Request,
    market: str | None = None,
    status: str | None = Query(default=None, pattern="^(open|all)$"),
    limit: int = Query(default=100, ge=1, le=1000),
    cursor: str | None = None,
    who: Principal = Depends(signed("read")),
) -> dict[str, Any]:
    rt = runtime(request)
    if market is not None:
        market_spec(rt, market)
    below = parse_cursor(cursor)
    if status == "open":  # live orders are the engine's: no index of them on disk
        views = await query(rt, partial(
            Exchange.live_orders, account_id=who.account_id, market=market, below=below,
            limit=limit + 1))
        nxt = views[limit - 1].order_id if len(views) > limit else None
        return page("orders", [order_wire(rt.config, v) for v in views[:limit]], nxt)
    rows, nxt = await queries.list_orders(
        rt.db, who.account_id, market=market, limit=limit, cursor=below
    )
    return page("orders", [order_wire(rt.config, r) for r in rows], nxt)


@router.get("/orders/by-client-id/{client_order_id}", responses=ERR, summary="Order by client id")
async def get_order_by_client_id(
    client_order_id: str, request: Request, who: Principal = Depends(signed("read"))
) -> dict[str, Any]:
    rt = runtime(request)
    row = await queries.get_order_by_client_id(rt.db, who.account_id, client_order_id)
    if row is None:
        raise ApiError("ORDER_NOT_FOUND", "no such order")
    return {"order": order_wire(rt.config, row)}


@router.get("/orders/{order_id}", responses=ERR, summary="One order")
async def get_order(
    order_id: str, request: Request, who: Principal = Depends(signed("read"))
) -> dict[str, Any]:
    rt = runtime(request)
    row = await queries.get_order(rt.db, who.account_id, parse_id(order_id))
    if row is None:
        raise ApiError("ORDER_NOT_FOUND", "no such order")
    return {"order": order_wire(rt.config, row)}


@router.patch("/orders/{order_id}", responses=ERR, summary="Amend price and/or size")
async def amend_order(
    order_id: str,
    body: AmendRequest,
    request: Request,
    who: Principal = Depends(signed("trade", "order")),
) -> dict[str, Any]:
    return await amend(runtime(request), who.account_id, order_id, body)


@router.delete("/orders/{order_id}", responses=ERR, summary="Cancel one order")
async def cancel_order(
    order_id: str, request: Request, who: Principal = Depends(signed("trade", "cancel"))
) -> dict[str, Any]:
    return await cancel(runtime(request), who.account_id, order_id)


@router.delete("/orders", responses=ERR, summary="Cancel all orders (of one market or all)")
async def cancel_all(
    request: Request, market: str | None = None, who: Principal = Depends(signed("trade", "cancel"))
) -> dict[str, Any]:
    return await cancel_all_orders(runtime(request), who.account_id, market)


# ---------------------------------------------------------------------------------------------
# Services shared by the REST routes and WebSocket order entry (same rules, same results).


async def place(rt: Runtime, account_id: int, body: OrderRequest) -> dict[str, Any]:
    cmd = order_command(rt, account_id, body)
    return await placed(rt, account_id, cmd, await submit(rt, cmd))


async def placed(
    rt: Runtime, account_id: int, cmd: c.PlaceOrder, events: list[Event]
) -> dict[str, Any]:
    """The answer to a placement: `order_result`, except that a retry of a live order
    gets that order (`retried_order`)."""
    try:
        return order_result(rt, events, account_id)
    except ApiError as err:
        if may_be_retry(err):
            replay = await retried_order(rt, account_id, cmd)
            if replay is not None:
                return replay
        raise


def may_be_retry(err: ApiError) -> bool:
    """A placement refused for a client id that a live order holds may be a retry of it."""
    return err.code == "DUPLICATE_CLIENT_ORDER_ID"


async def retried_order(rt: Runtime, account_id: int, cmd: c.PlaceOrder) -> dict[str, Any] | None:
    """A retry of a live order (same client id and parameters) gets that order as it is
    now, with its fills, instead of a duplicate: idempotent placement, across restarts."""
    assert cmd.client_order_id is not None
    row = await queries.get_order_by_client_id(rt.db, account_id, cmd.client_order_id)
    if row is None or row["status"] not in ("open", "partially_filled", "untriggered"):
        return None
    same = (row["market"], row["side"], row["type"], row["price"], row["size"], row["tif"]) == (
        cmd.market,
        cmd.side.value,
        cmd.type.value,
        cmd.price,
        cmd.size,
        cmd.tif.value,
    )
    if not same:
        return None
    fills = await queries.fills_of_order(rt.db, account_id, row["order_id"])
    return {
        "order": order_wire(rt.config, row),
        "fills": [fill_row_wire(rt.config, f) for f in fills],
        "replayed": True,
    }


async def place_batch_items(rt: Runtime, account_id: int, body: BatchRequest) -> dict[str, Any]:
    if not body.orders:
        raise ApiError("BATCH_EMPTY", "a batch needs at least one order")
    if len(body.orders) > rt.config.max_batch:
        raise ApiError("BATCH_TOO_LARGE", f"at most {rt.config.max_batch} orders per batch")
    results: list[dict[str, Any] | None] = [None] * len(body.orders)
    commands: list[c.PlaceOrder] = []
    index: list[int] = []
    for i, item in enumerate(body.orders):
        try:
            commands.append(order_command(rt, account_id, item))
            index.append(i)
        except ApiError as err:
            if body.atomic:
                raise ApiError("ATOMIC_BATCH_FAILED", f"leg {i}: {err.code} {err.message}") from err
            results[i] = error_item(err)
    if commands:
        events = await submit(
            rt, c.BatchPlace(account_id=account_id, orders=tuple(commands), atomic=body.atomic)
        )
        whole = next(
            (
                e
                for e in events
                if isinstance(e, Rejected) and not any(isinstance(x, BatchItem) for x in events)
            ),
            None,
        )
        if whole is not None:
            refused = rejection(whole)
            return {"results": [error_item(refused) for _ in body.orders]}
        for i, item_events in zip(index, split_items(events, len(commands)), strict=True):
            try:
                results[i] = order_result(rt, item_events, account_id)
            except ApiError as err:
                results[i] = error_item(err)
    return {"results": results}


async def amend(rt: Runtime, account_id: int, order_id: str, body: AmendRequest) -> dict[str, Any]:
    oid = parse_id(order_id)
    row = await queries.get_order(rt.db, account_id, oid)
    if row is None:
        raise ApiError("ORDER_NOT_FOUND", "no such order")
    spec = market_spec(rt, row["market"])
    cmd = c.AmendOrder(
        account_id=account_id,
        order_id=oid,
        price=None
        if body.price is None
        else to_units(body.price, spec.quote_decimals, "PRICE_NOT_ON_TICK", "price"),
        size=None
        if body.size is None
        else to_units(body.size, spec.base_decimals, "SIZE_NOT_ON_LOT", "size"),
    )
    return order_result(rt, await submit(rt, cmd), account_id)


async def cancel(rt: Runtime, account_id: int, order_id: str) -> dict[str, Any]:
    events = await submit(rt, cancel_command(account_id, order_id))
    return cancelled(rt, events, account_id)


def cancel_command(account_id: int, order_id: str) -> c.CancelOrder:
    return c.CancelOrder(account_id=account_id, order_id=parse_id(order_id))


def cancelled(rt: Runtime, events: list[Event], account_id: int) -> dict[str, Any]:
    """The answer to a cancel."""
    return {"order": order_result(rt, events, account_id)["order"]}


async def cancel_all_orders(rt: Runtime, account_id: int, market: str | None) -> dict[str, Any]:
    if market is not None:
        market_spec(rt, market)
    events = await submit(rt, c.CancelAll(account_id=account_id, market=market))
    for e in events:
        if isinstance(e, Rejected):
            raise rejection(e)
    return {
        "cancelled": [
            str(e.order.order_id)
            for e in events
            if isinstance(e, OrderUpdate)
            and e.order.account_id == account_id
            and e.order.status.value == "cancelled"
        ]
    }
