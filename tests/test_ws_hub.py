"""WS hub: fan-out of one frame object, slow-consumer drops, private routing."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from app.ws import hub as hub_module
from app.ws.hub import SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON, Connection, Frame, Hub


class FakeSocket:
    def __init__(self, blocked: bool = False, broken: bool = False) -> None:
        self.sent: list[Frame] = []
        self.closes: list[tuple[int, str]] = []
        self.blocked = blocked
        self.broken = broken

    async def send(self, frame: Frame) -> None:
        if self.broken:
            raise ConnectionError("gone")
        if self.blocked:
            await asyncio.Event().wait()  # a client that never reads
        self.sent.append(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def connect(hub: Hub, sock: FakeSocket, queue_size: int | None = None) -> Connection:
    return hub.connect(sock.send, sock.close, queue_size)


async def test_publish_reaches_every_subscriber_with_the_same_object() -> None:
    hub = Hub()
    a, b, other = FakeSocket(), FakeSocket(), FakeSocket()
    ca, cb = connect(hub, a), connect(hub, b)
    connect(hub, other)
    assert hub.subscribe(ca, "trades:BTC-USDC") and hub.subscribe(cb, "trades:BTC-USDC")
    frame = b'{"type":"trade"}'
    assert hub.publish("trades:BTC-USDC", frame) == 2
    assert hub.publish("book:BTC-USDC", b"nobody") == 0
    await settle()
    assert a.sent[0] is frame and b.sent[0] is frame
    assert other.sent == []
    assert hub.metrics.messages_delivered == 2
    assert hub.metrics.connections == 3


async def test_slow_client_is_dropped_while_fast_client_gets_everything() -> None:
    assert not inspect.iscoroutinefunction(Hub.publish)  # publish cannot await anyone
    hub = Hub()
    slow_sock, fast_sock = FakeSocket(blocked=True), FakeSocket()
    slow = connect(hub, slow_sock, queue_size=2)
    connect_fast = connect(hub, fast_sock)
    for conn in (slow, connect_fast):
        hub.subscribe(conn, "book:BTC-USDC")
    frames = [f"frame {i}".encode() for i in range(50)]
    hub.publish("book:BTC-USDC", frames[0])
    await settle()  # the slow writer took frame 0 and is stuck in send
    for i, frame in enumerate(frames[1:], 1):
        delivered = hub.publish("book:BTC-USDC", frame)
        assert delivered == (2 if i <= 2 else 1)  # frames 1-2 fill the queue, 3 overflows
        if i % 10 == 0:
            await settle()
    await settle()
    assert fast_sock.sent == frames
    assert slow_sock.sent == []
    assert slow_sock.closes == [(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)]
    assert slow.closed and slow.close_code == 4008 and slow.channels == set()
    assert hub.subscribers("book:BTC-USDC") == 1
    assert hub.metrics.drops == 1 and hub.metrics.connections == 1
    assert hub.metrics.messages_delivered == 50


async def test_overflow_before_the_writer_runs_also_drops() -> None:
    hub = Hub()
    sock = FakeSocket()
    conn = connect(hub, sock, queue_size=1)
    hub.subscribe(conn, "ticker:BTC-USDC")
    hub.publish("ticker:BTC-USDC", b"1")
    assert hub.publish("ticker:BTC-USDC", b"2") == 0
    await settle()
    assert sock.closes == [(4008, "slow consumer: send queue full")]
    assert sock.sent == []  # the writer was stopped before it ran


async def test_private_frames_reach_only_the_accounts_subscribed_connections() -> None:
    hub = Hub()
    s1, s1b, s2, anon = FakeSocket(), FakeSocket(), FakeSocket(), FakeSocket()
    c1, c1b, c2, ca = (connect(hub, s) for s in (s1, s1b, s2, anon))
    hub.set_account(c1, 1)
    hub.set_account(c1b, 1)
    hub.set_account(c2, 2)
    assert not hub.subscribe(ca, "orders")  # private channel needs auth
    assert hub.subscribe(c1, "orders") and hub.subscribe(c2, "orders")
    hub.subscribe(c1b, "fills")
    frame = b'{"type":"order"}'
    assert hub.send_private(1, "orders", frame) == 1
    assert hub.send_private(3, "orders", frame) == 0
    # what the runtime asks before building a private frame at all
    assert hub.has_accounts()
    assert hub.wants(1, "orders") and hub.wants(1, "fills") and hub.wants(2, "orders")
    assert not hub.wants(2, "fills") and not hub.wants(3, "orders")
    assert hub.publish("orders", b"public publish never reaches private subscribers") == 0
    await settle()
    assert s1.sent == [frame] and s1b.sent == [] and s2.sent == [] and anon.sent == []


async def test_unsubscribe_and_unregister_stop_delivery() -> None:
    hub = Hub()
    sock = FakeSocket()
    conn = connect(hub, sock)
    hub.subscribe(conn, "trades:BTC-USDC")
    hub.publish("trades:BTC-USDC", b"1")
    hub.unsubscribe(conn, "trades:BTC-USDC")
    hub.publish("trades:BTC-USDC", b"2")
    await settle()
    assert sock.sent == [b"1"]
    hub.subscribe(conn, "candles:BTC-USDC:1m")
    hub.set_account(conn, 9)
    hub.subscribe(conn, "fills")
    hub.unregister(conn)
    hub.publish("candles:BTC-USDC:1m", b"3")
    assert hub.send_private(9, "fills", b"4") == 0
    await settle()
    assert sock.sent == [b"1"]
    assert hub.metrics.connections == 0 and hub.subscribers("candles:BTC-USDC:1m") == 0
    assert not hub.has_accounts() and not hub.wants(9, "fills")


async def test_direct_send_and_broken_socket() -> None:
    hub = Hub()
    broken = FakeSocket(broken=True)
    conn = connect(hub, broken)
    hub.subscribe(conn, "trades:BTC-USDC")
    assert hub.send(conn, "a text reply")
    await settle()
    assert conn.closed and hub.metrics.connections == 0 and hub.metrics.drops == 0
    assert hub.subscribers("trades:BTC-USDC") == 0
    ok = FakeSocket()
    c2 = connect(hub, ok)
    await c2.close(1000, "bye")
    assert ok.closes == [(1000, "bye")]
    await hub.close_all()


async def test_a_dropped_client_that_takes_no_close_frame_is_ended_then_aborted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The close frame cannot be sent (the client reads nothing): the session task is
    ended as the hub's doing, and the TCP connection is aborted a little later, so no
    zombie socket keeps its buffers."""
    monkeypatch.setattr(hub_module, "CLOSE_TIMEOUT_S", 0.05)
    # far enough apart that a busy machine cannot blur the two steps
    monkeypatch.setattr(hub_module, "ABORT_AFTER_S", 1.0)
    hub = Hub()
    sock = FakeSocket(blocked=True)

    async def close_never(code: int, reason: str) -> None:
        await asyncio.Event().wait()

    conn = hub.connect(sock.send, close_never, 1)
    kills: list[float] = []
    conn.kill = lambda: kills.append(asyncio.get_running_loop().time())
    owner = asyncio.ensure_future(asyncio.Event().wait())  # the session's receive loop
    conn.owner = owner
    hub.subscribe(conn, "book:X")
    for i in range(3):  # one frame in the stuck writer, one queued, one too many
        hub.publish("book:X", f"{i}".encode())
        await settle()
    assert hub.metrics.drops == 1 and conn.close_code == 4008
    assert not owner.done() and kills == []
    await asyncio.sleep(0.2)  # past the close timeout: the session is ended
    assert owner.cancelled() and conn.ended_by_hub and kills == []
    for _ in range(40):  # past the abort delay: the connection is dropped
        if kills:
            break
        await asyncio.sleep(0.1)
    assert len(kills) == 1


