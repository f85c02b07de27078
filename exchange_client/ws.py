"""WebSocket clients (API.md, ``GET /v1/ws``): async, plus the reconnecting stream.

Rules owned here:
* Request/response: every client frame carries a fresh string ``id``; the frame
  that echoes that ``id`` (normally ``{"type":"response","id",...}``) resolves it,
  and an ``error`` member raises ``ApiError`` (status 0). Replies that come back
  without an ``id`` (``subscribed``, ``unsubscribed``, ``pong``) resolve the oldest
  waiter expecting that type. Every other frame goes to ``recv()``.
* ``MarketStream`` never ends on its own: a closed socket (including the server's
  4008 for a slow reader), a refused connection or a failed handshake is retried with
  exponential backoff, re-authenticated and resubscribed; books are resynced from
  fresh snapshots (``exchange_client.book.BookSet``), on reconnect and on any gap or
  checksum mismatch (with a growing pause when a market keeps breaking).
The sync twins are in ``exchange_client.ws_sync``.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Generic, TypeVar

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .book import BOOK_TYPES, BookChecksumError, BookFollower, BookGapError, BookSet
from .errors import ApiError
from .signing import ws_auth_frame

__all__ = [
    "Backoff",
    "BookChecksumError",
    "BookFollower",
    "BookGapError",
    "ExchangeWebSocket",
    "MarketStream",
]

FALLBACK_TYPES: dict[str, frozenset[str]] = {
    "subscribe": frozenset({"subscribed"}),
    "unsubscribe": frozenset({"unsubscribed"}),
    "ping": frozenset({"pong"}),
    "auth": frozenset({"authenticated", "auth"}),
}
MAX_FRAME = 2**24
R = TypeVar("R")


def reply_result(frame: Mapping[str, Any]) -> Any:
    """The ``result`` of a reply frame (or the frame itself); raises its ``error``."""
    err = frame.get("error")
    if err is not None:
        if isinstance(err, dict):
            raise ApiError(0, str(err.get("code", "UNKNOWN")), str(err.get("message", "")),
                           dict(frame))
        raise ApiError(0, "UNKNOWN", str(err), dict(frame))
    return frame.get("result", frame)


def reply_or_error(frame: Mapping[str, Any]) -> Any:
    """``reply_result``, with a refusal returned as its ``ApiError`` instead of raised
    (what ``request_many`` gives for each request)."""
    try:
        return reply_result(frame)
    except ApiError as err:
        return err


def encode(frame: Mapping[str, Any]) -> str:
    return orjson.dumps(dict(frame)).decode()


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


class WsOps(Generic[R]):
    """Every client operation of the WebSocket API; ``R`` is ``Any`` or ``Awaitable[Any]``."""

    @abstractmethod
    def request(self, op: str, body: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> R:
        """Send ``{"op", "id", **body}``; the reply's ``result`` (``ApiError`` on error)."""

    def subscribe(self, channels: Iterable[str]) -> R:
        return self.request("subscribe", {"channels": list(channels)})

    def unsubscribe(self, channels: Iterable[str]) -> R:
        return self.request("unsubscribe", {"channels": list(channels)})

    def auth(self, api_key: str, secret: str, cancel_on_disconnect: bool = False) -> R:
        frame = ws_auth_frame(api_key, secret, cancel_on_disconnect=cancel_on_disconnect)
        frame.pop("op")
        return self.request("auth", frame)

    def ping(self) -> R:
        return self.request("ping")

    def place_order(self, **fields: Any) -> R:
        return self.request("order.place", _present(fields))

    def place_batch(self, orders: list[dict[str, Any]], atomic: bool = False) -> R:
        return self.request("order.batch", {"orders": orders, "atomic": atomic})

    def amend_order(self, order_id: str, price: str | None = None,
                    size: str | None = None) -> R:
        return self.request("order.amend", _present({"order_id": order_id, "price": price,
                                                     "size": size}))

    def cancel_order(self, order_id: str) -> R:
        return self.request("order.cancel", {"order_id": order_id})

    def cancel_all(self, market: str | None = None) -> R:
        return self.request("order.cancel_all", {} if market is None else {"market": market})


