"""WebSocket fan-out hub: channels -> connections, each with a bounded send buffer.

The rule owned here: NEVER AWAIT THE SLOWEST CLIENT. `publish` and `send_private`
are plain functions that never wait. Two ways to a socket:

* direct (uvicorn, see app/ws/endpoint.py): the frame is encoded ONCE per publish
  (`text_frame`: RFC 6455 framing, unmasked, uncompressed) and the same bytes are
  written to each subscriber's transport, like `websockets.broadcast`. A connection
  that already holds more than `max_buffer` unsent bytes when a frame comes is a slow
  consumer;
* queued (any other server, and the unit tests): the frame object goes on the
  connection's bounded queue with `put_nowait`, drained by the connection's own
  writer task; a full queue makes a slow consumer.

A slow consumer is disconnected with code 4008 ("slow consumer: send queue full")
and removed from every channel; it resyncs from a snapshot when it reconnects. A
connection whose socket is already closing is just forgotten.

Private channels (`orders`, `fills`, `account`, `margin`) are per account: a frame
sent with `send_private(account_id, channel, frame)` reaches only the connections
authenticated as that account (`set_account`) that subscribed to that channel.

The hub is framework-agnostic: a connection is given a `send(frame)` coroutine
function and a `close(code, reason)` coroutine function (e.g. Starlette's
`websocket.send_text` / `websocket.close`), and optionally a `DirectSocket`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

Frame = bytes | str
SendFn = Callable[[Frame], Awaitable[None]]
CloseFn = Callable[[int, str], Awaitable[None]]

PRIVATE_CHANNELS = frozenset({"orders", "fills", "account", "margin"})
SLOW_CONSUMER_CODE = 4008
SLOW_CONSUMER_REASON = "slow consumer: send queue full"
CLOSE_TIMEOUT_S = 5.0  # how long a dropped client gets to take its close frame
ABORT_AFTER_S = 10.0  # then how long before its TCP connection is aborted
# A socket found closing under the hub (the server's keepalive gave up on a client that
# reads nothing, or the client is closing) is aborted after CLOSE_TIMEOUT_S: as long to
# take its close frame as a client the hub drops itself.

_ids = itertools.count(1)


class DirectSocket(Protocol):
    """A socket that takes whole encoded frames synchronously."""

    def write(self, data: bytes) -> bool:
        """Write one whole frame; False (nothing written) once the socket is closing."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""


def text_frame(frame: Frame) -> bytes:
    """`frame` as one final, unmasked, uncompressed WebSocket text frame (RFC 6455 5.2;
    with permessage-deflate, RSV1 clear marks an uncompressed message, RFC 7692)."""
    payload = frame.encode() if isinstance(frame, str) else frame
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


@dataclass(slots=True)
class HubMetrics:
    connections: int = 0  # currently registered
    connections_total: int = 0
    messages_delivered: int = 0  # frames written to sockets
    drops: int = 0  # disconnects for slowness


