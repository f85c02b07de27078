"""The response class of every route: JSON written by orjson.

FastAPI's own `ORJSONResponse` does the same but is deprecated, and each instance
emits a (filtered) DeprecationWarning: a warning machinery call on every request."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """`ORJSONResponse`'s encoding (orjson, non-string keys allowed), without the warning."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
