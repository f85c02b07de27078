"""Request plumbing shared by the routers: runtime access, signed auth, rate limits,
decimal conversion and submitting commands to the sequencer.

Rules owned here: a private route runs only after the HMAC signature over
`timestamp + METHOD + path_with_query + body` checks out and the key has the
route's permission; every response of a limited route carries
`X-RateLimit-Remaining`, and a refusal is a 429 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, Response
from starlette.requests import HTTPConnection

from app.auth import AuthError, KeyRecord
from app.errors import ApiError
from app.runtime import Runtime
from app.sequencer import ServiceUnavailable
from engine.commands import Command, attach_signature
from engine.events import Event
from engine.exchange import Exchange
from engine.fixedpoint import FixedPointError, parse_units
from engine.markets import MarketSpec

T = TypeVar("T")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@dataclass(frozen=True, slots=True)
class Principal:
    key: KeyRecord

    @property
    def account_id(self) -> int:
        assert self.key.account_id is not None
        return self.key.account_id


def rate_check(rt: Runtime, bucket: str, category: str) -> str:
    """Take a token from `bucket`'s `category`; the `X-RateLimit-Remaining` value, or a
    429 RATE_LIMITED with `Retry-After`."""
    decision = rt.limiter.check(bucket, category)
    if not decision.allowed:
        retry = max(1, math.ceil(decision.retry_after_s))
        raise ApiError(
            "RATE_LIMITED",
            f"{category} rate limit reached",
            headers={"Retry-After": str(retry), "X-RateLimit-Remaining": "0"},
        )
    return str(decision.remaining)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_ALLOWED_QUERY: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: HTTPConnection) -> None:
    """Unknown query parameters are refused (422), never ignored: a typo such as
    `DELETE /v1/orders?markt=BTC-USDC` must not cancel every market's orders."""
    if request.scope["type"] != "http" or not request.query_params:
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed = _ALLOWED_QUERY.get(id(route))
    if allowed is None:
        allowed = _ALLOWED_QUERY[id(route)] = frozenset(_query_names(dependant))
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise ApiError("VALIDATION_ERROR", f"unknown query parameter {unknown[0]!r}")


async def public_limit(request: Request, response: Response) -> None:
    response.headers["X-RateLimit-Remaining"] = rate_check(
        runtime(request), "ip:" + client_ip(request), "ip"
    )


def signed_path(request: Request) -> str:
    """The path and query exactly as sent (raw bytes), which is what the client signed."""
    return scope_signed_path(request.scope)


def scope_signed_path(scope: Any) -> str:
    """`signed_path` of an ASGI scope."""
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def authenticate(
    rt: Runtime,
    ip: str,
    header: Callable[[str], str | None],
    method: str,
    path: str,
    body: bytes,
    permission: str,
    category: str,
) -> tuple[Principal, str]:
    """The checks of a signed route, in order: the IP's rate limit, the signature, the
    permission, a trading account for a user route, the key's rate limit. Returns the
    caller and the `X-RateLimit-Remaining` value, or raises the ApiError to answer. The
    signature is kept for `submit` (the journal carries it). `header` looks up a
    lowercase header name (the first one sent)."""
    rate_check(rt, "ip:" + ip, "ip")
    signature = header("x-signature")
    try:
        record, ts = rt.auth.verify_request(
            header("x-api-key"),
            header("x-timestamp"),
            signature,
            method,
            path,
            body,
            header("x-recv-window"),
        )
        rt.auth.require(record, permission)
    except AuthError as exc:
        status = 403 if exc.code == "PERMISSION_DENIED" else 401
        raise ApiError(exc.code, exc.message, status=status) from exc
    if permission not in ("admin", "oracle") and record.account_id is None:
        raise ApiError("PERMISSION_DENIED", "operator keys have no trading account", status=403)
    remaining = rate_check(rt, "key:" + record.api_key, category)
    assert signature is not None  # verified
    _signature.set((signature, ts))
    return Principal(record), remaining


def signed(permission: str, category: str = "read") -> Callable[..., Awaitable[Principal]]:
    """Dependency: verify the signature, the permission and the rate limits."""

    async def dependency(request: Request, response: Response) -> Principal:
        body = await request.body()
        principal, remaining = authenticate(
            runtime(request),
            client_ip(request),
            request.headers.get,
            request.method,
            signed_path(request),
            body,
            permission,
            category,
        )
        response.headers["X-RateLimit-Remaining"] = remaining
        return principal

    return dependency


