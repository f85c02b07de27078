"""WebSocket benchmark: order entry and market-data fan-out, ours against bare `websockets`.

    python loadtests/bench_ws.py [--only entry|fanout] [--seconds 10] [--runs 3]
        [--connections 16] [--window 1,8] [--subscribers 1000] [--slow 10] [--traders 4]
        [--backend sqlite|postgres] [--postgres-url URL] [--server-buffer BYTES]

The default run takes about 4 minutes on a 2-core box; the smoke run
`python loadtests/bench_ws.py --seconds 1 --runs 1 --subscribers 50` about 30 s. Prints
Markdown tables. Exits non-zero on any error ack, a lost or out-of-order frame, a healthy
subscriber disconnected, or a slow consumer still served after `--drop-timeout`; a
missed performance target is reported, not fatal.

Both servers are measured in the same invocation, interleaved (ours, peer, ours, peer,
...; per run a warm-up, then `--seconds` measured; median, min and max of `--runs`), the
server under test on core 0 (`taskset -c 0`), this process (the load) on core 1. The CPU
% of the server process (all threads) and of the load over each window are reported, to
show which side was the limit.

* **ours**: the real server, `python -m app.cli serve` (uvicorn on uvloop, the compiled
  engine if built), rate limits off, SQLite in a temporary directory or, with
  `--backend postgres`, a throwaway database `exch_bench_<hex>` on `--postgres-url` /
  EXCHANGE_TEST_POSTGRES_URL, dropped at the end (PostgreSQL itself is not pinned).
* **peer**: a bare `websockets` asyncio server defined here (run as `--serve-peer`, on
  uvloop, pinned like ours, keepalive 20 s + 20 s like uvicorn's): it parses every
  frame with orjson, answers `order.place` with a `{"type":"response","id","result":
  {"order","fills"}}` frame with the same keys and about the size of ours (no validation,
  matching or storage: it acknowledges at once, where ours acknowledges after the
  journal commit), and fans market data out with `websockets.broadcast`.

The load is a minimal RFC 6455 client (asyncio Protocol: masked frames out, frame headers
parsed in place, pings answered) instead of the `websockets` client, so that one core of
load outruns either server. No client offers permessage-deflate, so nothing is compressed.

(a) Order entry. `--connections` sockets, each authenticated with an `auth` frame signed
by `exchange_client.signing.ws_auth_frame` for its own account (created and funded
through the admin REST API; the peer accepts any), each keeping `--window` `order.place`
frames in flight: 1 = closed loop, 8 = pipelined; the next order leaves when an ack
arrives. Orders are GTC limits on BTC-USDC (tick, lot and minimum size from
`GET /v1/markets`), alternating sides around 65,000: 90% rest 1-20 ticks from the mid,
10% go 1-3 ticks through it and trade with other accounts' orders (or are cancelled by
self-trade prevention). Both servers get the same seeded frames. Every ack is checked: a
`response` echoing our id, a `result` with an `order`, no `error`. msgs/s = acks in the
window / seconds; latency = send to ack. After each run every socket sends
`order.cancel_all`, so the book does not grow from run to run.

(b) Fan-out. `--subscribers` sockets subscribe to `book:BTC-USDC` and `trades:BTC-USDC`;
`--slow` of them stop reading after the `subscribed` reply. deliveries/s = frames
received per second by the healthy subscribers together.
* ours: `--traders` authenticated sockets place orders closed loop as in (a); each
  committed order publishes a `book_delta` (plus a `trade` per fill) to every
  subscriber. The traders go as fast as the server takes orders while it fans out, so
  the server core is saturated; the order path (about 50 orders/s at 1,000 subscribers,
  a few % of the core) is in our figure and not in the peer's.
* peer: one healthy subscriber of ours records the frames it receives during a first
  warm-up (up to 1,000 frames or 5 s); the peer broadcasts exactly those frames, cycled,
  with `websockets.broadcast(subscribers, frame, text=True)`, one frame per event-loop
  turn (its sockets get written between frames), as fast as it can. Same subscribers,
  same frames, both servers saturated. The peer drops a subscriber whose write buffer
  holds more than our hub lets a client lag by (`--server-buffer`, the server's
  EXCHANGE_WS_BUFFER_BYTES, 1 MiB by default): closed with 4008 and aborted 5 s later, as
  our hub means to (`websockets`' own `close()` would wait forever for the buffer to
  drain).
* slow consumers set a 4 KiB receive buffer and announce a 1,460-byte MSS before
  connecting, like a client across a network: over loopback (64 KiB segments) Linux
  would let the server's socket buffer ~2.8 MB for them, minutes of data. After the runs
  both servers keep producing until neither writes to any slow consumer (ours:
  `exchange_ws_clients` from `/metrics` down to traders + healthy ones, split by
  `exchange_ws_slow_disconnects_total`; the peer counts its own). Checked and reported:
  no healthy subscriber was closed; all healthy subscribers received exactly the same
  number of frames; `--verify` of ours parse every frame and follow the `book_delta`
  `prev_seq` chain (a gap fails the run); how many slow sockets the server process
  still holds 6 s after dropping them (from /proc); the close code each slow consumer
  finds when it finally reads what was left for it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime
import hashlib
import itertools
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask
from websockets.protocol import State

try:
    from loadtests.bench_engine import dist_versions, engine_revision, machine
except ModuleNotFoundError:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadtests.bench_engine import dist_versions, engine_revision, machine

from exchange_client.rest import ExchangeClient
from exchange_client.signing import ws_auth_frame
from tests.dbutil import create_database, drop_database
from tests.server import ADMIN_KEY, ADMIN_SECRET, ROOT, ServerProcess, free_port

MARKET = "BTC-USDC"
CHANNELS = [f"book:{MARKET}", f"trades:{MARKET}"]
MID = Decimal("65000")
CROSS_SHARE = 0.10  # orders that go through the mid and may trade
ORDERS_PER_FEED = 4000  # distinct order frames per connection, cycled
ENTRY_TARGET = 0.8  # issue: >= 0.8x the bare server's messages/s
FANOUT_TARGET = 0.75  # issue: >= 0.75x websockets.broadcast deliveries/s
SERVER_CPU, LOAD_CPU = 0, 1
DEFAULT_BUFFER = 1 << 20  # app/config.py ws_buffer_bytes
SLOW_RCVBUF = 4096
SLOW_MSS = 1460  # an Ethernet-sized segment, as a client across a network would announce
CLOSE_WAIT_S = 5.0  # app/ws/hub.py CLOSE_TIMEOUT_S; the peer uses the same close timeout
CAPTURE_MAX = 20_000
CAPTURE_ENOUGH, CAPTURE_S = 1000, (1.0, 5.0)  # record 1,000 frames, in 1 to 5 s
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ raw client
class RawWebSocket(asyncio.Protocol):
    """A minimal RFC 6455 client: HTTP upgrade with no extensions, masked frames out,
    unmasked frames in, parsed in place. Counts data frames; `on_message` gets the
    payload while `want_payload` is true. Pings are answered, close frames recorded."""

    def __init__(self, host: str, port: int, path: str = "/v1/ws") -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.lost_by = ""  # how the connection ended: EOF or the exception's name
        self.messages = 0  # data frames received
        self.want_payload = True
        self.answer_pings = True
        self._request_head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )
        self._key = base64.b64encode(os.urandom(16))
        self._buf = bytearray()
        self._handshaking = True
        self._close_sent = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        self.local_port: int = transport.get_extra_info("sockname")[1]
        head = self._request_head + f"Sec-WebSocket-Key: {self._key.decode()}\r\n\r\n"
        transport.write(head.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_by = type(exc).__name__ if exc is not None else "EOF"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._handshaking and not self._handshake(buf):
            return
        n, pos = len(buf), 0
        messages = 0  # counted locally, added to self.messages when the payload is wanted
        while n - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            start = pos + head
            end = start + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode < 3:  # continuation, text, binary (servers here never fragment)
                messages += 1
                if self.want_payload:
                    self.messages += messages
                    messages = 0
                    self.on_message(bytes(buf[start:end]))
            else:
                self._control(opcode, bytes(buf[start:end]))
            pos = end
        self.messages += messages
        if pos:
            del buf[:pos]

    # -- frames
    def _handshake(self, buf: bytearray) -> bool:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest()).decode()
        if " 101 " not in head[0] + " " or headers.get("sec-websocket-accept") != accept:
            self.opened.set_exception(ConnectionError(f"upgrade refused: {head[0]}"))
            assert self.transport is not None
            self.transport.close()
            return False
        self._handshaking = False
        self.opened.set_result(None)
        return True

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 9:  # ping -> pong
            if self.answer_pings:
                self._send_frame(0xA, payload)
        elif opcode == 8:  # close: remember the code, echo it
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self._close_sent:
                self._close_sent = True
                self._send_frame(0x8, payload[:2])

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = random.randbytes(4)
        transport.write(head + mask + apply_mask(payload, mask))

    def send_text(self, payload: bytes) -> None:
        self._send_frame(0x1, payload)

    def on_message(self, payload: bytes) -> None:  # overridden
        pass

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if not self._close_sent:
                self._close_sent = True
                self._send_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


P = TypeVar("P", bound=RawWebSocket)


async def open_raw(factory: Callable[[], P], port: int, rcvbuf: int | None = None) -> P:
    """Connect `factory()` to 127.0.0.1:`port` and finish the upgrade."""
    loop = asyncio.get_running_loop()
    if rcvbuf is None:
        _, proto = await loop.create_connection(factory, "127.0.0.1", port)
    else:  # set before connect: they bound the window and the MSS we announce
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, proto = await loop.create_connection(factory, sock=sock)
    await asyncio.wait_for(proto.opened, 15)
    return proto


async def gather_chunked(coros: Sequence[Callable[[], Awaitable[T]]], chunk: int = 100) -> list[T]:
    out: list[T] = []
    for i in range(0, len(coros), chunk):
        out.extend(await asyncio.gather(*(c() for c in coros[i : i + chunk])))
    return out


# ------------------------------------------------------------------------------ order entry
@dataclass(frozen=True)
class Instrument:
    tick: Decimal
    lot: Decimal
    min_size: Decimal


def _plain(x: Decimal) -> str:
    return format(x.normalize(), "f")


def order_bodies(inst: Instrument, seed: int, index: int, n: int = ORDERS_PER_FEED) -> list[bytes]:
    """Connection `index`'s order frames after `"id":"..",` (seeded, identical for both
    servers): alternating sides, 90% resting 1-20 ticks from the mid, 10% through it."""
    rng = random.Random(seed * 1_000_003 + index)
    out = []
    for i in range(n):
        buy = (i + index) % 2 == 0
        ticks = -rng.randint(1, 3) if rng.random() < CROSS_SHARE else rng.randint(1, 20)
        price = MID - ticks * inst.tick if buy else MID + ticks * inst.tick
        size = max(rng.randint(1, 10) * inst.lot, inst.min_size)
        body = {
            "market": MARKET,
            "side": "buy" if buy else "sell",
            "type": "limit",
            "price": _plain(price),
            "size": _plain(size),
        }
        out.append(orjson.dumps(body)[1:])
    return out


@dataclass
class EntryStats:
    acks: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    measuring: bool = False
    latencies_ns: list[int] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


class EntryClient(RawWebSocket):
    """Keeps `window` order.place frames in flight; checks every ack."""

    def __init__(self, port: int, bodies: list[bytes], stats: EntryStats) -> None:
        super().__init__("127.0.0.1", port)
        self.bodies = bodies
        self.stats = stats
        self.inflight: dict[str, int] = {}
        self.waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.next_body = 0
        self.stopping = True
        self.finishing = False
        self.drained: asyncio.Future[None] | None = None

    def send_order(self) -> None:
        rid = str(next(self.ids))
        bodies = self.bodies
        body = bodies[self.next_body % len(bodies)]
        self.next_body += 1
        self.inflight[rid] = time.perf_counter_ns()
        self.send_text(b'{"op":"order.place","id":"' + rid.encode() + b'",' + body)

    def start(self, window: int) -> None:
        self.stopping = False
        self.drained = None
        for _ in range(window):
            self.send_order()

    async def stop(self) -> None:
        self.stopping = True
        if self.inflight:
            self.drained = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.drained, 60)

    async def request(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        rid = f"r{next(self.ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[rid] = fut
        self.send_text(orjson.dumps({**body, "op": op, "id": rid}))
        try:
            return await asyncio.wait_for(fut, 60)
        finally:
            self.waiters.pop(rid, None)

    async def authenticate(self, api_key: str, secret: str) -> None:
        frame = ws_auth_frame(api_key, secret)
        frame.pop("op")
        reply = await self.request("auth", frame)
        if not (reply.get("result") or {}).get("authenticated"):
            raise RuntimeError(f"auth refused: {reply}")

    async def cancel_all(self) -> None:
        reply = await self.request("order.cancel_all", {"market": MARKET})
        if "error" in reply or not isinstance((reply.get("result") or {}).get("cancelled"), list):
            self.stats.error(f"cancel_all: {reply}")

    def on_message(self, payload: bytes) -> None:
        now = time.perf_counter_ns()
        stats = self.stats
        try:
            msg = orjson.loads(payload)
            rid = msg.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            stats.error(f"not a JSON object: {payload[:200]!r}")
            return
        sent = self.inflight.pop(rid, None)
        if sent is None:
            waiter = self.waiters.get(rid)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
            else:
                stats.error(f"unexpected frame: {payload[:200]!r}")
            return
        result = msg.get("result")
        if (
            msg.get("type") != "response"
            or "error" in msg
            or not isinstance(result, dict)
            or not isinstance(result.get("order"), dict)
        ):
            stats.error(f"bad ack: {payload[:300]!r}")
        else:
            stats.acks += 1
            if stats.measuring:
                stats.latencies_ns.append(now - sent)
        if not self.stopping:
            self.send_order()
        elif not self.inflight and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finishing:
            self.stats.error(f"connection closed by the server (code {self.close_code}): {exc}")
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        super().connection_lost(exc)


async def open_entry_clients(
    port: int, feeds: list[list[bytes]], creds: list[tuple[str, str]], stats: EntryStats
) -> list[EntryClient]:
    def factory(bodies: list[bytes]) -> Callable[[], EntryClient]:
        return lambda: EntryClient(port, bodies, stats)

    clients = await asyncio.gather(*(open_raw(factory(bodies), port) for bodies in feeds))
    await asyncio.gather(*(c.authenticate(*creds[i]) for i, c in enumerate(clients)))
    return list(clients)


async def close_clients(clients: Sequence[RawWebSocket]) -> None:
    for c in clients:
        if isinstance(c, EntryClient):
            c.finishing = True
        c.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 10)


# ------------------------------------------------------------------------------ measures
def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of `pid`, or of this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Window:
    """One measured window: counter deltas and the CPU both processes used."""

    count: int
    seconds: float
    server_cpu: float
    load_cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.seconds

    @property
    def load_pct(self) -> float:
        return 100 * self.load_cpu / self.seconds


async def measure(
    seconds: float, pid: int, counter: Callable[[], int], around: Callable[[bool], None]
) -> Window:
    around(True)
    c0, t0, s0, l0 = counter(), time.perf_counter(), cpu_seconds(pid), cpu_seconds()
    await asyncio.sleep(seconds)
    c1, t1, s1, l1 = counter(), time.perf_counter(), cpu_seconds(pid), cpu_seconds()
    around(False)
    return Window(c1 - c0, t1 - t0, s1 - s0, l1 - l0)


@dataclass
class Target:
    name: str
    port: int
    pid: int


@dataclass
class EntryRun:
    window: Window
    p50_ms: float
    p99_ms: float


def percentile(sorted_xs: Sequence[int], q: float) -> float:
    if not sorted_xs:
        return float("nan")
    return float(sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))])


async def entry_run(
    target: Target,
    feeds: list[list[bytes]],
    creds: list[tuple[str, str]],
    window: int,
    seconds: float,
    warmup: float,
    stats: EntryStats,
) -> EntryRun:
    acks = EntryStats()  # this run's counters; errors also go to `stats`
    clients = await open_entry_clients(target.port, feeds, creds, acks)
    try:
        for c in clients:
            c.start(window)
        await asyncio.sleep(warmup)

        def around(on: bool) -> None:
            acks.measuring = on

        w = await measure(seconds, target.pid, lambda: acks.acks, around)
        await asyncio.gather(*(c.stop() for c in clients))
        await asyncio.gather(*(c.cancel_all() for c in clients))
    finally:
        await close_clients(clients)
    stats.acks += acks.acks
    stats.errors += acks.errors
    stats.samples.extend(acks.samples[: max(0, 5 - len(stats.samples))])
    lat = sorted(acks.latencies_ns)
    return EntryRun(w, percentile(lat, 0.50) / 1e6, percentile(lat, 0.99) / 1e6)


# ------------------------------------------------------------------------------ fan-out
class Receiver(RawWebSocket):
    """A subscriber to CHANNELS. `mode`: count (frames only), verify (parse every frame,
    follow the book_delta chain when `chain`), capture (verify + keep the frames) or slow
    (stops reading after the `subscribed` reply)."""

    def __init__(self, port: int, mode: str, chain: bool) -> None:
        super().__init__("127.0.0.1", port)
        self.mode = mode
        self.chain = chain
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_seq: int | None = None
        self.gaps = 0
        self.bad = 0
        self.captured: list[bytes] = []

    def on_message(self, payload: bytes) -> None:
        if not self.subscribed.done():
            if payload.startswith(b'{"type":"subscribed"'):
                self.subscribed.set_result(None)
                if self.mode == "count":
                    self.want_payload = False
                elif self.mode == "slow":
                    self.want_payload = False
                    assert self.transport is not None
                    self.transport.pause_reading()
            else:
                self.subscribed.set_exception(RuntimeError(f"not subscribed: {payload[:200]!r}"))
            return
        try:
            msg = orjson.loads(payload)
            kind = msg["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.bad += 1
            return
        if kind == "book_delta":
            if self.chain and msg.get("prev_seq") != self.last_seq:
                self.gaps += 1
            self.last_seq = msg.get("seq")
        elif kind == "book_snapshot":
            self.last_seq = msg.get("seq")
            return
        elif kind != "trade":
            self.bad += 1
            return
        if self.mode == "capture" and len(self.captured) < CAPTURE_MAX:
            self.captured.append(payload)

    async def subscribe(self) -> None:
        self.send_text(orjson.dumps({"op": "subscribe", "id": "sub", "channels": CHANNELS}))
        await asyncio.wait_for(self.subscribed, 30)


@dataclass
class Subscribers:
    healthy: list[Receiver]
    slow: list[Receiver]
    connected_at: float

    def delivered(self) -> int:
        return sum(r.messages for r in self.healthy)

    @property
    def verified(self) -> list[Receiver]:
        return [r for r in self.healthy if r.mode != "count"]

    async def quiesce(self, timeout: float = 20.0) -> None:
        """Wait until the healthy subscribers stop receiving (backlog drained)."""
        deadline = time.perf_counter() + timeout
        last = -1
        while time.perf_counter() < deadline:
            now = self.delivered()
            if now == last:
                return
            last = now
            await asyncio.sleep(0.3)


async def open_subscribers(
    port: int, n: int, slow: int, verify: int, chain: bool, capture: bool
) -> Subscribers:
    modes = ["slow"] * slow + ["capture"] * capture + ["verify"] * verify
    modes += ["count"] * (n - len(modes))

    def one(mode: str) -> Callable[[], Awaitable[Receiver]]:
        async def go() -> Receiver:
            r = await open_raw(
                lambda: Receiver(port, mode, chain), port, SLOW_RCVBUF if mode == "slow" else None
            )
            await r.subscribe()
            return r

        return go

    receivers = await gather_chunked([one(m) for m in modes])
    return Subscribers(
        [r for r in receivers if r.mode != "slow"],
        [r for r in receivers if r.mode == "slow"],
        time.perf_counter(),
    )


class PeerControl:
    """Request/response over one `websockets` client connection to the peer."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ids = itertools.count(1)
        self.lock = asyncio.Lock()

    async def request(self, op: str, **body: Any) -> dict[str, Any]:
        async with self.lock:
            rid = f"c{next(self.ids)}"
            await self.conn.send(orjson.dumps({"op": op, "id": rid, **body}).decode())
            while True:
                reply = orjson.loads(await asyncio.wait_for(self.conn.recv(), 60))
                if reply.get("id") == rid:
                    result: dict[str, Any] = reply["result"]
                    return result


