"""Every error code the API can answer, and its HTTP status: the one table.

Rule owned here: errors are values with stable UPPER_SNAKE codes; the body is
always `{"error": {"code", "message"}}`. Engine rejections (`engine.types.Reject`)
keep their names as codes; edge errors (auth, input, limits, availability) are
listed below. docs/errors.md is generated from the same table (a test checks it).
"""

from __future__ import annotations

from typing import Any

from engine.types import Reject

# Engine rejection -> HTTP status (anything not listed is a 400 business rejection).
_REJECT_STATUS: dict[Reject, int] = {
    Reject.UNKNOWN_MARKET: 404,
    Reject.ORDER_NOT_FOUND: 404,
    Reject.UNKNOWN_ACCOUNT: 404,
    Reject.API_KEY_NOT_FOUND: 404,
    Reject.DUPLICATE_CLIENT_ORDER_ID: 409,
    Reject.DUPLICATE_DEPOSIT_ID: 409,
    Reject.DUPLICATE_WITHDRAWAL_ID: 409,
    Reject.DUPLICATE_API_KEY: 409,
}

# Errors raised at the edge, with their status and meaning.
EDGE_ERRORS: dict[str, tuple[int, str]] = {
    "VALIDATION_ERROR": (422, "the body or query has a wrong type, a missing or an unknown field"),
    "MALFORMED_JSON": (422, "the body is not valid JSON"),
    "INVALID_DECIMAL": (422, "an amount, price or size is not a plain decimal string"),
    "MISSING_AUTH_HEADERS": (401, "X-API-Key, X-Timestamp and X-Signature are required"),
    "INVALID_TIMESTAMP": (401, "X-Timestamp is not an integer of milliseconds"),
    "TIMESTAMP_OUTSIDE_RECV_WINDOW": (401, "X-Timestamp is too far from the server time"),
    "INVALID_RECV_WINDOW": (401, "X-Recv-Window is not an integer in 1..60000"),
    "UNKNOWN_API_KEY": (401, "the API key is unknown or revoked"),
    "INVALID_SIGNATURE": (401, "the signature does not match"),
    "REPLAYED_SIGNATURE": (401, "this signature was already accepted"),
    "PERMISSION_DENIED": (403, "the key lacks the permission this route needs"),
    "NOT_FOUND": (404, "no such route or object"),
    "METHOD_NOT_ALLOWED": (405, "the route does not take this method"),
    "RATE_LIMITED": (429, "too many requests; retry after Retry-After seconds"),
    "NOT_ACCEPTING_COMMANDS": (503, "the exchange is recovering and takes no commands"),
    "COMMIT_FAILED": (503, "the journal commit failed; nothing was applied"),
    "DATABASE_UNAVAILABLE": (503, "a read could not reach the database; retry"),
    "INVALID_CURSOR": (404, "the pagination cursor is not one this server gave"),
    "HTTP_ERROR": (400, "a protocol-level HTTP error"),
    "INTERNAL_ERROR": (500, "an unexpected server error"),
}


def status_for(code: str) -> int:
    if code in EDGE_ERRORS:
        return EDGE_ERRORS[code][0]
    try:
        return _REJECT_STATUS.get(Reject[code], 400)
    except KeyError:
        return 400


def all_codes() -> dict[str, int]:
    """Every code with its status (for docs and the OpenAPI description)."""
    out = {r.name: _REJECT_STATUS.get(r, 400) for r in Reject}
    out.update({code: status for code, (status, _) in EDGE_ERRORS.items()})
    return out


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str = "",
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code.replace("_", " ").lower()
        self.status = status if status is not None else status_for(code)
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.extra:
            err.update(self.extra)
        return {"error": err}


def errors_markdown() -> str:
    """docs/errors.md, generated from this table (a test keeps the file in sync)."""
    lines = [
        "# Error codes",
        "",
        'Every error body is `{"error": {"code": "...", "message": "..."}}`; the code is',
        "stable, the message is for humans. Generated from `app/errors.py` by",
        "`python -m app.errors > docs/errors.md`.",
        "",
        "## Engine rejections (business rules, see docs/orders.md)",
        "",
        "| code | status | number |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{r.name}` | {_REJECT_STATUS.get(r, 400)} | {int(r)} |" for r in Reject]
    lines += [
        "",
        "## Edge errors (input, auth, limits, availability)",
        "",
        "| code | status | meaning |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in EDGE_ERRORS.items()
    ]
    lines += [
        "",
        'WebSocket-only codes (in `{"type":"error"}` frames): `BAD_FRAME`, `UNKNOWN_OP`,',
        "`UNKNOWN_CHANNEL`, `AUTH_REQUIRED`, `FRAME_TOO_LARGE`, plus any code above.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(errors_markdown(), end="")
