"""`GET /v1/ws`: subscriptions, auth, private channels and order entry on one socket.

Rules owned here:
* a bad frame gets `{"type":"error","error":{...}}` and the socket stays open;
* `book:M` answers with a full `book_snapshot` first; the deltas that follow
  chain on its `seq` (snapshot and deltas come from the same read model, which
  only changes after a commit, so nothing can slip between them);
* order entry takes the REST bodies and runs the same services as REST;
* frames are pipelined: each is handled in the order received up to the point where
  its command takes its place in the sequence; then the next frame starts while it
  commits (at most MAX_IN_FLIGHT per socket; beyond that the socket is not read).
  Responses carry the frame's `id` and go out as each command commits. `order.place`
  and `order.cancel` get there without a task of their own when nothing before them
  is still on its way (checked, queued, and answered from the commit's callback);
  every other frame, and these when one is, runs as a task that waits its turn;
* `auth` journals an `OpenSession` carrying the frame's signature and answers once it
  commits (a captured frame cannot open a session after a restart either); the frames
  after it wait until then, so an order sent right behind it finds the session open;
* with `cancel_on_disconnect`, closing the socket cancels the account's orders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import orders as order_services
from app.api.deps import enqueue, events_of, on_queued, submit
from app.api.schemas import AmendRequest, BatchRequest, OrderRequest
from app.auth import AuthError
from app.errors import ApiError
from app.runtime import Runtime
from app.ws.hub import PRIVATE_CHANNELS, Connection
from engine import commands as c
from engine.commands import attach_signature
from engine.events import Event
from engine.types import CancelReason

log = logging.getLogger("exchange.ws")
router = APIRouter()
CANDLE_INTERVALS = ("1m", "5m", "1h")
MAX_FRAME = 64 * 1024
MAX_IN_FLIGHT = 64  # frames of one socket handled at once
FRAMES_GRACE_S = 10.0  # how long a closed socket's session waits for its frames in flight


def _frame(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


def _error(code: str, message: str, req_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "error": {"code": code, "message": message}}
    if req_id is not None:
        out["id"] = req_id
    return out


class Session:
    def __init__(self, rt: Runtime, conn: Connection) -> None:
        self.rt = rt
        self.conn = conn
        self.account_id: int | None = None
        self.api_key: str | None = None
        self.cancel_on_disconnect = False
        # resolved once the last frame read has its command queued (or is done with)
        self._turn: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._frames: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Future[list[Event]]] = set()  # queued by `_order_now`

    async def feed(self, text: str) -> None:
        """Start on a frame; returns as soon as the socket may read the next one."""
        await self._slots.acquire()
        if (self._turn is None or self._turn.done()) and self._order_now(text):
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._frame(text, self._turn, turn))
        self._turn = turn
        self._frames.add(task)
        task.add_done_callback(self._frames.discard)

    async def _frame(
        self, text: str, previous: asyncio.Future[None] | None, turn: asyncio.Future[None]
    ) -> None:
        def queued() -> None:
            if not turn.done():
                turn.set_result(None)

        on_queued.set(queued)
        try:
            if previous is not None and not previous.done():
                await previous  # frames take their places in the sequence in order
            await self.handle(text)
        except Exception:
            log.exception("websocket frame failed")
            req_id = None
            try:
                msg = orjson.loads(text)
                req_id = msg.get("id") if isinstance(msg, dict) else None
            except orjson.JSONDecodeError:
                pass
            self.reply(_error("INTERNAL_ERROR", "an unexpected server error", req_id))
        finally:
            queued()
            self._slots.release()

    def _order_now(self, text: str) -> bool:
        """An `order.place` or `order.cancel` frame queued at once (checked as
        `order_entry` checks it, answered when it commits): True once the frame is dealt
        with (queued, or refused with its error response); False for any other frame."""
        if len(text) > MAX_FRAME:
            return False
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        op = msg.get("op") if isinstance(msg, dict) else None
        if op != "order.place" and op != "order.cancel":
            return False
        req_id = msg.get("id")
        try:
            aid, body = self._trading(op, msg)
            cmd: c.PlaceOrder | c.CancelOrder
            if op == "order.place":
                cmd = order_services.order_command(self.rt, aid, OrderRequest.model_validate(body))
            else:
                cmd = order_services.cancel_command(aid, self._cancel_id(body))
            pending = enqueue(self.rt, cmd)
        except (ApiError, ValidationError) as exc:
            self.reply(self._error_response(op, req_id, exc))
            self._slots.release()
            return True
        except Exception:  # as a frame's task does: answer it, keep the socket
            log.exception("websocket frame failed")
            self.reply(_error("INTERNAL_ERROR", "an unexpected server error", req_id))
            self._slots.release()
            return True
        self._pending.add(pending)
        pending.add_done_callback(partial(self._committed, op, req_id, aid, cmd))
        return True

    def _committed(
        self,
        op: str,
        req_id: Any,
        aid: int,
        cmd: c.PlaceOrder | c.CancelOrder,
        pending: asyncio.Future[list[Event]],
    ) -> None:
        """Answer a frame `_order_now` queued, from its events (a placement refused for a
        live order's client id may be a retry, answered with that order: `_placed`)."""
        self._pending.discard(pending)
        if pending.cancelled():
            self._slots.release()
            return
        try:
            events = events_of(pending)
            result = (
                order_services.order_result(self.rt, events, aid)
                if isinstance(cmd, c.PlaceOrder)
                else order_services.cancelled(self.rt, events, aid)
            )
            self.reply({"type": "response", "id": req_id, "result": result})
        except ApiError as err:
            if isinstance(cmd, c.PlaceOrder) and order_services.may_be_retry(err):
                task = asyncio.get_running_loop().create_task(
                    self._placed(req_id, aid, cmd, pending.result())
                )
                self._frames.add(task)
                task.add_done_callback(self._frames.discard)
                return  # (the task releases the slot)
            self.reply(self._response_error(op, req_id, err.body()["error"]))
        except Exception:
            log.exception("websocket frame failed")
            self.reply(_error("INTERNAL_ERROR", "an unexpected server error", req_id))
        self._slots.release()

    async def _placed(
        self, req_id: Any, aid: int, cmd: c.PlaceOrder, events: list[Event]
    ) -> None:
        try:
            result = await order_services.placed(self.rt, aid, cmd, events)
            self.reply({"type": "response", "id": req_id, "result": result})
        except ApiError as err:
            self.reply(self._response_error("order.place", req_id, err.body()["error"]))
        except Exception:
            log.exception("websocket frame failed")
            self.reply(_error("INTERNAL_ERROR", "an unexpected server error", req_id))
        finally:
            self._slots.release()

    def reply(self, data: dict[str, Any]) -> None:
        self.rt.hub.send(self.conn, _frame(data))

    def valid_channel(self, channel: str) -> bool:
        if channel in PRIVATE_CHANNELS:
            return True
        parts = channel.split(":")
        markets = self.rt.config.markets
        if len(parts) == 2 and parts[0] in ("book", "trades", "ticker"):
            return parts[1] in markets
        if len(parts) == 3 and parts[0] == "candles":
            return parts[1] in markets and parts[2] in CANDLE_INTERVALS
        return False

    async def handle(self, text: str) -> None:
        if len(text) > MAX_FRAME:
            self.reply(_error("FRAME_TOO_LARGE", f"frames are limited to {MAX_FRAME} bytes"))
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.reply(_error("MALFORMED_JSON", "the frame is not valid JSON"))
            return
        if not isinstance(msg, dict):
            self.reply(_error("BAD_FRAME", "a frame is a JSON object with an op"))
            return
        req_id = msg.get("id")
        op = msg.get("op")
        try:
            await self.dispatch(op, msg, req_id)
        except (ApiError, ValidationError) as exc:
            self.reply(self._error_response(op, req_id, exc))

    def _error_response(
        self, op: Any, req_id: Any, exc: ApiError | ValidationError
    ) -> dict[str, Any]:
        if isinstance(exc, ApiError):
            return self._response_error(op, req_id, exc.body()["error"])
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid"}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{loc}: {first.get('msg')}".strip(": ")
        return self._response_error(op, req_id, {"code": "VALIDATION_ERROR", "message": message})

    @staticmethod
    def _response_error(op: Any, req_id: Any, error: dict[str, Any]) -> dict[str, Any]:
        """Order entry errors answer as responses; others as error frames. Extra fields
        (e.g. the live `order_id` of a duplicate client id) are kept."""
        kind = "response" if isinstance(op, str) and op.startswith("order.") else "error"
        out: dict[str, Any] = {"type": kind, "error": error}
        if req_id is not None or kind == "response":
            out["id"] = req_id
        return out

    async def dispatch(self, op: Any, msg: dict[str, Any], req_id: Any) -> None:
        if op == "ping":
            self.reply({"type": "pong", "id": req_id} if req_id is not None else {"type": "pong"})
        elif op in ("subscribe", "unsubscribe"):
            self.subscription(op, msg, req_id)
        elif op == "auth":
            await self.auth(msg, req_id)
        elif isinstance(op, str) and op.startswith("order."):
            result = await self.order_entry(op, msg)
            self.reply({"type": "response", "id": req_id, "result": result})
        else:
            raise ApiError("UNKNOWN_OP", f"unknown op {op!r}")

    def subscription(self, op: str, msg: dict[str, Any], req_id: Any) -> None:
        channels = msg.get("channels")
        if (
            not isinstance(channels, list)
            or not channels
            or not all(isinstance(ch, str) for ch in channels)
        ):
            raise ApiError("VALIDATION_ERROR", "channels must be a non-empty list of strings")
        bad = [ch for ch in channels if not self.valid_channel(ch)]
        if bad:
            raise ApiError("UNKNOWN_CHANNEL", f"unknown channel {bad[0]!r}")
        hub = self.rt.hub
        if op == "unsubscribe":
            for ch in channels:
                hub.unsubscribe(self.conn, ch)
            self.reply({"type": "unsubscribed", "id": req_id, "channels": channels})
            return
        private = [ch for ch in channels if ch in PRIVATE_CHANNELS]
        if private and self.account_id is None:
            raise ApiError("AUTH_REQUIRED", f"authenticate before subscribing to {private[0]}")
        fresh = [ch for ch in channels if ch not in self.conn.channels]
        for ch in channels:
            hub.subscribe(self.conn, ch)
        self.reply({"type": "subscribed", "id": req_id, "channels": channels})
        for ch in fresh:
            if ch.startswith("book:"):
                self.reply(self.rt.marketdata.book_snapshot_message(ch.split(":", 1)[1]))

    async def auth(self, msg: dict[str, Any], req_id: Any) -> None:
        """Verify the frame, journal an `OpenSession` with its signature (so the frame is
        still spent after a restart) and answer once that commits. The frames after it
        wait for that (its turn ends when this returns, not once its command is queued):
        an order read next must find the session open."""
        signature = msg.get("signature")
        try:
            record, ts = self.rt.auth.verify_request(
                msg.get("api_key"), msg.get("timestamp"), signature, "GET", "/v1/ws", b""
            )
        except AuthError as exc:
            raise ApiError(exc.code, exc.message, status=401) from exc
        if record.account_id is None:
            raise ApiError(
                "PERMISSION_DENIED", "operator keys cannot open trading sessions", status=403
            )
        assert isinstance(signature, str)  # verified
        session = c.OpenSession(account_id=record.account_id)
        attach_signature(session, signature, ts)
        on_queued.set(None)
        await submit(self.rt, session)
        self.account_id = record.account_id
        self.api_key = record.api_key
        self.cancel_on_disconnect = bool(msg.get("cancel_on_disconnect", False))
        self.rt.hub.set_account(self.conn, record.account_id)
        self.reply(
            {
                "type": "response",
                "id": req_id,
                "result": {
                    "authenticated": True,
                    "account_id": str(record.account_id),
                    "permissions": sorted(record.permissions),
                    "cancel_on_disconnect": self.cancel_on_disconnect,
                },
            }
        )

    def _trading(self, op: str, msg: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The checks of every order op (an authenticated key that may trade, within its
        rate limit): the account and the op's body."""
        if self.account_id is None or self.api_key is None:
            raise ApiError("AUTH_REQUIRED", "authenticate before sending orders")
        record = self.rt.keys.get(self.api_key)
        if record is None or record.revoked or "trade" not in record.permissions:
            raise ApiError("PERMISSION_DENIED", "this key cannot trade", status=403)
        body = {k: v for k, v in msg.items() if k not in ("op", "id")}
        category = "cancel" if op in ("order.cancel", "order.cancel_all") else "order"
        decision = self.rt.limiter.check("key:" + self.api_key, category)
        if not decision.allowed:
            raise ApiError(
                "RATE_LIMITED",
                f"{category} rate limit reached; retry in {decision.retry_after_s:.2f}s",
            )
        return self.account_id, body

    @staticmethod
    def _cancel_id(body: dict[str, Any]) -> str:
        order_id = body.get("order_id")
        if not isinstance(order_id, str) or set(body) != {"order_id"}:
            raise ApiError("VALIDATION_ERROR", "order.cancel takes order_id (a string) only")
        return order_id

    async def order_entry(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        aid, body = self._trading(op, msg)
        if op == "order.place":
            return await order_services.place(self.rt, aid, OrderRequest.model_validate(body))
        if op == "order.batch":
            return await order_services.place_batch_items(
                self.rt, aid, BatchRequest.model_validate(body)
            )
        if op == "order.amend":
            order_id = body.pop("order_id", None)
            if not isinstance(order_id, str):
                raise ApiError("VALIDATION_ERROR", "order_id (a string) is required")
            return await order_services.amend(
                self.rt, aid, order_id, AmendRequest.model_validate(body)
            )
        if op == "order.cancel":
            return await order_services.cancel(self.rt, aid, self._cancel_id(body))
        if op == "order.cancel_all":
            market = body.get("market")
            if (market is not None and not isinstance(market, str)) or set(body) - {"market"}:
                raise ApiError("VALIDATION_ERROR", "order.cancel_all takes an optional market")
            return await order_services.cancel_all_orders(self.rt, aid, market)
        raise ApiError("UNKNOWN_OP", f"unknown op {op!r}")

    async def closed(self) -> None:
        self.rt.hub.unregister(self.conn)
        if self._turn is not None and not self._turn.done():
            # every frame read before the close has run up to its place in the sequence
            # (an auth frame among them may just have set cancel_on_disconnect), so the
            # orders already read go in before the cancel
            await self._turn
        if self.cancel_on_disconnect and self.account_id is not None:
            try:
                await submit(
                    self.rt, c.CancelAll(account_id=self.account_id, reason=CancelReason.DISCONNECT)
                )
            except ApiError as err:
                log.warning(
                    "cancel-on-disconnect for account %s failed: %s", self.account_id, err.code
                )
        in_flight: list[asyncio.Future[Any]] = [*self._frames, *self._pending]
        if in_flight:  # let the frames in flight finish (their replies go nowhere)
            await asyncio.wait(in_flight, timeout=FRAMES_GRACE_S)


RAW_SEND = "exchange.raw_send"


class KeepRawSend:
    """ASGI middleware: keeps the server's own `send` in a WebSocket's scope, before
    Starlette's exception handling wraps it (uvicorn's is a method of its protocol
    object, which holds the transport that `_transport_abort` needs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class UvicornSocket:
    """Whole frames straight to the transport of uvicorn's websockets-sansio protocol,
    while that protocol would still send them itself (open, no close frame sent).

    The transport's high-water mark is raised above the hub's limit on unsent bytes:
    uvicorn's own `send` (the close frame, say) waits while the transport is paused,
    so a consumer dropped for being slow still gets its 4008 close frame at once,
    behind the data it has not read."""

    __slots__ = ("_proto", "_transport", "_open")

    def __init__(self, proto: Any, max_buffer: int) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._open = type(proto.conn.state).OPEN
        self._transport.set_write_buffer_limits(high=2 * max_buffer + (4 << 20))

    @classmethod
    def of(cls, raw_send: Any, max_buffer: int) -> UvicornSocket | None:
        """The socket behind uvicorn's own ASGI `send`, or None for another server."""
        proto: Any = getattr(raw_send, "__self__", None)
        if type(proto).__name__ != "WebSocketsSansIOProtocol":  # the only one this knows
            return None
        needed = ("transport", "conn", "close_sent", "disconnected")
        if not all(hasattr(proto, name) for name in needed):
            return None
        transport = proto.transport
        if not all(
            hasattr(transport, name)
            for name in ("write", "get_write_buffer_size", "set_write_buffer_limits")
        ) or not hasattr(proto.conn, "state"):
            return None
        return cls(proto, max_buffer)

    def write(self, data: bytes) -> bool:
        proto, transport = self._proto, self._transport
        if (
            proto.close_sent
            or proto.disconnected
            or transport.is_closing()
            or proto.conn.state is not self._open
        ):
            return False
        transport.write(data)
        return True

    def buffered(self) -> int:
        size: int = self._transport.get_write_buffer_size()
        return size


def _transport_abort(websocket: WebSocket) -> Callable[[], None] | None:
    """The socket's `transport.abort`, when the ASGI server exposes it (see KeepRawSend)."""
    send = websocket.scope.get(RAW_SEND, getattr(websocket, "_send", None))
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    return abort if callable(abort) else None


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()

    raw_send = websocket.scope.get(RAW_SEND)

    async def send(frame: str | bytes) -> None:
        text = frame if isinstance(frame, str) else frame.decode()
        if raw_send is not None:  # straight to the server, past Starlette's wrappers
            await raw_send({"type": "websocket.send", "text": text})
        else:
            await websocket.send_text(text)

    # frames straight to uvicorn's transport (encoded once per publish), else queued
    direct = UvicornSocket.of(raw_send, rt.hub.buffer_bytes) if rt.settings.ws_direct else None
    conn = rt.hub.connect(send, lambda code, reason: websocket.close(code, reason), direct=direct)
    conn.owner = asyncio.current_task()
    conn.kill = _transport_abort(websocket)
    session = Session(rt, conn)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode("utf-8", errors="replace")
            await session.feed(text)
    except WebSocketDisconnect:
        pass
    except RuntimeError:  # receive after the hub closed the socket (slow consumer)
        pass
    except asyncio.CancelledError:
        # the hub ended a client that ignored its close frame: a normal end, not an error
        # (unless something else, a shutdown, cancelled the task as well)
        task = asyncio.current_task()
        if not conn.ended_by_hub or task is None or task.uncancel() > 0:
            raise
    finally:  # also on cancellation by the hub when a dropped client ignores the close frame
        conn.owner = None  # cleaning up: the hub must not cancel this task any more
        await session.closed()