class Source:
    """What makes market data (ours: traders placing orders; the peer: its broadcast loop),
    and what the server says about the slow consumers."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def count(self) -> int:
        """Events produced so far (orders acked, or frames broadcast)."""
        raise NotImplementedError

    async def slow_state(self, subs: Subscribers) -> tuple[int, dict[str, int]]:
        """How many slow consumers the server still writes to, and how the others went."""
        raise NotImplementedError


class OurSource(Source):
    def __init__(self, traders: list[EntryClient], stats: EntryStats, base_url: str) -> None:
        self.traders, self.stats = traders, stats
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10)

    async def start(self) -> None:
        for t in self.traders:
            t.start(1)

    async def stop(self) -> None:
        await asyncio.gather(*(t.stop() for t in self.traders))
        await asyncio.gather(*(t.cancel_all() for t in self.traders))

    async def count(self) -> int:
        return self.stats.acks

    async def metrics(self) -> dict[str, int]:
        """The unlabelled series of `/metrics`."""
        text = (await self.http.get("/metrics")).text
        return {
            parts[0]: int(float(parts[1]))
            for parts in (line.split() for line in text.splitlines() if line[:1].isalpha())
            if len(parts) == 2
        }

    async def slow_state(self, subs: Subscribers) -> tuple[int, dict[str, int]]:
        m = await self.metrics()
        hub_drops = m["exchange_ws_slow_disconnects_total"]
        left = m["exchange_ws_clients"] - len(self.traders) - len(subs.healthy)
        other = len(subs.slow) - left - hub_drops
        return left, {"hub: queue full (4008)": hub_drops, "uvicorn closed it (send raised)": other}


class PeerSource(Source):
    def __init__(self, control: PeerControl) -> None:
        self.control = control

    async def start(self) -> None:
        await self.control.request("bench.start")

    async def stop(self) -> None:
        await self.control.request("bench.stop")

    async def count(self) -> int:
        return int((await self.control.request("bench.stats"))["broadcasts"])

    async def slow_state(self, subs: Subscribers) -> tuple[int, dict[str, int]]:
        drops: dict[str, int] = (await self.control.request("bench.stats"))["drops"]
        return len(subs.slow) - sum(drops.values()), drops


class SlowWatch:
    """Polls the server once a second until it no longer writes to any slow consumer."""

    def __init__(self, source: Source, subs: Subscribers) -> None:
        self.source, self.subs = source, subs
        self.left = len(subs.slow)
        self.reasons: dict[str, int] = {}
        self.gone_after: float | None = None  # seconds after the subscribers connected
        self.task = asyncio.get_running_loop().create_task(self.watch())

    async def watch(self) -> None:
        while True:
            self.left, self.reasons = await self.source.slow_state(self.subs)
            if self.left <= 0:
                self.gone_after = time.perf_counter() - self.subs.connected_at
                return
            await asyncio.sleep(1.0)


@dataclass
class FanoutRun:
    window: Window
    source_rate: float  # orders acked/s (ours) or frames broadcast/s (peer)
    slow_connected: tuple[int, int]  # slow consumers still written to at start, end


async def fanout_run(
    target: Target,
    subs: Subscribers,
    source: Source,
    watch: SlowWatch,
    seconds: float,
    warmup: float,
) -> FanoutRun:
    await source.start()
    await asyncio.sleep(warmup)
    s0, slow0 = await source.count(), watch.left
    w = await measure(seconds, target.pid, subs.delivered, lambda on: None)
    s1, slow1 = await source.count(), watch.left
    await source.stop()
    await subs.quiesce()
    return FanoutRun(w, (s1 - s0) / w.seconds, (slow0, slow1))


def held_by(pid: int, receivers: Sequence[RawWebSocket]) -> int:
    """How many of `receivers`' connections process `pid` still has a socket open for
    (from /proc: its socket fds, and /proc/net/tcp rows whose remote port is ours)."""
    ports = {r.local_port for r in receivers}
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if int(cols[2].rsplit(":", 1)[1], 16) in ports and cols[9] in inodes:
                    held += 1
    return held


@dataclass
class DropCheck:
    left: int
    reasons: dict[str, int]
    gone_after: float | None
    healthy_closed: int
    frames_each: tuple[int, int]
    held: int  # slow sockets the server process still had open a while after dropping them
    close_codes: dict[str, int]
    still_open: int  # after reading everything the server had buffered for them
    gaps: int
    bad: int


async def drop_check(
    pid: int,
    subs: Subscribers,
    source: Source,
    watch: SlowWatch,
    timeout: float,
    problems: list[str],
    name: str,
) -> DropCheck:
    """Keep producing until the server no longer writes to any slow consumer (or
    `timeout`), check the healthy subscribers, then look at the slow sockets: still open at
    the server well after the drop? which close code do they read once they read?"""
    if not watch.task.done():
        await source.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(watch.task), timeout)
        await source.stop()
    watch.task.cancel()
    await subs.quiesce()
    counts = [r.messages for r in subs.healthy]
    healthy_closed = sum(r.closed.done() for r in subs.healthy)
    if watch.gone_after is not None:  # give the server time to close them (our hub and the
        # peer: 5 s close timeout), counted from when the last one was dropped
        since = time.perf_counter() - subs.connected_at - watch.gone_after
        await asyncio.sleep(max(0.0, CLOSE_WAIT_S + 1.0 - since))
    held = held_by(pid, subs.slow)
    if held_by(pid, subs.healthy) != len(subs.healthy):  # the /proc reading must see these
        problems.append(f"{name}: /proc does not show the healthy subscribers' sockets")
    for r in subs.slow:  # read what is left (without answering the stale pings in it)
        r.answer_pings = False
        if r.transport is not None and not r.closed.done():
            r.transport.resume_reading()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(r.closed for r in subs.slow)), 15)
    codes = collections.Counter(
        str(r.close_code) if r.close_code is not None else f"none ({r.lost_by or 'open'})"
        for r in subs.slow
    )
    check = DropCheck(
        left=watch.left,
        reasons={k: v for k, v in watch.reasons.items() if v},
        gone_after=watch.gone_after,
        healthy_closed=healthy_closed,
        frames_each=(min(counts), max(counts)),
        held=held,
        close_codes=dict(codes),
        still_open=sum(not r.closed.done() for r in subs.slow),
        gaps=sum(r.gaps for r in subs.verified),
        bad=sum(r.bad for r in subs.verified),
    )
    if watch.left > 0:
        problems.append(f"{name}: {watch.left} slow consumers still served after the timeout")
    if healthy_closed:
        problems.append(f"{name}: {healthy_closed} healthy subscribers were disconnected")
    if check.frames_each[0] != check.frames_each[1]:
        problems.append(f"{name}: healthy subscribers received {check.frames_each} frames")
    if check.gaps or check.bad:
        problems.append(f"{name}: {check.gaps} book_delta gaps, {check.bad} bad frames")
    return check


# ------------------------------------------------------------------------------ the peer
class Peer:
    """The bare `websockets` server: acks order frames with a same-shaped response and
    broadcasts recorded frames to its subscribers (control ops `bench.*`)."""

    def __init__(self) -> None:
        self.subs: set[ServerConnection] = set()
        self.order_ids = itertools.count(1)
        self.frames: list[bytes] = []
        self.drop_bytes = 1 << 20
        self.broadcasts = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.producer: asyncio.Task[None] | None = None

    def order(self, req: dict[str, Any]) -> dict[str, Any]:
        now = time.time_ns() // 1_000_000
        size = req.get("size")
        return {
            "order": {
                "order_id": str(next(self.order_ids)),
                "client_order_id": req.get("client_order_id"),
                "market": req.get("market"),
                "side": req.get("side"),
                "type": req.get("type"),
                "price": req.get("price"),
                "trigger_price": None,
                "size": size,
                "filled": "0",
                "remaining": size,
                "avg_fill_price": None,
                "status": "open",
                "time_in_force": req.get("time_in_force", "gtc"),
                "reduce_only": False,
                "stp": "cancel_taker",
                "expire_ts": None,
                "cancel_reason": None,
                "created_ts": now,
                "updated_ts": now,
            },
            "fills": [],
        }

    async def handler(self, ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                req = orjson.loads(raw)
                op = req.get("op")
                rid = req.get("id")
                if op == "order.place":
                    reply: dict[str, Any] = {
                        "type": "response",
                        "id": rid,
                        "result": self.order(req),
                    }
                elif op == "subscribe":
                    self.subs.add(ws)
                    reply = {"type": "subscribed", "id": rid, "channels": req.get("channels")}
                elif op == "auth":
                    result = {"authenticated": True, "account_id": "1", "permissions": ["trade"]}
                    reply = {"type": "response", "id": rid, "result": result}
                elif op == "order.cancel_all":
                    reply = {"type": "response", "id": rid, "result": {"cancelled": []}}
                elif isinstance(op, str) and op.startswith("bench."):
                    reply = {"type": "response", "id": rid, "result": self.control(op, req)}
                else:
                    reply = {"type": "error", "id": rid, "error": {"code": "UNKNOWN_OP"}}
                await ws.send(orjson.dumps(reply), text=True)
        except ConnectionClosed:
            pass
        finally:
            if ws in self.subs:  # closed before the producer noticed (e.g. keepalive timeout)
                self.subs.discard(ws)
                self.drops["closed (keepalive timeout)"] += 1

    def control(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        if op == "bench.load":
            self.frames = Path(req["path"]).read_bytes().splitlines()
            self.drop_bytes = int(req["drop_bytes"])
        elif op == "bench.start" and self.producer is None:
            self.producer = asyncio.get_running_loop().create_task(self.produce())
        elif op == "bench.stop" and self.producer is not None:
            self.producer.cancel()
            self.producer = None
        return {"broadcasts": self.broadcasts, "drops": dict(self.drops), "subs": len(self.subs)}

    async def produce(self) -> None:
        frames, subs, limit = self.frames, self.subs, self.drop_bytes
        i = 0
        while True:
            broadcast(subs, frames[i], text=True)
            i = i + 1 if i + 1 < len(frames) else 0
            self.broadcasts += 1
            gone = [
                c
                for c in subs
                if c.protocol.state is not State.OPEN or c.transport.get_write_buffer_size() > limit
            ]
            for c in gone:
                subs.discard(c)
                if c.protocol.state is State.OPEN:  # too slow: disconnect it, as our hub does
                    self.drops["send buffer full (4008)"] += 1
                    loop = asyncio.get_running_loop()
                    loop.create_task(c.close(4008, "slow consumer"))
                    # close() waits for the buffer to drain, which never happens: abort
                    loop.call_later(CLOSE_WAIT_S, c.transport.abort)
                else:
                    self.drops["closed (keepalive timeout)"] += 1
            await asyncio.sleep(0)


async def serve_peer(port: int) -> None:
    peer = Peer()
    async with serve(
        peer.handler,
        "127.0.0.1",
        port,
        max_size=2**24,
        ping_interval=20,  # uvicorn's keepalive: ping every 20 s, close after 20 s more
        ping_timeout=20,
        close_timeout=CLOSE_WAIT_S,
    ):
        await asyncio.get_running_loop().create_future()


# ------------------------------------------------------------------------------ processes
def pin_prefix(cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset and (os.cpu_count() or 1) > 1 else []


def start_peer(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*pin_prefix(SERVER_CPU), sys.executable, __file__, "--serve-peer", "--port", str(port)],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc
        time.sleep(0.1)
    raise RuntimeError("peer did not start")


def raise_nofile(needed: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return f"open files soft limit {soft} (need about {needed})"


def setup_accounts(base_url: str, n: int) -> list[tuple[str, str]]:
    admin = ExchangeClient(base_url, ADMIN_KEY, ADMIN_SECRET)
    creds = []
    try:
        for i in range(n):
            acc = admin.create_account(f"bench-ws-{i}")
            for asset, amount in (("USDC", "1000000000"), ("BTC", "100000")):
                admin.deposit(acc["account_id"], asset, amount, f"bench-ws-{i}-{asset}")
            creds.append((acc["api_key"], acc["api_secret"]))
    finally:
        admin.close()
    return creds


def instrument(base_url: str) -> Instrument:
    markets = httpx.get(base_url + "/v1/markets", timeout=10).json()["markets"]
    m = next(m for m in markets if m["symbol"] == MARKET)
    if m["state"] != "open":
        raise RuntimeError(f"{MARKET} is {m['state']}")
    return Instrument(Decimal(m["tick_size"]), Decimal(m["lot_size"]), Decimal(m["min_size"]))


# ------------------------------------------------------------------------------ sections
def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio_cell(x: float) -> str:
    return f"{x:.3f}" if x < 0.1 else f"{x:.2f}"


def stat_cells(xs: Sequence[float]) -> str:
    return f"{med(xs):,.0f} | {min(xs):,.0f} | {max(xs):,.0f}"


async def entry_section(
    args: argparse.Namespace,
    ours: Target,
    peer: Target,
    creds: list[tuple[str, str]],
    inst: Instrument,
    problems: list[str],
) -> list[str]:
    windows = [int(w) for w in args.window.split(",")]
    feeds = [order_bodies(inst, args.seed, i) for i in range(args.connections)]
    stats = EntryStats()
    runs: dict[tuple[str, int], list[EntryRun]] = collections.defaultdict(list)
    for run in range(args.runs):
        for window in windows:
            for target in (ours, peer):
                r = await entry_run(target, feeds, creds, window, args.seconds, args.warmup, stats)
                runs[target.name, window].append(r)
                log(
                    f"entry run {run + 1} window {window} {target.name}: {r.window.rate:,.0f} "
                    f"msgs/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, server CPU "
                    f"{r.window.server_pct:.0f}%, load CPU {r.window.load_pct:.0f}%"
                )
    if stats.errors:
        problems.append(f"order entry: {stats.errors} bad acks, e.g. {stats.samples[:3]}")
    lines = [
        f"(a) Order entry: {args.connections} connections x window W `order.place` in flight, "
        f"{args.runs} runs of {args.seconds:g} s after {args.warmup:g} s warm-up, "
        f"{stats.acks:,} acks checked, {stats.errors} errors.",
        "",
        "| server | window | msgs/s median | min | max | ack p50 ms | ack p99 ms "
        "| server CPU % | load CPU % | ours ÷ peer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for window in windows:
        ours_med = med([r.window.rate for r in runs[ours.name, window]])
        peer_med = med([r.window.rate for r in runs[peer.name, window]])
        ratio = ours_med / peer_med if peer_med else float("nan")
        for target in (ours, peer):
            rs = runs[target.name, window]
            mid = sorted(rs, key=lambda r: r.window.rate)[len(rs) // 2]
            lines.append(
                f"| {target.name} | {window} | {stat_cells([r.window.rate for r in rs])} "
                f"| {mid.p50_ms:.2f} | {mid.p99_ms:.2f} "
                f"| {med([r.window.server_pct for r in rs]):.0f} "
                f"| {med([r.window.load_pct for r in rs]):.0f} "
                f"| {ratio_cell(ratio) if target is ours else '1.00'} |"
            )
        met = "met" if ratio >= ENTRY_TARGET else "NOT met"
        verdicts.append(f"window {window}: {ratio_cell(ratio)} ({met})")
    lines += [
        "",
        "Latency from the run with the median msgs/s. Target (>= "
        f"{ENTRY_TARGET}x the bare server's msgs/s): " + "; ".join(verdicts) + ".",
    ]
    return lines


async def fanout_section(
    args: argparse.Namespace,
    ours: Target,
    peer: Target,
    trader_creds: list[tuple[str, str]],
    inst: Instrument,
    base_url: str,
    tmp: Path,
    problems: list[str],
) -> list[str]:
    n, slow = args.subscribers, args.slow
    verify = max(0, min(args.verify, n - slow - 1))
    log(f"fan-out: connecting {n} subscribers to ours ({slow} slow)")
    ours_subs = await open_subscribers(ours.port, n, slow, verify, chain=True, capture=True)
    stats = EntryStats()
    feeds = [order_bodies(inst, args.seed + 7, i) for i in range(args.traders)]
    traders = await open_entry_clients(ours.port, feeds, trader_creds, stats)
    ours_src = OurSource(traders, stats, base_url)

    log("fan-out: recording our frames for the peer")
    recorder = next(r for r in ours_subs.healthy if r.mode == "capture")
    await ours_src.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < CAPTURE_S[1] and (
        len(recorder.captured) < CAPTURE_ENOUGH or time.perf_counter() - t0 < CAPTURE_S[0]
    ):
        await asyncio.sleep(0.25)
    await ours_src.stop()
    await ours_subs.quiesce()
    recorder.mode = "verify"  # stop recording
    frames = recorder.captured
    if not frames:
        raise RuntimeError("no market data reached the subscribers")
    mean_frame = statistics.fmean(len(f) for f in frames)
    kinds = collections.Counter(orjson.loads(f)["type"] for f in frames)
    frames_path = tmp / "frames.jsonl"
    frames_path.write_bytes(b"\n".join(frames))
    drop_bytes = args.server_buffer or DEFAULT_BUFFER

    control = PeerControl(await connect(f"ws://127.0.0.1:{peer.port}/", max_size=2**24))
    await control.request("bench.load", path=str(frames_path), drop_bytes=drop_bytes)
    log(f"fan-out: connecting {n} subscribers to the peer ({slow} slow)")
    peer_subs = await open_subscribers(peer.port, n, slow, verify, chain=False, capture=False)
    peer_src = PeerSource(control)

    watches = {
        ours.name: SlowWatch(ours_src, ours_subs),
        peer.name: SlowWatch(peer_src, peer_subs),
    }
    runs: dict[str, list[FanoutRun]] = collections.defaultdict(list)
    plan = [(ours, ours_subs, ours_src), (peer, peer_subs, peer_src)]
    try:
        for run in range(args.runs):
            for target, subs, src in plan:
                w = watches[target.name]
                r = await fanout_run(target, subs, src, w, args.seconds, args.warmup)
                runs[target.name].append(r)
                log(
                    f"fan-out run {run + 1} {target.name}: {r.window.rate:,.0f} deliveries/s, "
                    f"source {r.source_rate:,.0f}/s, server CPU {r.window.server_pct:.0f}%, "
                    f"load CPU {r.window.load_pct:.0f}%, slow consumers still served "
                    f"{r.slow_connected[0]}->{r.slow_connected[1]}"
                )
        log("fan-out: checking the slow consumers (both servers at once; not measured)")
        done = await asyncio.gather(
            *(
                drop_check(t.pid, subs, src, watches[t.name], args.drop_timeout, problems, t.name)
                for t, subs, src in plan
            )
        )
        checks = {t.name: check for (t, _, _), check in zip(plan, done, strict=True)}
        our_clients = (await ours_src.metrics())["exchange_ws_clients"]
    finally:
        for w in watches.values():
            w.task.cancel()
        await close_clients([*ours_subs.healthy, *ours_subs.slow, *traders])
        await close_clients([*peer_subs.healthy, *peer_subs.slow])
        await control.conn.close()
        await ours_src.http.aclose()
    if stats.errors:
        problems.append(f"fan-out traders: {stats.errors} bad acks, e.g. {stats.samples[:3]}")

    healthy = n - slow
    ours_med = med([r.window.rate for r in runs[ours.name]])
    peer_med = med([r.window.rate for r in runs[peer.name]])
    ratio = ours_med / peer_med if peer_med else float("nan")
    lines = [
        f"(b) Fan-out to {n:,} subscribers of {', '.join(CHANNELS)} ({healthy:,} healthy, "
        f"{slow} never read), {args.runs} runs of {args.seconds:g} s after {args.warmup:g} s "
        f"warm-up. Frames: {len(frames):,} recorded from ours ("
        + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common())
        + f"), mean {mean_frame:.0f} bytes; ours driven by {args.traders} traders placing "
        "orders closed loop, the peer broadcasting the recorded frames as fast as it can.",
        "",
        "| server | deliveries/s median | min | max | frames/s per subscriber "
        "| source events/s | server CPU % | load CPU % | ours ÷ peer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in (ours, peer):
        rs = runs[target.name]
        lines.append(
            f"| {target.name} | {stat_cells([r.window.rate for r in rs])} "
            f"| {med([r.window.rate for r in rs]) / healthy:,.1f} "
            f"| {med([r.source_rate for r in rs]):,.0f} "
            f"| {med([r.window.server_pct for r in rs]):.0f} "
            f"| {med([r.window.load_pct for r in rs]):.0f} "
            f"| {ratio_cell(ratio) if target is ours else '1.00'} |"
        )
    met = "met" if ratio >= FANOUT_TARGET else "NOT met"
    lines += [
        "",
        "deliveries/s: frames received per second by the healthy subscribers together. "
        "Source events/s: orders acked (ours; each a book_delta, plus a trade per fill) or "
        f"frames broadcast (peer). Target (>= {FANOUT_TARGET}x websockets.broadcast "
        f"deliveries/s): {ratio_cell(ratio)} ({met}).",
        "",
        "Per run, deliveries/s (slow consumers the server still wrote to at start -> end): "
        + "; ".join(
            f"{t.name} "
            + ", ".join(
                f"{r.window.rate:,.0f} ({r.slow_connected[0]}->{r.slow_connected[1]})"
                for r in runs[t.name]
            )
            for t in (ours, peer)
        )
        + ".",
        "",
        "Slow consumers (then each side kept producing until it no longer wrote to any):",
        "",
        "| server | slow consumers dropped, by what | s after connecting "
        "| healthy closed | healthy frames each (min-max) | slow sockets the server still held "
        f"{CLOSE_WAIT_S + 1:g}+ s later | close codes they read | open after reading "
        "| book_delta gaps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in (ours, peer):
        c = checks[target.name]
        codes = ", ".join(f"{k} x{v}" for k, v in sorted(c.close_codes.items()))
        how = ", ".join(f"{k} x{v}" for k, v in c.reasons.items())
        after = f"{c.gone_after:.0f}" if c.gone_after is not None else "not all"
        gaps = f"{c.gaps} on {verify}" if target is ours else "n/a (cycled frames)"
        lines.append(
            f"| {target.name} | {slow - c.left}/{slow}: {how} | {after} | {c.healthy_closed} "
            f"| {c.frames_each[0]:,}-{c.frames_each[1]:,} | {c.held}/{slow} | {codes} "
            f"| {c.still_open}/{slow} | {gaps} |"
        )
    lines += [
        "",
        f"A subscriber may lag by {drop_bytes:,} unsent bytes (our EXCHANGE_WS_BUFFER_BYTES; "
        f"the peer drops at the same); our `exchange_ws_clients` at the end: {our_clients} "
        f"(expected {args.traders} traders + {healthy:,} healthy subscribers). Close codes: 4008 = "
        "slow consumer, 1011 = keepalive ping timeout, none = the connection ended without "
        "a close frame (EOF, or reset: the buffered frames were lost).",
    ]
    return lines


# ------------------------------------------------------------------------------ report
def versions() -> str:
    return ", ".join([f"Python {sys.version.split()[0]}", *dist_versions(
        "websockets", "uvicorn", "fastapi", "starlette", "uvloop", "orjson")])


def revision() -> str:
    """HEAD and whether the serving code differs from it (read-only git calls)."""
    try:
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "--",
             "app", "engine", "exchange_client"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        dirty = "?"
    state = "app/, engine/, exchange_client/ with uncommitted changes" if dirty else "clean"
    return f"{engine_revision()}; serving code {state}"


async def run(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM (e.g. `timeout`) cancels the run, so the servers stop and the database goes
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    pinned = bool(pin_prefix(LOAD_CPU))
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    only = {"entry", "fanout"} if args.only == "both" else {args.only}
    nofile = raise_nofile(2 * args.subscribers + 4 * args.connections + 200)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    pg_url: str | None = None
    server: ServerProcess | None = None
    peer_proc: subprocess.Popen[bytes] | None = None
    problems: list[str] = []
    try:
        if args.backend == "postgres":
            if not args.postgres_url:
                raise SystemExit(
                    "--backend postgres needs --postgres-url or EXCHANGE_TEST_POSTGRES_URL"
                )
            pg_url = await create_database(args.postgres_url, prefix="exch_bench_")
            db_url, backend = pg_url, "PostgreSQL"
        else:
            db_url, backend = f"sqlite+aiosqlite:///{tmp / 'exchange.db'}", "SQLite"
        env = {"EXCHANGE_WS_BUFFER_BYTES": str(args.server_buffer)} if args.server_buffer else {}
        server = ServerProcess(db_url, tmp / "data", env)
        server.prefix = pin_prefix(SERVER_CPU)
        log(f"starting our server ({backend}) and the peer")
        server.migrate()
        server.start()
        assert server.proc is not None
        peer_port = free_port()
        peer_proc = start_peer(peer_port)
        ours = Target(f"ours ({backend})", server.port, server.proc.pid)
        peer = Target("peer (websockets)", peer_port, peer_proc.pid)
        inst = instrument(server.base_url)
        creds = setup_accounts(server.base_url, args.connections + args.traders)
        sections: list[list[str]] = []
        if "entry" in only:
            sections.append(
                await entry_section(args, ours, peer, creds[: args.connections], inst, problems)
            )
        if "fanout" in only:
            sections.append(
                await fanout_section(
                    args,
                    ours,
                    peer,
                    creds[args.connections :],
                    inst,
                    server.base_url,
                    tmp,
                    problems,
                )  # fmt: skip
            )
        placement = (
            "server (ours or peer) on core 0, load on core 1 (taskset)"
            if pinned
            else "not pinned (1 CPU or no taskset)"
        )
        header = [
            f"### Results ({datetime.date.today().isoformat()})",
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {machine()}; load average before the run "
            f"{os.getloadavg()[0]:.2f}",
            f"- command: `{' '.join(['python loadtests/bench_ws.py', *sys.argv[1:]])}`",
            f"- versions: {versions()}",
            f"- revision: {revision()}",
            f"- placement: {placement}; backend {backend}; {nofile}",
        ]  # fmt: skip
        body = [line for s in sections for line in ["", *s]]
        print("\n".join(header + body))
        if problems:
            print("\nPROBLEMS:\n" + "\n".join(f"- {p}" for p in problems))
        return 1 if problems else 0
    finally:
        if peer_proc is not None and peer_proc.poll() is None:
            peer_proc.terminate()
            peer_proc.wait(10)
        if server is not None:
            server.stop()
        if pg_url is not None:
            await drop_database(pg_url)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--only", choices=("entry", "fanout", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=None, help="default min(2, seconds / 2)")
    ap.add_argument("--connections", type=int, default=16, help="order-entry sockets")
    ap.add_argument("--window", default="1,8", help="orders in flight per socket, comma list")
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=10, help="subscribers that never read")
    ap.add_argument("--verify", type=int, default=8, help="subscribers that parse every frame")
    ap.add_argument("--traders", type=int, default=4, help="order sockets driving the fan-out")
    ap.add_argument("--drop-timeout", type=float, default=240.0)
    ap.add_argument("--server-buffer", type=int, default=None,
                    help="EXCHANGE_WS_BUFFER_BYTES (and the peer's drop limit)")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--postgres-url", default=os.environ.get("EXCHANGE_TEST_POSTGRES_URL"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--serve-peer", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.subscribers < args.slow + 2 or args.traders < 1 or args.connections < 1:
        ap.error("need --subscribers >= --slow + 2, --traders >= 1 and --connections >= 1")
    if args.warmup is None:
        args.warmup = min(2.0, args.seconds / 2)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if args.serve_peer:
            runner.run(serve_peer(args.port))
            return 0
        try:
            return runner.run(run(args))
        except asyncio.CancelledError:  # SIGTERM: the servers were stopped in run()
            log("interrupted")
            return 143


if __name__ == "__main__":
    sys.exit(main())
