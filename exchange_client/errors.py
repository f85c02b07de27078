"""Client-side error type: every non-2xx reply or WS ``error`` becomes an ApiError."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error reported by the exchange: ``{"error": {"code", "message"}}``.

    ``status`` is the HTTP status (0 for WebSocket replies), ``body`` the parsed
    JSON body (or raw text if it was not JSON).
    """

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.headers: dict[str, str] = {}

    @property
    def retry_after(self) -> float | None:
        """Seconds from the ``Retry-After`` header of a 429 reply, if any."""
        for name, value in self.headers.items():
            if name.lower() == "retry-after":
                try:
                    return float(value)
                except ValueError:
                    return None
        return None

    @classmethod
    def from_body(cls, status: int, body: Any) -> ApiError:
        """Build from a decoded reply body, tolerating non-standard shapes."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return cls(status, str(err.get("code", "UNKNOWN")), str(err.get("message", "")), body)
        if isinstance(body, dict) and "detail" in body:
            return cls(status, "HTTP_ERROR", str(body["detail"]), body)
        return cls(status, "HTTP_ERROR", str(body)[:500], body)
