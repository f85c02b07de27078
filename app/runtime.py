"""The running exchange: store, engine, sequencer, read models and hub, wired once.

Rules owned here:
* start-up rebuilds the engine by replaying the journal (checksums and gapless
  seqs verified by the store) and only then opens the sequencer; until then
  `/v1/health` answers 503 and commands are refused;
* `publish` runs after each commit: it feeds the read models (market data, API
  keys) and fans events out to WebSocket subscribers, serialized once per event.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from app import native
from app.auth import Authenticator, KeyRecord
from app.config import Settings, load_exchange_config
from app.marketdata import MarketData
from app.ratelimit import RateLimiter
from app.recovery import RecoveryReport, encode_snapshot, recover, spent_signatures
from app.sequencer import Entry, Sequencer, ServiceUnavailable
from app.store import Store
from app.views import (
    fill_from_trade,
    funding_payment_wire,
    health_wire,
    liquidation_wire,
    margin_state_wire,
    order_wire,
    position_event_wire,
    transfer_wire,
)
from app.ws.hub import Hub
from engine.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    BadDebt,
    BookDelta,
    Event,
    FundingPayment,
    FundingSampled,
    LiquidationSlice,
    MarginStateChanged,
    MarketStateChanged,
    OrderUpdate,
    PositionChanged,
    TradeEvent,
    Transfer,
    liquidation_row,
)
from engine.exchange import Exchange
from engine.fixedpoint import format_units
from engine.types import MarginState, MarketState, Side

log = logging.getLogger("exchange.runtime")
MARKETDATA_TRADES = 5000  # newest trades per market replayed into candles/tickers at start
HEALTH_PUSH_S = 1.0  # how often connected accounts get their health, when it changed
SNAPSHOT_DUTY = 20  # a snapshot waits at least 20x the last one's cost: at most ~5% of the time
MARGIN_EVENTS = (MarginStateChanged, LiquidationSlice, BadDebt)  # the private `margin` channel
ACCOUNT_EVENTS = (PositionChanged, FundingPayment, *MARGIN_EVENTS)  # pushed to one account


def admin_credentials(settings: Settings) -> tuple[str, str, bool]:
    """(key, secret, generated): from the environment, else a file in the data dir, else new."""
    if settings.admin_key and settings.admin_secret:
        return settings.admin_key, settings.admin_secret, False
    path = Path(settings.data_dir) / "admin-credentials.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["api_key"], data["api_secret"], False
    key, secret = new_admin_credentials(path)
    return key, secret, True


def new_admin_credentials(path: Path) -> tuple[str, str]:
    """Generate an operator key pair and save it, readable by its owner only."""
    key, secret = "admin-" + secrets.token_hex(8), secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"api_key": key, "api_secret": secret}, fh)
    return key, secret


def _timed_encode(snap: dict[str, Any]) -> tuple[tuple[bytes, int, str], float]:
    """encode_snapshot, and the seconds it took."""
    started = time.perf_counter()
    return encode_snapshot(snap), time.perf_counter() - started


def _freeze_long_lived() -> None:
    gc.collect()
    gc.freeze()


def _healths(ex: Exchange, accounts: list[int]) -> tuple[int, dict[int, Any]]:
    return ex.last_seq, {a: ex.health(a) for a in accounts}


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = load_exchange_config(settings.markets)
        self.store: Store | None = None
        self.engine = Exchange(self.config)
        self.marketdata = MarketData(self.config)
        self.hub = Hub(queue_size=settings.ws_queue_size, buffer_bytes=settings.ws_buffer_bytes)
        self.keys: dict[str, KeyRecord] = {}
        self.admin_key, admin_secret, _ = admin_credentials(settings)
        self.keys[self.admin_key] = KeyRecord(
            self.admin_key, admin_secret, None, frozenset({"admin"}), False
        )
        if settings.oracle_key and settings.oracle_secret:
            self.keys[settings.oracle_key] = KeyRecord(
                settings.oracle_key, settings.oracle_secret, None, frozenset({"oracle"}), False
            )
        self._operator_keys = dict(self.keys)
        self.auth = Authenticator(self.keys.get, recv_window_ms=settings.recv_window_ms)
        self.limiter = RateLimiter(enabled=settings.rate_limits != "off")
        self.sequencer: Sequencer | None = None
        # requests of the hot routes (app/api/hot.py) by (route, "served" | "fallback")
        self.hot_route_counts: dict[tuple[str, str], int] = {}
        self.status = "starting"
        self.startup_error: str | None = None
        self._startup: asyncio.Task[None] | None = None
        self.recovery = RecoveryReport()
        self._snap_seq = 0
        self._snap_time = time.monotonic()
        self._snap_cost = 0.0  # seconds the last snapshot took to copy and encode
        self._snapshot_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- life
    async def start(self) -> None:
        stale = native.running() == "python" and "stale" in native.reason
        # a stale compiled build is skipped silently otherwise: 3-4x slower, unnoticed
        log.log(logging.WARNING if stale else logging.INFO,
                "engine: %s (%s)", native.running(), native.reason)
        self.store = await Store.open(self.settings.database_url)
        self._startup = asyncio.create_task(self._recover_and_open())

    async def _recover_and_open(self) -> None:
        self.status = "recovering"
        try:
            engine = await self.rebuild()
        except Exception as exc:
            log.exception("recovery failed")
            self.status = "failed"
            self.startup_error = str(exc)
            return
        assert self.store is not None
        self.sequencer = Sequencer(
            engine,
            self.store.write_batch,
            self.publish,
            self.rebuild,
            batch_max=self.settings.batch_max,
        )
        self.engine = engine
        self.sequencer.start()
        self._health_task = asyncio.create_task(self._health_stream(), name="health-stream")
        self.status = "ready"
        self._maybe_snapshot()  # a long replay is worth a snapshot at once
        log.info("open for commands at seq %d", engine.last_seq)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        if self._startup is not None:
            await asyncio.wait_for(asyncio.shield(self._startup), timeout)

    async def stop(self) -> None:
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
        if self._health_task is not None:
            self._health_task.cancel()
        if self.sequencer is not None:
            await self.sequencer.stop()
        await self.hub.close_all()
        if self.store is not None:
            await self.store.close()

    async def rebuild(self) -> Exchange:
        """The engine at the last committed seq (snapshot + journal tail) and fresh read models.

        What exists once it is in use (modules, the recovered engine, the read models)
        lives until the next rebuild: it is frozen out of the cyclic collector's reach, so
        full collections no longer walk it (65-95 ms each, every second or so under load:
        the REST p99; see BENCHMARKS.md). A rebuild unfreezes first, or the engine it
        replaces (full of reference cycles) could never be collected."""
        assert self.store is not None
        gc.unfreeze()
        engine, report = await recover(self.store, self.config)
        self.marketdata = await self._marketdata_from(engine)
        keys = dict(self._operator_keys)
        for k in engine.api_keys.values():
            keys[k.api_key] = KeyRecord(
                k.api_key, k.secret, k.account_id, frozenset(k.permissions), k.revoked
            )
        self.keys.clear()
        self.keys.update(keys)
        auth = self.auth  # requests accepted before a restart stay spent
        spent = await spent_signatures(
            self.store, engine, auth.clock(), auth.max_recv_window_ms, report
        )
        for sig, ts in spent:
            auth.remember(sig, ts)
        self.engine = engine
        self.recovery = report
        # commands replayed since the last snapshot count towards the next one, so a server
        # that crashes more often than every N commands still snapshots
        self._snap_seq, self._snap_time = report.snapshot_seq or 0, time.monotonic()
        # runs once the caller has put the new engine in place (it does not await first)
        asyncio.get_running_loop().call_soon(_freeze_long_lived)
        return engine

    async def _marketdata_from(self, engine: Exchange) -> MarketData:
        """Read models rebuilt from committed state: books and market states from the engine,
        recent trades, candles and tickers from the newest trades in the database."""
        assert self.store is not None
        md = MarketData(self.config)
        for market in self.config.markets:
            for row in await self.store.recent_trades(market, MARKETDATA_TRADES):
                md.on_command(
                    row["seq"],
                    row["ts"],
                    [
                        TradeEvent(
                            row["trade_id"],
                            market,
                            row["price"],
                            row["size"],
                            Side(row["taker_side"]),
                            row["maker_order_id"],
                            row["taker_order_id"],
                            row["maker_account"],
                            row["taker_account"],
                            row["maker_fee"],
                            row["taker_fee"],
                            row["ts"],
                        )
                    ],
                )
            book = engine.markets[market].book
            events: list[Event] = [
                BookDelta(market, tuple(book.depth(Side.BUY)), tuple(book.depth(Side.SELL)))
            ]
            if engine.markets[market].state is not MarketState.OPEN:
                events.append(MarketStateChanged(market, engine.markets[market].state))
            mf = engine.funding.get(market)
            if mf is not None and engine.next_funding_ts is not None:
                events.append(
                    FundingSampled(
                        market,
                        0,
                        mf.rate(),
                        mf.basis,
                        engine.open_interest[market],
                        engine.next_funding_ts,
                        engine.last_ts,
                    )
                )
            md.on_command(engine.last_seq, engine.last_ts, events)
        for asset, e in engine.oracle.prices.items():
            md.indexes[asset] = (e.price, e.ts, e.stale)
        return md

    # ----------------------------------------------------------- snapshots
    def _maybe_snapshot(self) -> None:
        """After a commit: snapshot when N commands or T seconds have passed since the last,
        but never sooner than SNAPSHOT_DUTY times what the last one cost (its copy and its
        encoding): a big state under a high command rate must not spend its time
        snapshotting. The copy is taken here, at a seq boundary; encoding and writing run
        off the loop."""
        engine = self.engine
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        behind = engine.last_seq - self._snap_seq
        if behind <= 0:
            return
        settings = self.settings
        since = time.monotonic() - self._snap_time
        if behind < settings.snapshot_every and since < settings.snapshot_interval_s:
            return
        if since < SNAPSHOT_DUTY * self._snap_cost:
            return
        started = time.perf_counter()
        snap = engine.snapshot()
        self._snap_cost = time.perf_counter() - started
        self._snap_seq, self._snap_time = engine.last_seq, time.monotonic()
        self._snapshot_task = asyncio.create_task(
            self._write_snapshot(engine.last_seq, engine.last_ts, snap)
        )

    async def _write_snapshot(self, seq: int, ts: int, snap: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            (data, checksum, state_hash), took = await asyncio.to_thread(_timed_encode, snap)
            self._snap_cost += took
            await self.store.save_snapshot(
                seq, ts, state_hash, checksum, data, self.settings.snapshot_keep
            )
            log.info("snapshot at seq %d (%d bytes, state %s)", seq, len(data), state_hash[:16])
        except Exception:
            log.exception("snapshot at seq %d failed; the next one will be tried later", seq)

    @property
    def db(self) -> Store:
        """The open store (routes run only after `start`)."""
        assert self.store is not None, "the store is not open"
        return self.store

    @property
    def ready(self) -> bool:
        return self.sequencer is not None and self.sequencer.ready

    # ------------------------------------------------------------- publish
    def _update_keys(self, events: Sequence[Event]) -> None:
        """The key registry the authenticator reads, kept in step with committed events."""
        keys = self.keys
        for e in events:
            if isinstance(e, ApiKeyCreated):
                keys[e.api_key] = KeyRecord(
                    e.api_key, e.api_secret, e.account_id, frozenset(e.permissions), False
                )
            elif isinstance(e, ApiKeyRevoked) and e.api_key in keys:
                keys[e.api_key] = replace(keys[e.api_key], revoked=True)

    def publish(self, entries: Sequence[Entry]) -> None:
        """Fan a committed batch out: one book delta per market changed, the trades in
        order, the last ticker and candles (MarketData.on_batch: a burst of 512 commands
        must not flood every subscriber's buffer with superseded states); then the
        private pushes, command by command."""
        hub = self.hub
        batch = [(seq, ts, events) for seq, ts, _cmd, events in entries]
        for channel, frame in self.marketdata.on_batch(batch, hub.followed):
            hub.publish(channel, frame.decode())  # text frames, serialized once per message
        for seq, _ts, events in batch:
            self._update_keys(events)
            self._publish_private(seq, events)
        self._maybe_snapshot()

    def _publish_private(self, seq: int, events: Sequence[Event]) -> None:
        """Private pushes, each built only when one of its account's connections is
        subscribed to its channel (most accounts have none: building and dropping their
        frames cost a sixth of a durable benchmark's throughput)."""
        hub, config = self.hub, self.config
        if not hub.has_accounts():
            return
        wants = hub.wants

        def push(account: int, channel: str, msg: dict[str, Any]) -> None:
            hub.send_private(account, channel, orjson.dumps(msg).decode())

        quote = config.assets[config.quote_asset].decimals if config.quote_asset else 0
        for e in events:
            if isinstance(e, OrderUpdate):
                if wants(e.order.account_id, "orders"):
                    push(e.order.account_id, "orders",
                         {"type": "order", "seq": seq, "order": order_wire(config, e.order)})
            elif isinstance(e, TradeEvent):
                for account in (e.maker_account, e.taker_account):
                    if wants(account, "fills"):
                        push(account, "fills", {"type": "fill", "seq": seq,
                                                **fill_from_trade(config, e, account)})
            elif isinstance(e, Transfer):
                for account in (e.from_account, e.to_account):
                    if wants(account, "account"):
                        push(account, "account", {"type": "balance", "seq": seq,
                                                  **transfer_wire(config, e, account)})
            elif isinstance(e, ACCOUNT_EVENTS):
                channel = "margin" if isinstance(e, MARGIN_EVENTS) else "account"
                if wants(e.account_id, channel):
                    push(e.account_id, channel, self._account_message(seq, e, quote))

    def _account_message(self, seq: int, e: Event, quote: int) -> dict[str, Any]:
        """The push for a position, funding, margin-state, liquidation or bad-debt event."""
        config = self.config
        if isinstance(e, PositionChanged):
            return {"type": "position", "seq": seq, **position_event_wire(config, e)}
        if isinstance(e, FundingPayment):
            row = {**e._asdict(), "index_price": e.index_price}
            return {"type": "funding", "seq": seq, **funding_payment_wire(config, row)}
        if isinstance(e, MarginStateChanged):
            kind = "margin_call" if e.state is MarginState.MARGIN_CALL else "margin_state"
            return {"type": kind, "seq": seq, **margin_state_wire(config, e)}
        if isinstance(e, LiquidationSlice):
            return {"type": "liquidation", "seq": seq,
                    **liquidation_wire(config, liquidation_row(e)),
                    "liquidation_end_after": format_units(e.liquidation_end_after, quote)}
        assert isinstance(e, BadDebt)
        return {"type": "bad_debt", "seq": seq, **liquidation_wire(config, liquidation_row(e))}

    async def _health_stream(self) -> None:
        """Once a second, each account with a connection on its `account` channel gets
        its health (`{"type":"health"}`) when it changed since the last one sent. Read
        between batches (Sequencer.query), so it is committed state."""
        sent: dict[int, Any] = {}
        decimals = self.config.assets[self.config.quote_asset].decimals
        while True:
            await asyncio.sleep(HEALTH_PUSH_S)
            seq = self.sequencer
            accounts = self.hub.accounts_on("account")
            for gone in set(sent) - set(accounts):
                del sent[gone]
            if seq is None or not seq.ready or not accounts:
                continue
            try:
                at, by_account = await seq.query(partial(_healths, accounts=accounts))
            except ServiceUnavailable:
                continue
            for account, health in by_account.items():
                wire = health_wire(health, decimals)
                if sent.get(account) != wire:
                    sent[account] = wire
                    msg = {"type": "health", "seq": at, "health": wire}
                    self.hub.send_private(account, "account", orjson.dumps(msg).decode())
