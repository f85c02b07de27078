"""Blocking WebSocket client and reconnecting stream, for scripts, threads and locust.

Same operations and rules as ``exchange_client.ws`` (``WsOps``, ``StreamSpec``,
``BookSet``), on ``websockets.sync``. With one caller per connection there is no
reader task: ``request`` reads until its reply arrives and keeps every other frame,
in order, for ``recv``. Under gevent (locust) the library's threads are greenlets.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

from .book import BOOK_TYPES
from .errors import ApiError
from .ws import (
    FALLBACK_TYPES,
    MAX_FRAME,
    RETRYABLE,
    Backoff,
    StreamSpec,
    WsOps,
    encode,
    reply_or_error,
)


class SyncExchangeWebSocket(WsOps[Any]):
    """Blocking client: ``request`` waits for its reply, ``recv`` returns the rest in order."""

    def __init__(self, request_timeout: float = 10.0) -> None:
        self.request_timeout = request_timeout
        self.conn: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()

    def connect(self, url: str, **kwargs: Any) -> SyncExchangeWebSocket:
        kwargs.setdefault("max_size", MAX_FRAME)
        # entered as a context manager: the form every websockets version supports
        self.conn = connect(url, **kwargs).__enter__()
        return self

    def __enter__(self) -> SyncExchangeWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def close_code(self) -> int | None:
        return None if self.conn is None else self.conn.close_code

    def send(self, frame: Mapping[str, Any]) -> None:
        if self.conn is None:
            raise RuntimeError("not connected")
        self.conn.send(encode(frame))

    def _read(self, timeout: float | None) -> dict[str, Any]:
        assert self.conn is not None
        while True:
            try:
                frame = orjson.loads(self.conn.recv(timeout))
            except orjson.JSONDecodeError:
                continue  # not our protocol
            if isinstance(frame, dict):
                return frame

    def request(self, op: str, body: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        (result,) = self.request_many([(op, body)], timeout)
        if isinstance(result, ApiError):
            raise result
        return result

    def request_many(self, calls: Iterable[tuple[str, Mapping[str, Any] | None]],
                     timeout: float | None = None) -> list[Any]:
        """Send every ``(op, body)`` at once, in order, then read until all are answered:
        each item is that reply's ``result`` or the ``ApiError`` it carried (see
        ``ExchangeWebSocket.request_many``). Other frames are kept for ``recv``."""
        calls_ = list(calls)
        by_id: dict[str, int] = {}
        fallbacks: list[frozenset[str]] = []
        for op, body in calls_:
            req_id = str(next(self._ids))
            by_id[req_id] = len(fallbacks)
            fallbacks.append(FALLBACK_TYPES.get(op, frozenset()))
            self.send({**(body or {}), "op": op, "id": req_id})
        out: list[Any] = [None] * len(fallbacks)
        left = set(range(len(fallbacks)))
        deadline = time.monotonic() + (timeout or self.request_timeout)
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                ops = ", ".join(sorted({op for op, _ in calls_}))
                raise TimeoutError(f"no reply to {ops} within the timeout")
            frame = self._read(remaining)
            fid = frame.get("id")
            if fid is not None:
                i = by_id.get(str(fid))
            else:  # an id-less reply answers the oldest request waiting for its type
                i = min((j for j in left if frame.get("type") in fallbacks[j]), default=None)
            if i is None or i not in left:
                self._backlog.append(frame)
                continue
            left.discard(i)
            out[i] = reply_or_error(frame)
        return out

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Next message that was not a reply (``TimeoutError`` when none comes in time)."""
        if self._backlog:
            return self._backlog.popleft()
        return self._read(timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class SyncMarketStream(StreamSpec):
    """Blocking twin of ``exchange_client.ws.MarketStream``: iterate for messages forever."""

    def __init__(self, url: str, books: Iterable[str] = (), channels: Iterable[str] = (), *,
                 api_key: str | None = None, api_secret: str | None = None,
                 verify_checksum: bool = True, backoff: Backoff | None = None) -> None:
        super().__init__(url, books, channels, api_key, api_secret, verify_checksum, backoff)
        self.ws: SyncExchangeWebSocket | None = None

    def _open(self) -> SyncExchangeWebSocket:
        ws = SyncExchangeWebSocket().connect(self.url)
        try:
            if self.credentials is not None:
                ws.auth(*self.credentials)
            self.books.reset()
            if self.all_channels():
                ws.subscribe(self.all_channels())
        except BaseException:
            ws.close()
            raise
        return ws

    def poll(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message passed through, or None after ``timeout`` with none (or after a
        resync or reconnect, which are done here)."""
        try:
            if self.ws is None:
                self.ws = self._open()
                if self.connected:
                    self.reconnects += 1
                self.connected = True
                self.backoff.reset()
            message = self.ws.recv(timeout)
        except TimeoutError:
            return None
        except RETRYABLE:
            self.close()
            time.sleep(self.backoff.next())
            return None
        if message.get("type") in BOOK_TYPES:
            broken = self.books.feed(message)
            if broken is not None:
                try:
                    time.sleep(self.books.resync_delay(broken))
                    self.ws.unsubscribe([f"book:{broken}"])
                    self.ws.subscribe([f"book:{broken}"])
                except RETRYABLE:
                    self.close()
                return None
        return message

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            message = self.poll()
            if message is not None:
                yield message

    def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            ws.close()