class _Closed:
    """Queue sentinel: the connection ended."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ExchangeWebSocket(WsOps[Any]):
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
        kwargs.setdefault("max_size", MAX_FRAME)
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
        await self.conn.send(encode(frame))

    async def request(self, op: str, body: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        (result,) = await self.request_many([(op, body)], timeout)
        if isinstance(result, ApiError):
            raise result
        return result

    async def request_many(self, calls: Iterable[tuple[str, Mapping[str, Any] | None]],
                           timeout: float | None = None) -> list[Any]:
        """Send every ``(op, body)`` at once, in order, then wait for all the replies.

        The server runs pipelined frames in the order sent and commits them together,
        so this takes about one round trip instead of one per request. Each item of the
        result is that reply's ``result``, or the ``ApiError`` it carried (returned,
        not raised, so one refusal does not hide the other replies)."""
        loop = asyncio.get_running_loop()
        ids: list[str] = []
        futures: list[asyncio.Future[dict[str, Any]]] = []
        try:
            for op, body in calls:
                req_id = str(next(self._ids))
                fut: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._pending[req_id] = (fut, FALLBACK_TYPES.get(op, frozenset()))
                ids.append(req_id)
                futures.append(fut)
                await self.send({**(body or {}), "op": op, "id": req_id})
            frames = await asyncio.wait_for(asyncio.gather(*futures),
                                            timeout or self.request_timeout)
        finally:
            for req_id in ids:
                self._pending.pop(req_id, None)
        return [reply_or_error(frame) for frame in frames]

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


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``; ``reset`` after a success."""

    def __init__(self, initial: float = 0.25, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial


class StreamSpec:
    """What a stream subscribes to, shared by the async and sync streams."""

    def __init__(self, url: str, books: Iterable[str], channels: Iterable[str],
                 api_key: str | None, api_secret: str | None, verify_checksum: bool,
                 backoff: Backoff | None) -> None:
        self.url = url
        self.books = BookSet(books, verify_checksum)
        self.channels = list(channels)
        self.credentials = (api_key, api_secret) if api_key and api_secret else None
        self.backoff = backoff or Backoff()
        self.reconnects = 0  # connections replaced after the first one
        self.connected = False

    def all_channels(self) -> list[str]:
        return self.books.channels + [c for c in self.channels if c not in self.books.channels]


# a refused or broken handshake (a 502/503 from a proxy, a server going down) is retried
# like a dropped connection
RETRYABLE = (ConnectionClosed, InvalidHandshake, OSError, asyncio.TimeoutError)


class MarketStream(StreamSpec):
    """Async iterator over every message of a WebSocket session that survives reconnects.

    ``books`` are followed in ``self.books`` (a ``BookSet``) and their messages are
    yielded after being applied, so ``stream.books[m]`` is current when a
    ``book_delta`` for ``m`` comes out; other ``channels`` (``trades:M``, ``orders``,
    …) are passed through. With credentials the session authenticates first (needed
    for private channels and for order entry through ``stream.ws``).
    """

    def __init__(self, url: str, books: Iterable[str] = (), channels: Iterable[str] = (), *,
                 api_key: str | None = None, api_secret: str | None = None,
                 verify_checksum: bool = True, backoff: Backoff | None = None) -> None:
        super().__init__(url, books, channels, api_key, api_secret, verify_checksum, backoff)
        self.ws: ExchangeWebSocket | None = None

    async def _open(self) -> ExchangeWebSocket:
        ws = await ExchangeWebSocket().connect(self.url)
        try:
            if self.credentials is not None:
                await ws.auth(*self.credentials)
            self.books.reset()
            if self.all_channels():
                await ws.subscribe(self.all_channels())
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _resync(self, ws: ExchangeWebSocket, market: str) -> None:
        await asyncio.sleep(self.books.resync_delay(market))
        await ws.unsubscribe([f"book:{market}"])
        await ws.subscribe([f"book:{market}"])

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                if self.ws is None:
                    self.ws = await self._open()
                    if self.connected:
                        self.reconnects += 1
                    self.connected = True
                    self.backoff.reset()
                message = await self.ws.recv()
            except RETRYABLE:
                await self._drop()
                await asyncio.sleep(self.backoff.next())
                continue
            if message.get("type") in BOOK_TYPES:
                broken = self.books.feed(message)
                if broken is not None:
                    try:
                        await self._resync(self.ws, broken)
                    except RETRYABLE:
                        await self._drop()
                    continue
            yield message

    async def _drop(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            await ws.close()

    async def close(self) -> None:
        await self._drop()