class Connection:
    """One client socket: written directly, or through a bounded outgoing queue drained
    by its own writer task."""

    def __init__(
        self,
        send: SendFn,
        close: CloseFn,
        queue_size: int = 1000,
        direct: DirectSocket | None = None,
        max_buffer: int = 1 << 20,
    ) -> None:
        self.id = next(_ids)
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self.direct = direct
        self.max_buffer = max_buffer  # unsent bytes a direct socket may hold
        self.channels: set[str] = set()
        self.account_id: int | None = None
        self.closed = False
        self.gone = False  # the socket was closing when a frame came: not a slow consumer
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._send = send
        self._close = close
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._metrics: HubMetrics | None = None
        self._on_dead: Callable[[Connection], None] | None = None
        self.owner: asyncio.Task[Any] | None = None  # the task serving this socket, if any
        # drops the TCP connection at once (e.g. the transport's `abort`), if the server
        # exposes it: a client that reads nothing cannot even take the close frame
        self.kill: Callable[[], None] | None = None
        self.ended_by_hub = False  # the hub cancelled `owner` (not a server shutdown)

    def start(self, metrics: HubMetrics, on_dead: Callable[[Connection], None]) -> None:
        self._metrics, self._on_dead = metrics, on_dead
        if self._writer is None and self.direct is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def offer(self, frame: Frame, data: bytes | None = None) -> bool:
        """Send or queue a frame without waiting (`data`: the frame already encoded by
        `text_frame`, for a direct socket). False when the connection is closed, its
        socket is closing (`gone`), or it is too far behind: the frame did not fit in
        its queue, or a direct socket already holds more than `max_buffer` unsent bytes
        (so one large frame, a deep book snapshot, never counts as lag by itself)."""
        if self.closed:
            return False
        direct = self.direct
        if direct is not None:
            if direct.buffered() > self.max_buffer:  # already that far behind: slow
                return False
            if not direct.write(text_frame(frame) if data is None else data):
                self.gone = True
                return False
            if self._metrics is not None:
                self._metrics.messages_delivered += 1
            return True
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    async def _write(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                await self._send(frame)
                if self._metrics is not None:
                    self._metrics.messages_delivered += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket is gone: stop writing, let the hub forget us
            self.closed = True
            if self._on_dead is not None:
                self._on_dead(self)
            # closed by the server's keepalive, say, while the client read nothing: that
            # close waits for a buffer that never drains, so abort it in a while
            self.abort_later(CLOSE_TIMEOUT_S)

    def abort_later(self, after: float | None = None) -> None:
        """Drop the TCP connection `after` seconds from now (default ABORT_AFTER_S), if
        the server lets us."""
        if self.kill is not None:
            delay = ABORT_AFTER_S if after is None else after
            asyncio.get_running_loop().call_later(delay, self.kill)

    def stop(self) -> None:
        """Stop the writer task (no close frame); idempotent."""
        self.closed = True
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()

    def abort(self, code: int, reason: str) -> None:
        """Close from synchronous code: stop writing and schedule the close frame."""
        if self._closer is not None:
            return
        self.stop()
        self.close_code, self.close_reason = code, reason
        self._closer = asyncio.get_running_loop().create_task(self._do_close(code, reason))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop writing and close the socket (waits at most CLOSE_TIMEOUT_S)."""
        self.abort(code, reason)
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def _do_close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self._close(code, reason), CLOSE_TIMEOUT_S)
        except TimeoutError:
            # The client does not even read the close frame: end its session, so the server
            # closes the socket once the client reads what is buffered (close frame
            # included). A client that never reads would keep that socket and its buffers
            # forever: ABORT_AFTER_S later the connection is dropped outright.
            if self.owner is not None and not self.owner.done():
                self.ended_by_hub = True
                self.owner.cancel()
            self.abort_later()
        except Exception:
            pass  # the client went away meanwhile: its session ends by itself


class Hub:
    """Channel registry and fan-out; see the module docstring for the rule."""

    def __init__(self, queue_size: int = 1000, buffer_bytes: int = 1 << 20) -> None:
        self.queue_size = queue_size
        self.buffer_bytes = buffer_bytes
        self.metrics = HubMetrics()
        self._conns: set[Connection] = set()
        self._channels: dict[str, set[Connection]] = {}
        self._accounts: dict[int, set[Connection]] = {}

    def connect(
        self,
        send: SendFn,
        close: CloseFn,
        queue_size: int | None = None,
        direct: DirectSocket | None = None,
    ) -> Connection:
        """Create a connection with the hub's queue and buffer sizes and register it."""
        conn = Connection(
            send, close, queue_size or self.queue_size, direct, self.buffer_bytes
        )
        self.register(conn)
        return conn

    def register(self, conn: Connection) -> None:
        if conn in self._conns:
            return
        self._conns.add(conn)
        self.metrics.connections = len(self._conns)
        self.metrics.connections_total += 1
        conn.start(self.metrics, self.unregister)

    def unregister(self, conn: Connection) -> None:
        """Forget the connection (socket closed by the client or by us); idempotent."""
        for channel in conn.channels:
            subs = self._channels.get(channel)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self._channels[channel]
        conn.channels.clear()
        if conn.account_id is not None:
            self._discard_account(conn)
        self._conns.discard(conn)
        self.metrics.connections = len(self._conns)
        conn.stop()

    def set_account(self, conn: Connection, account_id: int) -> None:
        if conn not in self._conns:  # already gone (an auth frame handled after the close)
            return
        if conn.account_id is not None:
            self._discard_account(conn)
        conn.account_id = account_id
        self._accounts.setdefault(account_id, set()).add(conn)

    def _discard_account(self, conn: Connection) -> None:
        assert conn.account_id is not None
        conns = self._accounts.get(conn.account_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._accounts[conn.account_id]

    def subscribe(self, conn: Connection, channel: str) -> bool:
        """Add `conn` to `channel`; False (nothing changes) for a private channel on an
        unauthenticated or unregistered connection.

        For a book channel, `send` the snapshot right after this call, with no await in
        between, so that no delta can fall between the snapshot and the subscription.
        """
        if conn not in self._conns or (channel in PRIVATE_CHANNELS and conn.account_id is None):
            return False
        conn.channels.add(channel)
        if channel not in PRIVATE_CHANNELS:
            self._channels.setdefault(channel, set()).add(conn)
        return True

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        conn.channels.discard(channel)
        subs = self._channels.get(channel)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._channels[channel]

    def accounts_on(self, channel: str) -> list[int]:
        """The accounts with a connection subscribed to private `channel`."""
        return sorted(
            a for a, conns in self._accounts.items() if any(channel in c.channels for c in conns)
        )

    def subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def followed(self, channel: str) -> bool:
        """Whether any connection is subscribed to `channel`."""
        return channel in self._channels

    def send(self, conn: Connection, frame: Frame) -> bool:
        """Send a frame to one connection (replies, snapshots); drops it if too slow."""
        if conn.offer(frame):
            return True
        self._failed(conn)
        return False

    def publish(self, channel: str, frame: Frame) -> int:
        """Send `frame` to every subscriber (encoded once); never awaits.

        Returns how many subscribers are keeping up; the others are dropped.
        """
        subs = self._channels.get(channel)
        return self._deliver(subs, frame) if subs else 0

    def has_accounts(self) -> bool:
        """Whether any authenticated connection is registered."""
        return bool(self._accounts)

    def wants(self, account_id: int, channel: str) -> bool:
        """Whether any of the account's connections is subscribed to private `channel`
        (so a frame for it is worth building)."""
        conns = self._accounts.get(account_id)
        return conns is not None and any(channel in c.channels for c in conns)

    def send_private(self, account_id: int, channel: str, frame: Frame) -> int:
        """Queue `frame` for the account's connections subscribed to `channel`."""
        conns = self._accounts.get(account_id)
        if not conns:
            return 0
        return self._deliver([c for c in conns if channel in c.channels], frame)

    def _deliver(self, conns: Collection[Connection], frame: Frame) -> int:
        """`frame` (encoded once) to each of `conns`; how many took it. The others are
        dropped or forgotten after the loop (which must not change `conns` under it)."""
        count, data = len(conns), text_frame(frame)
        failed = [conn for conn in conns if not conn.offer(frame, data)]
        for conn in failed:  # (this shrinks a channel's `conns`: counted before)
            self._failed(conn)
        return count - len(failed)

    def _failed(self, conn: Connection) -> None:
        """A frame did not go through: forget a closing socket, drop a slow one."""
        if conn not in self._conns:
            return
        if conn.gone:  # closed by the server (uvicorn's keepalive, say) or the client:
            self.unregister(conn)
            conn.abort_later(CLOSE_TIMEOUT_S)  # one reading nothing would keep it forever
        else:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self.metrics.drops += 1
        self.unregister(conn)
        conn.abort(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)

    async def close(self, conn: Connection, code: int = 1000, reason: str = "") -> None:
        """Unregister and close one connection (e.g. after an auth failure)."""
        self.unregister(conn)
        await conn.close(code, reason)

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        conns = list(self._conns)
        for conn in conns:
            self.unregister(conn)
        await asyncio.gather(*(conn.close(code, reason) for conn in conns))
