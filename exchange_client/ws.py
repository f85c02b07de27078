"""WebSocket client and order-book follower (API.md, ``GET /v1/ws``).

Rules owned here:
* Request/response: every client frame carries a fresh string ``id``; the frame
  that echoes that ``id`` (normally ``{"type":"response","id",...}``) resolves it,
  and an ``error`` member raises ``ApiError`` (status 0). Replies that come back
  without an ``id`` (``subscribed``, ``unsubscribed``, ``pong``) resolve the oldest
  waiter expecting that type. Every other frame goes to ``recv()``.
* Book following: a ``book_delta`` must have ``prev_seq`` equal to the last applied
  ``seq`` (else ``BookGapError``); after every snapshot/delta the checksum of the
  local book must equal the message's ``checksum`` (else ``BookChecksumError``).
  Size "0" removes a level.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .checksum import CHECKSUM_DEPTH, book_checksum
from .errors import ApiError
from .signing import ws_auth_frame

_FALLBACK_TYPES: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"subscribed"}),
    "unsubscribe": frozenset({"unsubscribed"}),
    "ping": frozenset({"pong"}),
    "auth": frozenset({"authenticated", "auth"}),
}


class _Closed:
    """Queue sentinel: the connection ended."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ExchangeWebSocket:
    """Async WebSocket client: one background reader routes replies and messages."""

    def __init__(self, request_timeout: float = 10.0) -> None:
        self.request_timeout = request_timeout
        self.conn: ClientConnection | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], frozenset[str]]] = {}
        self._queue: asyncio.Queue[dict[str, Any] | _Closed] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, url: str, **kwargs: Any) -> ExchangeWebSocket:
        """Open ``url`` (e.g. ``ws://host:8000/v1/ws``); kwargs go to ``websockets`` connect."""
        kwargs.setdefault("max_size", 2**24)
        self.conn = await connect(url, **kwargs)
        self._reader = asyncio.create_task(self._read_loop())
        return self

    async def __aenter__(self) -> ExchangeWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: Mapping[str, Any]) -> None:
        """Send one raw frame (no id added, no reply awaited)."""
        if self.conn is None:
            raise RuntimeError("not connected")
        await self.conn.send(orjson.dumps(dict(frame)).decode())

    async def request(self, op: str, body: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """Send ``{"op", "id", **body}`` and return the reply's ``result`` (or the frame)."""
        req_id = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (fut, _FALLBACK_TYPES.get(op, frozenset()))
        try:
            await self.send({**(body or {}), "op": op, "id": req_id})
            frame = await asyncio.wait_for(fut, timeout or self.request_timeout)
        finally:
            self._pending.pop(req_id, None)
        err = frame.get("error")
        if err is not None:
            if isinstance(err, dict):
                raise ApiError(0, str(err.get("code", "UNKNOWN")), str(err.get("message", "")),
                               frame)
            raise ApiError(0, "UNKNOWN", str(err), frame)
        return frame.get("result", frame)

    async def subscribe(self, channels: Iterable[str]) -> Any:
        return await self.request("subscribe", {"channels": list(channels)})

    async def unsubscribe(self, channels: Iterable[str]) -> Any:
        return await self.request("unsubscribe", {"channels": list(channels)})

    async def auth(self, api_key: str, secret: str, cancel_on_disconnect: bool = False) -> Any:
        frame = ws_auth_frame(api_key, secret, cancel_on_disconnect=cancel_on_disconnect)
        frame.pop("op")
        return await self.request("auth", frame)

    async def ping(self) -> Any:
        return await self.request("ping")

    async def place_order(self, **fields: Any) -> Any:
        return await self.request("order.place", {k: v for k, v in fields.items()
                                                  if v is not None})

    async def place_batch(self, orders: list[dict[str, Any]], atomic: bool = False) -> Any:
        return await self.request("order.batch", {"orders": orders, "atomic": atomic})

    async def amend_order(self, order_id: str, price: str | None = None,
                          size: str | None = None) -> Any:
        body = {"order_id": order_id, "price": price, "size": size}
        return await self.request("order.amend", {k: v for k, v in body.items() if v is not None})

    async def cancel_order(self, order_id: str) -> Any:
        return await self.request("order.cancel", {"order_id": order_id})

    async def cancel_all(self, market: str | None = None) -> Any:
        return await self.request("order.cancel_all", {} if market is None else {"market": market})

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Next non-reply message; raises ``ConnectionClosed`` once the socket has ended."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # keep raising for later callers
            raise item.exc
        return item

    def pending_messages(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def _route(self, frame: dict[str, Any]) -> None:
        fid = frame.get("id")
        entry = self._pending.get(str(fid)) if fid is not None else None
        if entry is None and fid is None:
            ftype = frame.get("type")
            entry = next((e for e in self._pending.values()
                          if ftype in e[1] and not e[0].done()), None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(frame)
        else:
            self._queue.put_nowait(frame)

    async def _read_loop(self) -> None:
        assert self.conn is not None
        exc: BaseException
        try:
            async for raw in self.conn:
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # not our protocol; nothing to route
                if isinstance(frame, dict):
                    self._route(frame)
            exc = ConnectionClosed(self.conn.protocol.close_rcvd, self.conn.protocol.close_sent)
        except ConnectionClosed as e:
            exc = e
        except Exception as e:  # surface anything to the waiters
            exc = e
        self.close_code = self.conn.close_code
        self.close_reason = self.conn.close_reason
        for fut, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(exc)
        self._queue.put_nowait(_Closed(exc))


class BookGapError(Exception):
    """A delta's ``prev_seq`` does not match the last applied ``seq`` (resync needed)."""


class BookChecksumError(Exception):
    """The local book's checksum differs from the one the server sent (resync needed)."""


class _Side:
    """One side of the book keyed by Decimal price; ``descending`` for bids."""

    def __init__(self, descending: bool) -> None:
        self.sign = -1 if descending else 1
        self.keys: list[Decimal] = []  # sort keys (price * sign), ascending
        self.levels: dict[Decimal, list[str]] = {}

    def clear(self) -> None:
        self.keys.clear()
        self.levels.clear()

    def set(self, price: str, size: str) -> None:
        key = Decimal(price) * self.sign
        if Decimal(size) == 0:
            if self.levels.pop(key, None) is not None:
                del self.keys[bisect.bisect_left(self.keys, key)]
            return
        if key not in self.levels:
            bisect.insort(self.keys, key)
        self.levels[key] = [price, size]

    def top(self, n: int | None = None) -> list[list[str]]:
        keys = self.keys if n is None else self.keys[:n]
        return [list(self.levels[k]) for k in keys]


class BookFollower:
    """Pure local book for one market fed with ``book_snapshot``/``book_delta`` messages."""

    def __init__(self, market: str | None = None, verify_checksum: bool = True) -> None:
        self.market = market
        self.verify_checksum = verify_checksum
        self.seq: int | None = None
        self.messages_verified = 0
        self._bids = _Side(descending=True)
        self._asks = _Side(descending=False)

    @property
    def bids(self) -> list[list[str]]:
        """All known bid levels, best (highest) first, as [price, size] strings."""
        return self._bids.top()

    @property
    def asks(self) -> list[list[str]]:
        """All known ask levels, best (lowest) first, as [price, size] strings."""
        return self._asks.top()

    def checksum(self) -> int:
        return book_checksum(self._bids.top(CHECKSUM_DEPTH), self._asks.top(CHECKSUM_DEPTH))

    def apply(self, message: Mapping[str, Any]) -> None:
        """Apply one message; raises BookGapError / BookChecksumError / ValueError."""
        mtype = message.get("type")
        market = message.get("market")
        if self.market is not None and market is not None and market != self.market:
            raise ValueError(f"message for {market!r}, following {self.market!r}")
        if mtype == "book_snapshot":
            self.market = self.market or market
            self._bids.clear()
            self._asks.clear()
        elif mtype == "book_delta":
            if self.seq is None or message.get("prev_seq") != self.seq:
                raise BookGapError(
                    f"{self.market}: prev_seq {message.get('prev_seq')} != last seq {self.seq}")
        else:
            raise ValueError(f"not a book message: {mtype!r}")
        for price, size in message.get("bids", ()):
            self._bids.set(price, size)
        for price, size in message.get("asks", ()):
            self._asks.set(price, size)
        self.seq = message["seq"]
        expected = message.get("checksum")
        if self.verify_checksum and expected is not None:
            actual = self.checksum()
            if actual != int(expected):
                raise BookChecksumError(
                    f"{self.market} seq {self.seq}: checksum {actual} != {expected}")
            self.messages_verified += 1