# The signature of the request being served and the timestamp it claimed (set by
# `authenticate`, same task as the handler).
_signature: ContextVar[tuple[str, int] | None] = ContextVar("request_signature", default=None)


# Called once the command of the current context has its place in the sequence (the
# WebSocket session uses it to start on the next frame while this one commits).
on_queued: ContextVar[Callable[[], None] | None] = ContextVar("on_queued", default=None)


def enqueue(rt: Runtime, command: Command) -> asyncio.Future[list[Event]]:
    """Give a command its place in the sequence now; the future resolves to its events
    once they are durable (`events_of` turns a failure into the ApiError to answer). It
    carries the request's signature into the journal, so the replay window survives a
    restart."""
    if rt.sequencer is None:
        raise ApiError("NOT_ACCEPTING_COMMANDS", "the exchange is starting")
    signed_by = _signature.get()
    if signed_by is not None and command.sig is None:
        attach_signature(command, *signed_by)
    try:
        return rt.sequencer.enqueue(command)
    except ServiceUnavailable as exc:
        raise ApiError(exc.code, exc.message) from exc


def events_of(pending: asyncio.Future[list[Event]]) -> list[Event]:
    """The events of a command `enqueue` queued, once its future is done."""
    try:
        return pending.result()
    except ServiceUnavailable as exc:
        raise ApiError(exc.code, exc.message) from exc


async def submit(rt: Runtime, command: Command) -> list[Event]:
    """`enqueue` a command and wait for its durable events."""
    pending = enqueue(rt, command)
    queued = on_queued.get()
    if queued is not None:
        queued()
    with contextlib.suppress(ServiceUnavailable):  # (events_of raises it as an ApiError)
        await pending
    return events_of(pending)


async def query(rt: Runtime, fn: Callable[[Exchange], T]) -> T:
    """Run a read-only `fn` on the committed engine state, between batches."""
    if rt.sequencer is None:
        raise ApiError("NOT_ACCEPTING_COMMANDS", "the exchange is starting")
    try:
        return await rt.sequencer.query(fn)
    except ServiceUnavailable as exc:
        raise ApiError(exc.code, exc.message) from exc


def market_spec(rt: Runtime, market: str) -> MarketSpec:
    spec = rt.config.markets.get(market)
    if spec is None:
        raise ApiError("UNKNOWN_MARKET", f"unknown market {market}")
    return spec


# Numbers beyond this many atomic units are refused at the edge: the engine bounds are lower
# (engine.exchange.MAX_UNITS) and the journal stores 64-bit integers.
EDGE_MAX_UNITS = 10**18
_RANGE_CODES = {"size": "INVALID_SIZE", "amount": "INVALID_AMOUNT"}


def to_units(text: str, decimals: int, off_grid_code: str, what: str) -> int:
    """A decimal string to atomic units; too many decimals is an off-grid business error,
    an absurdly large value a range error of the field (INVALID_PRICE/SIZE/AMOUNT)."""
    try:
        units = parse_units(text, decimals)
    except FixedPointError as exc:
        raise ApiError(off_grid_code, f"{what} {text} has more decimals than allowed") from exc
    if abs(units) > EDGE_MAX_UNITS:
        raise ApiError(_RANGE_CODES.get(what, "INVALID_PRICE"), f"{what} {text} is out of range")
    return units


def check_timestamp(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 2**62:
        raise ApiError("INVALID_EXPIRE_TS", "expire_ts is out of range")
    return value


def parse_cursor(cursor: str | None) -> int | None:
    return parse_id(cursor, "INVALID_CURSOR") if cursor else None


def page(key: str, rows: list[Any], next_cursor: int | None) -> dict[str, Any]:
    """A paginated answer: the items and the cursor for the next (older) page, if any."""
    return {key: rows, "next_cursor": str(next_cursor) if next_cursor is not None else None}


def parse_id(text: str, code: str = "ORDER_NOT_FOUND") -> int:
    """Ids are decimal integers; anything else is simply not found (404)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:  # ("²".isdigit() too)
        raise ApiError(code, "no such object")
    return int(text)
