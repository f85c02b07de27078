"""The FastAPI application: routers, error bodies, lifespan.

Rule owned here: every error leaves as `{"error": {"code", "message"}}` with the
status from `app.errors` (validation errors and malformed JSON are 422, unknown
routes 404), and the server takes commands only after the journal is replayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.api import account, admin, oracle, orders, public
from app.api.deps import reject_unknown_query
from app.api.hot import HotRoutes, hot_route
from app.api.responses import OrjsonResponse, api_error_of, error_response
from app.config import Settings
from app.errors import ApiError, all_codes
from app.runtime import Runtime
from app.ws import endpoint as ws_endpoint

DESCRIPTION = """Spot exchange API (wire contract v1). Signed routes need `X-API-Key`,
`X-Timestamp` (ms) and `X-Signature` = hex HMAC-SHA256(secret, timestamp + METHOD +
path_with_query + body). Errors are `{"error": {"code", "message"}}`; the codes:

""" + "\n".join(f"* `{code}` ({status})" for code, status in sorted(all_codes().items()))


class ExchangeApp(FastAPI):
    """The FastAPI app, with the hot routes (app/api/hot.py) taken before it sees them."""

    hot: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot is not None:
            route = hot_route(scope)
            if route is not None:
                await self.hot.serve(route, scope, receive, send, super().__call__)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = ExchangeApp(
        dependencies=[Depends(reject_unknown_query)],
        title="exchange",
        version="1.0.0",
        description=DESCRIPTION,
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks look up the global providers (and the environment)
        # on every request: 4% of a REST order's time with nobody listening. Operators
        # get /metrics and JSON logs instead (docs/operations.md).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = rt
    if settings.hot_routes:
        app.hot = HotRoutes(rt)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> OrjsonResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> OrjsonResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(ApiError("MALFORMED_JSON", "the body is not valid JSON"))
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{loc}: {first.get('msg', 'invalid input')}" if loc else str(first.get("msg"))
        return error_response(ApiError("VALIDATION_ERROR", message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> OrjsonResponse:
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            return error_response(ApiError("MALFORMED_JSON", "the body is not valid UTF-8 JSON"))
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return error_response(ApiError(code, str(exc.detail), status=exc.status_code))

    @app.exception_handler(DBAPIError)
    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> OrjsonResponse:
        return error_response(api_error_of(exc))

    # Routers are matched in this order, route by route: the hot ones first (order
    # entry, then account reads). No path of one router matches another's.
    app.include_router(orders.router)
    app.include_router(account.router)
    app.include_router(public.router)
    app.include_router(public.metrics_router)
    app.include_router(admin.router)
    app.include_router(oracle.router)
    app.include_router(ws_endpoint.router)
    app.add_middleware(ws_endpoint.KeepRawSend)  # lets the hub abort a stuck client
    return app