async def test_a_socket_whose_send_failed_is_aborted_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed under the hub by someone else (the server's keepalive), the connection is
    forgotten at once (not counted as a drop) and aborted CLOSE_TIMEOUT_S later (the
    time a client the hub drops gets to take its close frame)."""
    monkeypatch.setattr(hub_module, "CLOSE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(hub_module, "ABORT_AFTER_S", 30.0)
    hub = Hub()
    conn = connect(hub, FakeSocket(broken=True))
    kills: list[int] = []
    conn.kill = lambda: kills.append(1)
    hub.subscribe(conn, "trades:X")
    hub.publish("trades:X", b"t")
    await settle()
    assert conn.closed and hub.metrics.connections == 0 and hub.metrics.drops == 0
    assert kills == []
    await asyncio.sleep(0.4)
    assert kills == [1]


# --------------------------------------------------------------------------- direct sockets

class FakeDirect:
    """A DirectSocket: records the bytes written; `unsent` is what the kernel has not
    taken yet; `closing` makes it refuse frames."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.unsent = 0
        self.closing = False

    def write(self, data: bytes) -> bool:
        if self.closing:
            return False
        self.data.append(data)
        self.unsent += len(data)
        return True

    def buffered(self) -> int:
        return self.unsent


def parse_frames(data: bytes) -> list[tuple[int, str]]:
    """(opcode, text) of every frame in `data`, as a real client reads them."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame as WsFrame
    from websockets.protocol import State
    from websockets.uri import parse_uri

    # past the handshake, as after a real one
    client = ClientProtocol(parse_uri("ws://x/"), state=State.OPEN, max_size=None)
    client.receive_data(data)
    frames = [e for e in client.events_received() if isinstance(e, WsFrame)]
    return [(f.opcode.value, f.data.decode()) for f in frames]


def test_text_frame_is_rfc6455_framing_for_every_length_class() -> None:
    assert hub_module.text_frame("hi") == b"\x81\x02hi"
    assert hub_module.text_frame("é") == b"\x81\x02\xc3\xa9"  # length in bytes
    mid, big = "m" * 300, "b" * 70_000
    assert hub_module.text_frame(mid)[:4] == b"\x81\x7e\x01\x2c"
    assert hub_module.text_frame(big)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")
    data = b"".join(hub_module.text_frame(t) for t in ("hi", "é", mid, big))
    assert parse_frames(data) == [(1, "hi"), (1, "é"), (1, mid), (1, big)]


async def test_direct_sockets_get_the_frame_encoded_once_and_at_once() -> None:
    hub = Hub()
    socks = [FakeDirect(), FakeDirect()]
    conns = [hub.connect(FakeSocket().send, FakeSocket().close, direct=s) for s in socks]
    for conn in conns:
        hub.subscribe(conn, "trades:BTC-USDC")
    assert hub.publish("trades:BTC-USDC", '{"type":"trade"}') == 2
    # written before any await: no writer task, no queue
    assert socks[0].data == [b'\x81\x10{"type":"trade"}'] and socks[1].data == socks[0].data
    assert socks[0].data[0] is socks[1].data[0]  # the same bytes object for all
    assert all(c._writer is None and c.queue.empty() for c in conns)
    hub.send(conns[0], '{"type":"pong"}')
    hub.set_account(conns[1], 7)
    hub.subscribe(conns[1], "orders")
    assert hub.send_private(7, "orders", '{"type":"order"}') == 1
    assert parse_frames(b"".join(socks[0].data)) == [
        (1, '{"type":"trade"}'), (1, '{"type":"pong"}')]
    assert parse_frames(b"".join(socks[1].data)) == [
        (1, '{"type":"trade"}'), (1, '{"type":"order"}')]
    assert hub.metrics.messages_delivered == 4


async def test_a_direct_socket_past_its_buffer_is_dropped_others_are_not() -> None:
    hub = Hub(buffer_bytes=100)
    slow, fast = FakeDirect(), FakeDirect()
    slow_closes, fast_closes = FakeSocket(), FakeSocket()
    cs = hub.connect(slow_closes.send, slow_closes.close, direct=slow)
    cf = hub.connect(fast_closes.send, fast_closes.close, direct=fast)
    for conn in (cs, cf):
        hub.subscribe(conn, "book:BTC-USDC")
    frame = "x" * 40  # 42 bytes framed
    for unsent in (42, 84, 126):  # the slow client reads nothing, the fast one everything
        assert hub.publish("book:BTC-USDC", frame) == 2
        assert slow.unsent == unsent
        fast.unsent = 0
    assert hub.publish("book:BTC-USDC", frame) == 1  # 126 > 100 already: dropped
    await settle()
    assert slow_closes.closes == [(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)]
    assert cs.closed and hub.subscribers("book:BTC-USDC") == 1 and hub.metrics.drops == 1
    assert hub.publish("book:BTC-USDC", frame) == 1
    assert len(slow.data) == 3 and len(fast.data) == 5 and fast_closes.closes == []


async def test_one_frame_larger_than_the_buffer_is_not_lag() -> None:
    """A deep book snapshot bigger than the limit goes out; only lag already there drops."""
    hub = Hub(buffer_bytes=100)
    sock, closes = FakeDirect(), FakeSocket()
    conn = hub.connect(closes.send, closes.close, direct=sock)
    assert hub.send(conn, "s" * 500)
    assert sock.unsent == 504 and hub.metrics.drops == 0
    sock.unsent = 0  # read
    assert hub.send(conn, "s" * 500) and hub.metrics.drops == 0
    assert not hub.send(conn, "next")  # 504 unsent before this one: too far behind
    await settle()
    assert hub.metrics.drops == 1 and closes.closes == [(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)]


async def test_a_closing_direct_socket_is_forgotten_not_counted_as_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing (by the client, or by uvicorn's keepalive while the client reads nothing):
    forgotten, and its TCP connection aborted CLOSE_TIMEOUT_S later."""
    monkeypatch.setattr(hub_module, "CLOSE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(hub_module, "ABORT_AFTER_S", 30.0)
    hub = Hub()
    sock, closes = FakeDirect(), FakeSocket()
    conn = hub.connect(closes.send, closes.close, direct=sock)
    kills: list[int] = []
    conn.kill = lambda: kills.append(1)
    hub.subscribe(conn, "ticker:BTC-USDC")
    sock.closing = True
    assert hub.publish("ticker:BTC-USDC", "1") == 0
    await settle()
    assert conn.gone and conn.closed and hub.metrics.connections == 0
    assert hub.metrics.drops == 0 and closes.closes == [] and sock.data == []
    assert hub.send(conn, "late reply") is False
    assert kills == []
    await asyncio.sleep(0.4)
    assert kills == [1]


# --------------------------------------------------------------------------- the uvicorn socket

class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.high: int | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def is_closing(self) -> bool:
        return self.closing


class WebSocketsSansIOProtocol:  # named like uvicorn's, which UvicornSocket.of checks
    def __init__(self) -> None:
        from websockets.protocol import State

        self.transport = FakeTransport()
        self.conn = type("Conn", (), {"state": State.OPEN})()
        self.close_sent = False
        self.disconnected = False

    async def send(self, message: dict[str, object]) -> None:  # what uvicorn's send is
        pass


def test_uvicorn_socket_writes_only_while_uvicorn_would() -> None:
    from websockets.protocol import State

    from app.ws.endpoint import UvicornSocket

    assert UvicornSocket.of(FakeSocket().send, 1000) is None  # another server: queued path
    proto = WebSocketsSansIOProtocol()
    sock = UvicornSocket.of(proto.send, 1000)
    assert sock is not None
    assert proto.transport.high == 2 * 1000 + (4 << 20)  # uvicorn's own sends never wait
    assert sock.write(b"a") and sock.buffered() == 1
    for attr, value in (("close_sent", True), ("disconnected", True)):
        proto = WebSocketsSansIOProtocol()
        setattr(proto, attr, value)
        assert UvicornSocket.of(proto.send, 1000).write(b"a") is False  # type: ignore[union-attr]
        assert proto.transport.written == []
    proto = WebSocketsSansIOProtocol()
    proto.conn.state = State.CLOSING  # a close frame received or sent
    assert UvicornSocket.of(proto.send, 1000).write(b"a") is False  # type: ignore[union-attr]
    proto = WebSocketsSansIOProtocol()
    proto.transport.closing = True
    assert UvicornSocket.of(proto.send, 1000).write(b"a") is False  # type: ignore[union-attr]
