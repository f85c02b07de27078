"""JSON responses and error bodies, shared by the FastAPI routes and the hot routes.

Rules owned here: JSON is written by orjson (FastAPI's own `ORJSONResponse` does the
same but is deprecated, and each instance emits a (filtered) DeprecationWarning: a
warning machinery call on every request); an exception a route raises becomes one
ApiError (`api_error_of`), whichever front end served the route.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from starlette.responses import JSONResponse

from app.errors import ApiError

log = logging.getLogger("exchange.api")


def render_json(content: Any) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class OrjsonResponse(JSONResponse):
    """`ORJSONResponse`'s encoding (orjson, non-string keys allowed), without the warning."""

    def render(self, content: Any) -> bytes:
        return render_json(content)


def api_error_of(exc: Exception) -> ApiError:
    """The error to answer for what a route raised: its own ApiError; a read that met a
    dropped database connection (writes go through the sequencer: COMMIT_FAILED); else
    an unexpected error, logged with its traceback."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DBAPIError):
        log.warning("database error on a read: %s", str(exc).splitlines()[0])
        return ApiError("DATABASE_UNAVAILABLE", "the database did not answer")
    log.exception("unhandled error", exc_info=exc)
    return ApiError("INTERNAL_ERROR", "unexpected server error", status=500)


def error_response(err: ApiError) -> OrjsonResponse:
    return OrjsonResponse(err.body(), status_code=err.status, headers=err.headers)
