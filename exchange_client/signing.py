"""Request signing: the one HMAC rule shared by client and server.

X-Signature = lowercase hex HMAC-SHA256(secret, f"{timestamp}{METHOD}{path_with_query}" + body),
where ``body`` is the exact request body bytes as sent (empty for no body) and
``path_with_query`` is the path plus ``?query`` exactly as sent on the wire.
WebSocket auth signs ``f"{timestamp}GET/v1/ws"`` (empty body).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

WS_PATH = "/v1/ws"


def now_ms() -> int:
    """Current wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


_signed_lock = threading.Lock()
_signed_recently: dict[tuple[int, bytes], None] = {}


def fresh_timestamp(payload_key: bytes) -> int:
    """Now in ms, moved forward only if this process already signed the same request in
    that millisecond: the server rejects a repeated signature as a replay, and identical
    requests sent concurrently (e.g. two `account()` reads) would otherwise collide."""
    with _signed_lock:
        ts = now_ms()
        while (ts, payload_key) in _signed_recently:
            ts += 1
        _signed_recently[(ts, payload_key)] = None
        if len(_signed_recently) > 4096:  # forget what is too old to collide (oldest first)
            horizon = ts - 2000
            for key in [k for k in _signed_recently if k[0] < horizon]:
                del _signed_recently[key]
        return ts


def signing_payload(
    timestamp_ms: int, method: str, path_with_query: str, body: bytes | str
) -> bytes:
    """The exact bytes that are signed."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    return f"{timestamp_ms}{method.upper()}{path_with_query}".encode() + raw


def sign(secret: str, timestamp_ms: int, method: str, path_with_query: str,
         body: bytes | str = b"") -> str:
    """Lowercase hex HMAC-SHA256 of ``timestamp + METHOD + path_with_query + body``."""
    payload = signing_payload(timestamp_ms, method, path_with_query, body)
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def auth_headers(
    api_key: str,
    secret: str,
    method: str,
    path_with_query: str,
    body: bytes | str = b"",
    timestamp_ms: int | None = None,
    recv_window: int | None = None,
) -> dict[str, str]:
    """Headers X-API-Key, X-Timestamp, X-Signature (and X-Recv-Window if given)."""
    if timestamp_ms is None:
        raw = body.encode() if isinstance(body, str) else bytes(body)
        ts = fresh_timestamp(f"{api_key}{method.upper()}{path_with_query}".encode() + raw)
    else:
        ts = timestamp_ms
    headers = {
        "X-API-Key": api_key,
        "X-Timestamp": str(ts),
        "X-Signature": sign(secret, ts, method, path_with_query, body),
    }
    if recv_window is not None:
        headers["X-Recv-Window"] = str(recv_window)
    return headers


def ws_auth_frame(
    api_key: str,
    secret: str,
    timestamp_ms: int | None = None,
    cancel_on_disconnect: bool = False,
) -> dict[str, object]:
    """The ``{"op":"auth",...}`` frame; signature over ``timestamp + "GET/v1/ws"``."""
    ts = fresh_timestamp(f"{api_key}ws".encode()) if timestamp_ms is None else timestamp_ms
    return {
        "op": "auth",
        "api_key": api_key,
        "timestamp": ts,
        "signature": sign(secret, ts, "GET", WS_PATH, b""),
        "cancel_on_disconnect": cancel_on_disconnect,
    }
