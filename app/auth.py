"""Request authentication and permissions (API.md "Authentication"), framework-agnostic.

Rules owned here, checked in this order by ``Authenticator.verify``:
1. api key, timestamp and signature must all be present      -> MISSING_AUTH_HEADERS
2. timestamp is a non-negative integer (ms)                   -> INVALID_TIMESTAMP
3. recv window (optional) is an integer in 1..max (60000)     -> INVALID_RECV_WINDOW
4. |now - timestamp| <= recv window (default 5000, inclusive) -> TIMESTAMP_OUTSIDE_RECV_WINDOW
5. key known and not revoked (same message either way)        -> UNKNOWN_API_KEY
6. signature == exchange_client.signing.sign(...) (lowercase hex, constant-time compare)
                                                              -> INVALID_SIGNATURE
7. signature not accepted before                              -> REPLAYED_SIGNATURE
Accepted signatures are remembered until ``timestamp + max_recv_window`` (the
recv-window header is not signed, so a replay could claim the maximum). Memory is
bounded: when full, the soonest-expiring entries are dropped and any timestamp at
or below the dropped horizon is refused as outside the window, so nothing dropped
can be replayed. All codes map to HTTP 401 except PERMISSION_DENIED (403), raised
by ``require``: ``admin`` implies every permission, every other permission
(``read``, ``trade``, ``withdraw``, ``oracle``) grants only itself.
"""

from __future__ import annotations

import heapq
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exchange_client.signing import now_ms, sign

PERMISSIONS = frozenset({"read", "trade", "withdraw", "admin", "oracle"})
USER_PERMISSIONS = frozenset({"read", "trade", "withdraw"})

AUTH_ERROR_STATUS: dict[str, int] = {
    "MISSING_AUTH_HEADERS": 401,
    "INVALID_TIMESTAMP": 401,
    "TIMESTAMP_OUTSIDE_RECV_WINDOW": 401,
    "INVALID_RECV_WINDOW": 401,
    "UNKNOWN_API_KEY": 401,
    "INVALID_SIGNATURE": 401,
    "REPLAYED_SIGNATURE": 401,
    "PERMISSION_DENIED": 403,
}


@dataclass(frozen=True)
class KeyRecord:
    api_key: str
    secret: str
    account_id: int | None  # None for operator keys
    permissions: frozenset[str]
    revoked: bool = False


class AuthError(Exception):
    """Authentication/authorization failure with a stable code and its HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = AUTH_ERROR_STATUS.get(code, 401)


def has_permission(record: KeyRecord, permission: str) -> bool:
    return "admin" in record.permissions or permission in record.permissions


def require(record: KeyRecord, permission: str) -> None:
    """Raise PERMISSION_DENIED (403) unless ``record`` grants ``permission``."""
    if not has_permission(record, permission):
        raise AuthError("PERMISSION_DENIED", f"API key lacks the '{permission}' permission")


def _parse_int(value: str | int | None) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


class Authenticator:
    """Verifies signed requests against keys from ``lookup``; remembers signatures."""

    def __init__(
        self,
        lookup: Callable[[str], KeyRecord | None],
        recv_window_ms: int = 5000,
        max_recv_window_ms: int = 60000,
        clock: Callable[[], int] = now_ms,
        max_remembered: int = 1_000_000,
    ) -> None:
        self.lookup = lookup
        self.recv_window_ms = recv_window_ms
        self.max_recv_window_ms = max_recv_window_ms
        self.clock = clock
        self.max_remembered = max_remembered
        self._seen: dict[str, int] = {}  # signature -> expiry (ms)
        self._expiries: list[tuple[int, str]] = []  # min-heap mirror of _seen
        self._horizon = -1  # timestamps with ts + max_window <= horizon are refused

    require = staticmethod(require)
    has_permission = staticmethod(has_permission)

    def remember(self, signature: str, ts_ms: int) -> None:
        """Mark a signature as accepted with the timestamp `ts_ms` its request claimed (from
        the journal after a restart): it stays spent until `ts_ms` + the longest window."""
        if signature not in self._seen:
            self._remember(signature, ts_ms + self.max_recv_window_ms)

    def verify(self, *args: Any, **kwargs: Any) -> KeyRecord:
        """Return the caller's KeyRecord or raise AuthError (see module docstring):
        `verify_request` without the timestamp."""
        return self.verify_request(*args, **kwargs)[0]

    def verify_request(
        self,
        api_key: str | None,
        timestamp: str | int | None,
        signature: str | None,
        method: str,
        path_with_query: str,
        body: bytes,
        recv_window: str | int | None = None,
    ) -> tuple[KeyRecord, int]:
        """The caller's KeyRecord and the timestamp (ms) the request claimed, or AuthError
        (see module docstring). The journal keeps the timestamp with the signature
        (`engine.commands.attach_signature`)."""
        if not api_key or timestamp is None or timestamp == "" or not signature:
            raise AuthError(
                "MISSING_AUTH_HEADERS", "X-API-Key, X-Timestamp and X-Signature are required"
            )
        ts = _parse_int(timestamp)
        if ts is None or ts < 0:
            raise AuthError("INVALID_TIMESTAMP", "timestamp must be integer milliseconds")
        window = self.recv_window_ms
        if recv_window is not None and recv_window != "":
            parsed = _parse_int(recv_window)
            if parsed is None or not 0 < parsed <= self.max_recv_window_ms:
                raise AuthError(
                    "INVALID_RECV_WINDOW",
                    f"recv window must be an integer 1..{self.max_recv_window_ms}",
                )
            window = parsed
        now = self.clock()
        self._prune(now)
        if abs(now - ts) > window or ts + self.max_recv_window_ms <= self._horizon:
            raise AuthError(
                "TIMESTAMP_OUTSIDE_RECV_WINDOW",
                f"timestamp {ts} is outside the receive window of {window} ms (server time {now})",
            )
        record = self.lookup(api_key)
        if record is None or record.revoked:
            raise AuthError("UNKNOWN_API_KEY", "unknown or revoked API key")
        expected = sign(record.secret, ts, method, path_with_query, body)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise AuthError("INVALID_SIGNATURE", "signature does not match")
        if signature in self._seen:
            raise AuthError("REPLAYED_SIGNATURE", "this signature was already used")
        self._remember(signature, ts + self.max_recv_window_ms)
        return record, ts

    def remembered(self) -> int:
        """Number of signatures currently remembered (for tests and metrics)."""
        return len(self._seen)

    def _prune(self, now: int) -> None:
        while self._expiries and self._expiries[0][0] < now:
            _, sig = heapq.heappop(self._expiries)
            self._seen.pop(sig, None)

    def _remember(self, signature: str, expiry: int) -> None:
        self._seen[signature] = expiry
        heapq.heappush(self._expiries, (expiry, signature))
        while len(self._seen) > self.max_remembered:
            dropped, sig = heapq.heappop(self._expiries)
            self._seen.pop(sig, None)
            self._horizon = max(self._horizon, dropped)
