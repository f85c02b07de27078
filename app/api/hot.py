"""Hot routes: `POST /v1/orders` and `DELETE /v1/orders/{id}` served straight from ASGI.

Rules owned here:
* a hot route answers exactly what its FastAPI route answers: the same checks in the
  same order through the same functions (`deps.authenticate`, `orders.place`,
  `orders.cancel`, `responses.api_error_of`), the same statuses, bodies and headers;
  only FastAPI's per-request machinery is skipped (dependency solving, request and
  response objects, five middleware wrappers: most of an order's CPU on the server's
  one event loop, BENCHMARKS.md);
* whatever it is not sure to answer the same way goes to the FastAPI app, body
  replayed: a query string, a content type other than `application/json`, a body
  that orjson cannot parse or `OrderRequest` does not validate. So input errors
  keep one source, and nothing is checked (or charged to a rate limit) twice;
* the FastAPI routes stay: they describe these routes in the OpenAPI document and
  serve them when `EXCHANGE_HOT_ROUTES=off` (tests compare the two).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import authenticate, scope_signed_path
from app.api.orders import cancel, place
from app.api.responses import api_error_of, render_json
from app.api.schemas import OrderRequest
from app.runtime import Runtime

ORDERS = "/v1/orders"
ORDER_PREFIX = ORDERS + "/"
_ID_AT = len(ORDER_PREFIX)  # where the order id starts in a cancel's path
_JSON = (b"content-type", b"application/json")


def hot_route(scope: Scope) -> str | None:
    """"place" or "cancel" for a request a hot route takes, else None."""
    if scope["type"] != "http" or scope.get("query_string"):
        return None
    method, path = scope["method"], scope["path"]
    if method == "POST" and path == ORDERS:
        return "place"
    if method == "DELETE" and path.startswith(ORDER_PREFIX):
        order_id = path[_ID_AT:]
        if order_id and "/" not in order_id:
            return "cancel"
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then whatever the client sends next."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def _header_lookup(scope: Scope) -> Callable[[str], str | None]:
    """Lowercase name -> value of the first header of that name (as Starlette reads them)."""
    headers: dict[str, str] = {}
    for name, value in reversed(scope["headers"]):
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    return headers.get


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() == (
        "application/json"
    )


class HotRoutes:
    """Serves the hot routes of `hot_route` for one runtime; `fallback` is the FastAPI app."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.counts = rt.hot_route_counts  # (route, "served" | "fallback") -> requests

    async def serve(
        self, route: str, scope: Scope, receive: Receive, send: Send, fallback: ASGIApp
    ) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        header = _header_lookup(scope)
        request: OrderRequest | None = None
        if route == "place":
            try:
                if not _is_json(header("content-type")):
                    raise ValueError("not a JSON body")
                request = OrderRequest.model_validate(orjson.loads(body))
            except (ValueError, ValidationError):  # (orjson's JSONDecodeError is a ValueError)
                self._count(route, "fallback")
                await fallback(scope, _replay(body, receive), send)
                return
        self._count(route, "served")
        client = scope.get("client")
        headers: list[tuple[bytes, bytes]] = []
        try:
            principal, remaining = authenticate(
                self.rt,
                client[0] if client else "unknown",
                header,
                scope["method"],
                scope_signed_path(scope),
                body,
                "trade",
                "order" if route == "place" else "cancel",
            )
            if request is not None:
                result = await place(self.rt, principal.account_id, request)
                status = 200 if result.get("replayed") else 201
            else:
                result = await cancel(self.rt, principal.account_id, scope["path"][_ID_AT:])
                status = 200
            headers.append((b"x-ratelimit-remaining", remaining.encode()))
        except Exception as exc:
            err = api_error_of(exc)
            status, result = err.status, err.body()
            for name, value in (err.headers or {}).items():
                headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        payload = render_json(result)
        headers.append((b"content-length", str(len(payload)).encode()))
        headers.append(_JSON)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _count(self, route: str, outcome: str) -> None:
        key = (route, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
