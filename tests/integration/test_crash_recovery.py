"""Crash safety (issue 3): SIGKILL under load, corrupt snapshots and journals, retries.

Every test owns its servers (`ServerProcess` on a throwaway database, SQLite and
PostgreSQL) because it kills, corrupts and restarts them. What is checked is the
durability contract of DESIGN.md section 10, from the outside:

* an acknowledged command (2xx, or a refusal that reveals committed state such
  as ORDER_NOT_LIVE) survives any SIGKILL exactly; an unacknowledged one (the
  connection died) may or may not have happened, and nothing else may differ;
* after every restart the books, orders, fills, ledger, balances and holds agree
  with each other and with the engine's audit (conservation per asset, no broken
  invariant, `seq` of health == `seq` of the audit);
* a corrupt snapshot is skipped for an older one (or a full replay) and the state
  hash is the same; a corrupt or gapped journal refuses to start and names the seq;
* a retried order (same client_order_id and parameters) is answered with the live
  order, before and after a crash, and never placed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import sqlite3
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import _database
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
MARKET = "BTC-USDC"
LIVE = ("open", "partially_filled")
TERMINAL = ("filled", "cancelled", "expired")
# the partial order of an order's life: open -> partially_filled -> filled|cancelled|expired
RANK = {"open": 0, "partially_filled": 1, "filled": 2, "cancelled": 2, "expired": 2}
USDC = Decimal(10) ** 6  # atomic units per USDC
TAKER_PPM, MAKER_PPM = 400, 100  # fee tier 0 (markets.example.json)
SNAPSHOT_EVERY = 300  # EXCHANGE_SNAPSHOT_EVERY of the kill test


# ----------------------------------------------------------------------------- servers


class Servers:
    """Servers on fresh databases of one backend; stopped (then the database dropped) at the
    end of the test, whatever state they are in."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self._stack = contextlib.ExitStack()
        self._n = itertools.count(1)

    def make(self, extra_env: dict[str, str] | None = None) -> ServerProcess:
        root = self.tmp / f"server-{next(self._n)}"
        root.mkdir()
        database = _database(self.kind, root)
        url = next(database)
        self._stack.callback(database.close)  # runs the generator's cleanup (DROP DATABASE)
        server = ServerProcess(url, root / "data", extra_env)
        self._stack.callback(server.stop)  # LIFO: stopped before its database is dropped
        server.migrate()
        server.start()
        return server

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(params=BACKENDS)
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Servers]:
    made = Servers(request.param, tmp_path)
    try:
        yield made
    finally:
        made.close()


class Db:
    """Direct access to a (stopped) server's database, to corrupt it. `$1`-style params."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)

    async def run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.url.get_backend_name() == "sqlite":
            assert self.url.database is not None
            conn = sqlite3.connect(self.url.database)
            try:
                rows = conn.execute(re.sub(r"\$(\d+)", r"?\1", sql), args).fetchall()
                conn.commit()
            finally:
                conn.close()
            return [tuple(r) for r in rows]
        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        pg = await asyncpg.connect(dsn, timeout=10)
        try:
            return [tuple(r) for r in await pg.fetch(sql, *args)]
        finally:
            await pg.close()


# ----------------------------------------------------------------------------- helpers


def admin_client(server: ServerProcess) -> AsyncExchangeClient:
    return AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET)


def client_of(server: ServerProcess, info: dict[str, Any]) -> AsyncExchangeClient:
    return AsyncExchangeClient(server.base_url, info["api_key"], info["api_secret"])


async def audit_of(admin: AsyncExchangeClient) -> dict[str, Any]:
    audit: dict[str, Any] = await admin.request("GET", "/v1/admin/audit")
    return audit


def check_audit(audit: dict[str, Any]) -> None:
    """Sound engine: no broken invariant, every asset conserved exactly, clean recovery."""
    assert audit["invariants"] == []
    assert set(audit["totals"]) >= {"USDC", "BTC"}
    for asset, t in audit["totals"].items():
        assert set(t) == {"users", "system", "external"}, asset
        total = Decimal(t["users"]) + Decimal(t["system"]) + Decimal(t["external"])
        assert total == 0, (asset, t)
    recovery = audit["recovery"]
    assert set(recovery) >= {"snapshot_seq", "replayed", "fallbacks"}
    assert recovery.get("projection_mismatches", []) == []
    seqs = [s["seq"] for s in audit["snapshots"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    assert all(s <= audit["seq"] for s in seqs)


async def call(
    client: AsyncExchangeClient, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """A signed request with the client's own preparation; (status, decoded body)."""
    url, headers, content = client._prepare(method, path, body)
    response = await client.http.request(method, url, headers=headers, content=content)
    return response.status_code, orjson.loads(response.content) if response.content else None


async def all_pages(client: AsyncExchangeClient, path: str, key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await client.request("GET", path, params={"limit": 1000, "cursor": cursor})
        out.extend(page[key])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def atomic(amount: str | Decimal, scale: Decimal) -> int:
    value = Decimal(amount) * scale
    assert value == value.to_integral_value(), amount
    return int(value)


# ============================================================== 1. SIGKILL under load


# refusals the kill test's random traffic runs into legitimately (any other one is a bug)
EXPECTED_REFUSALS = frozenset(
    {"ORDER_NOT_LIVE", "AMEND_SIZE_NOT_ABOVE_FILLED", "NOTHING_TO_AMEND", "INSUFFICIENT_BALANCE"}
)


@dataclass
class Known:
    """What acknowledgements say about one order. Its owner's requests are sequential, so
    `order` (the owner's last acknowledged view) fixes price and size, unless a later
    request about it died unacknowledged (`maybe` then lists the other possible ones)."""

    order: dict[str, Any]
    ended: bool = False  # a later refusal (ORDER_NOT_LIVE) said it is no longer live
    maybe: list[tuple[Decimal, Decimal]] = field(default_factory=list)


@dataclass
class Load:
    accounts: list[dict[str, Any]]
    known: dict[str, Known] = field(default_factory=dict)
    live: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    fills: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deposits: dict[str, tuple[str, str, str, dict[str, Any]]] = field(default_factory=dict)
    unknown_deposits: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    unknown_places: list[tuple[int, str]] = field(default_factory=list)
    max_seq: int = 0
    acks: int = 0
    unknown: int = 0
    refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    server_errors: list[str] = field(default_factory=list)
    coids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    deposit_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def ack_order(self, w: int, result: dict[str, Any]) -> None:
        order = result["order"]
        oid = order["order_id"]
        account = self.accounts[w]["account_id"]
        for f in result["fills"]:
            assert f["order_id"] == oid
            self.fills[(account, f["trade_id"])] = f
        known = self.known.get(oid)
        if known is None:
            self.known[oid] = Known(order)
        else:
            known.order, known.maybe = order, []
        if order["status"] in LIVE:
            if oid not in self.live[w]:
                self.live[w].append(oid)
        elif oid in self.live[w]:
            self.live[w].remove(oid)
        self.acks += 1

    def refused(self, w: int, oid: str | None, err: ApiError) -> None:
        if err.status >= 500:
            self.server_errors.append(f"{err.status} {err.code}: {err.message}")
        self.refusals[err.code] += 1
        if oid is not None and err.code == "ORDER_NOT_LIVE":
            self.known[oid].ended = True
            self.live[w].remove(oid)
        if err.code not in EXPECTED_REFUSALS:  # e.g. ORDER_NOT_FOUND: every id used is ours
            self.server_errors.append(f"{err.status} {err.code} ({oid}): {err.message}")


async def trader(load: Load, w: int, client: AsyncExchangeClient, rng: random.Random) -> None:
    """Place, amend and cancel as fast as acknowledgements come, until the server dies."""
    while True:
        live = load.live[w]
        roll = rng.random()
        if live and (roll < 0.2 or len(live) > 25):
            oid = rng.choice(live)
            try:
                result = await client.cancel_order(oid)
            except httpx.TransportError:
                load.unknown += 1
                return
            except ApiError as err:
                load.refused(w, oid, err)
                continue
            assert result["order"]["status"] == "cancelled", result
            load.ack_order(w, {"order": result["order"], "fills": []})
        elif live and roll < 0.4:
            oid = rng.choice(live)
            current = load.known[oid].order
            price = str(rng.randint(49_950, 50_050)) if rng.random() < 0.6 else None
            size = str(rng.randint(1, 50) * Decimal("0.0001")) if rng.random() < 0.6 else None
            if price is None and size is None:
                size = str(Decimal(current["size"]) + Decimal("0.0001"))
            try:
                result = await client.amend_order(oid, price=price, size=size)
            except httpx.TransportError:
                load.known[oid].maybe.append(
                    (Decimal(price or current["price"]), Decimal(size or current["size"]))
                )
                load.unknown += 1
                return
            except ApiError as err:
                load.refused(w, oid, err)
                continue
            assert result["order"]["order_id"] == oid
            if price is not None:
                assert Decimal(result["order"]["price"]) == Decimal(price)
            if size is not None:
                assert Decimal(result["order"]["size"]) == Decimal(size)
            load.ack_order(w, result)
        else:
            coid = f"w{w}-{next(load.coids)}"
            body = {
                "market": MARKET,
                "side": rng.choice(("buy", "sell")),
                "type": "limit",
                "price": str(rng.randint(49_950, 50_050)),
                "size": str(rng.randint(1, 50) * Decimal("0.0001")),
                "time_in_force": "ioc" if rng.random() < 0.25 else "gtc",
                "client_order_id": coid,
            }
            try:
                result = await client.place_order(**body)
            except httpx.TransportError:
                load.unknown_places.append((w, coid))
                load.unknown += 1
                return
            except ApiError as err:
                load.refused(w, None, err)
                continue
            order = result["order"]
            assert (order["client_order_id"], order["side"], order["time_in_force"]) == (
                coid,
                body["side"],
                body["time_in_force"],
            )
            load.ack_order(w, result)


async def depositor(load: Load, admin: AsyncExchangeClient, rng: random.Random) -> None:
    """Deposits (and retries of acknowledged ones) through the operator API; after each,
    the audit's committed `seq` is the highest seq known to be durable."""
    while True:
        if load.deposits and rng.random() < 0.2:
            did = rng.choice(sorted(load.deposits))
            account, asset, amount, entry = load.deposits[did]
            try:
                again = await admin.deposit(account, asset, amount, did)
            except httpx.TransportError:
                load.unknown += 1
                return
            assert again == {"entry": entry, "replayed": True}
        else:
            account = rng.choice(load.accounts)["account_id"]
            asset = rng.choice(("USDC", "BTC"))
            amount = str(rng.randint(1, 1000)) if asset == "USDC" else f"0.0{rng.randint(1, 9)}"
            did = f"dep-{next(load.deposit_ids)}"
            try:
                result = await admin.deposit(account, asset, amount, did)
            except httpx.TransportError:
                load.unknown_deposits[did] = (account, asset, amount)
                load.unknown += 1
                return
            assert result["replayed"] is False
            entry = result["entry"]
            assert (entry["account_id"], entry["asset"], entry["reason"]) == (
                account,
                asset,
                "deposit",
            )
            assert Decimal(entry["amount"]) == Decimal(amount)
            load.deposits[did] = (account, asset, amount, entry)
        if rng.random() < 0.3:  # the audit hashes the whole state: not after every deposit
            try:
                load.max_seq = max(load.max_seq, (await audit_of(admin))["seq"])
            except httpx.TransportError:
                return
        await asyncio.sleep(0.02)


def buy_hold(order: dict[str, Any], fills: list[dict[str, Any]]) -> int:
    """docs/orders.md "Holds": notional(limit, remaining) + fee reserve, in atomic USDC."""
    price = Decimal(order["price"])
    remaining = Decimal(order["size"]) - Decimal(order["filled"])
    rest = atomic(price * remaining, USDC)
    basis = sum(
        atomic(Decimal(f["price"]) * Decimal(f["size"]), USDC)
        * (TAKER_PPM if f["liquidity"] == "taker" else MAKER_PPM)
        for f in fills
    )
    paid = sum(atomic(f["fee"], USDC) for f in fills)
    reserve = -(-(basis + rest * max(TAKER_PPM, MAKER_PPM)) // 10**6)  # ceil
    return rest + reserve - paid


def check_order(known: Known, actual: dict[str, Any]) -> None:
    ack = known.order
    where = (ack, actual, known.maybe, known.ended)
    for key in ("order_id", "client_order_id", "market", "side", "type", "time_in_force"):
        assert actual[key] == ack[key], where
    assert actual["created_ts"] == ack["created_ts"], where
    assert RANK[actual["status"]] >= RANK[ack["status"]], where
    if ack["status"] in TERMINAL:
        assert actual == ack, where  # an ended order never changes again
    if known.ended:
        assert actual["status"] in TERMINAL, where
    assert Decimal(actual["filled"]) >= Decimal(ack["filled"]), where
    shapes = [(Decimal(ack["price"]), Decimal(ack["size"])), *known.maybe]
    assert (Decimal(actual["price"]), Decimal(actual["size"])) in shapes, where
    if not known.maybe and (actual["status"], actual["filled"]) == (ack["status"], ack["filled"]):
        assert actual == ack, where  # nothing happened to it since the acknowledgement


async def verify(server: ServerProcess, load: Load, rng: random.Random) -> dict[str, Any]:
    """Everything acknowledged is there, and every view agrees with every other one."""
    async with admin_client(server) as admin:
        health = await admin.health()
        audit = await audit_of(admin)
        assert health["status"] == "ok"
        assert health["seq"] == audit["seq"]
        assert audit["seq"] >= load.max_seq
        check_audit(audit)
        recovery = audit["recovery"]
        newest = audit["snapshots"][0]["seq"] if audit["snapshots"] else None
        # recovery used the newest snapshot of its time; a long replay is snapshotted at once
        # after opening, so a newer one (at the recovered seq) may already be listed
        used = recovery["snapshot_seq"]
        assert used is None or (newest is not None and used <= newest), audit
        assert newest is None or newest in (used, audit["seq"]), audit
        assert recovery["fallbacks"] == []
        assert recovery["replayed"] == audit["seq"] - (used or 0), audit

        # the client's recovery procedure: retry what was not acknowledged, same ids
        for did, (account, asset, amount) in sorted(load.unknown_deposits.items()):
            status, body = await call(
                admin,
                "POST",
                "/v1/admin/deposits",
                {"account_id": account, "asset": asset, "amount": amount, "deposit_id": did},
            )
            assert (status, body["replayed"]) in ((201, False), (200, True)), body
            load.deposits[did] = (account, asset, amount, body["entry"])
        load.unknown_deposits.clear()

    views: list[dict[str, Any]] = []
    for info in load.accounts:
        async with client_of(server, info) as c:
            orders, fills, ledger, account = await asyncio.gather(
                all_pages(c, "/v1/orders", "orders"),
                all_pages(c, "/v1/fills", "fills"),
                all_pages(c, "/v1/ledger", "entries"),
                c.account(),
            )
            for w, coid in load.unknown_places:  # unacknowledged: there or not, never twice
                if load.accounts[w] is info:
                    n = sum(1 for o in orders if o["client_order_id"] == coid)
                    assert n in (0, 1), coid
            sample = rng.sample(orders, min(10, len(orders)))
            for o in sample:
                assert (await c.get_order(o["order_id"]))["order"] == o
            views.append({"orders": orders, "fills": fills, "ledger": ledger, "acct": account})
    load.unknown_places.clear()

    by_id = {o["order_id"]: o for v in views for o in v["orders"]}
    assert len(by_id) == sum(len(v["orders"]) for v in views)
    for oid, known in load.known.items():
        assert oid in by_id, known.order
        check_order(known, by_id[oid])

    fills = {
        (info["account_id"], f["trade_id"]): f
        for info, v in zip(load.accounts, views, strict=True)
        for f in v["fills"]
    }
    for key, f in load.fills.items():
        assert fills.get(key) == f, key

    entries = {(e["account_id"], e["entry_id"]): e for v in views for e in v["ledger"]}
    for did, (account, asset, amount, entry) in load.deposits.items():
        assert entries.get((account, entry["entry_id"])) == entry, did
        assert (entry["account_id"], entry["asset"], entry["ref"]) == (
            account,
            asset,
            f"deposit:{did}",
        )
        assert Decimal(entry["amount"]) == Decimal(amount)

    book_levels: dict[str, dict[Decimal, Decimal]] = {"buy": {}, "sell": {}}
    deposited: dict[str, Decimal] = defaultdict(Decimal)
    users: dict[str, Decimal] = defaultdict(Decimal)
    fees = Decimal(0)
    for info, v in zip(load.accounts, views, strict=True):
        order_fills: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for f in v["fills"]:
            order_fills[f["order_id"]].append(f)
            fees += Decimal(f["fee"])
        holds = {"USDC": 0, "BTC": 0}
        for o in v["orders"]:
            mine = sorted(order_fills[o["order_id"]], key=lambda f: int(f["trade_id"]))
            filled = sum((Decimal(f["size"]) for f in mine), Decimal(0))
            assert Decimal(o["filled"]) == filled, (o, mine)
            if filled:
                spent = sum(Decimal(f["price"]) * Decimal(f["size"]) for f in mine)
                avg = (spent / filled).quantize(Decimal("0.000001"), ROUND_HALF_EVEN)
                assert Decimal(o["avg_fill_price"]) == avg, o
            else:
                assert o["avg_fill_price"] is None, o
            if o["status"] in LIVE:
                remaining = Decimal(o["size"]) - filled
                assert Decimal(o["remaining"]) == remaining > 0, o
                level = book_levels[o["side"]]
                level[Decimal(o["price"])] = level.get(Decimal(o["price"]), Decimal(0)) + remaining
                if o["side"] == "buy":
                    holds["USDC"] += buy_hold(o, mine)
                else:
                    holds["BTC"] += atomic(remaining, Decimal(10) ** 8)
            else:
                assert Decimal(o["remaining"]) == 0, o
        balances = {b["asset"]: b for b in v["acct"]["balances"]}
        for asset, scale in (("USDC", USDC), ("BTC", Decimal(10) ** 8)):
            b = balances[asset]
            assert atomic(b["hold"], scale) == holds[asset], (info["account_id"], asset, b)
            assert Decimal(b["available"]) == Decimal(b["balance"]) - Decimal(b["hold"])
            mine_entries = [e for e in v["ledger"] if e["asset"] == asset]
            assert sum(Decimal(e["amount"]) for e in mine_entries) == Decimal(b["balance"])
            assert Decimal(mine_entries[0]["balance_after"]) == Decimal(b["balance"])
            users[asset] += Decimal(b["balance"])
        for e in v["ledger"]:
            if e["reason"] == "deposit":
                deposited[e["asset"]] += Decimal(e["amount"])

    async with AsyncExchangeClient(server.base_url) as public:
        book = await public.book(MARKET, depth=1000)
    bids = {Decimal(p): Decimal(s) for p, s in book["bids"]}
    asks = {Decimal(p): Decimal(s) for p, s in book["asks"]}
    assert (bids, asks) == (book_levels["buy"], book_levels["sell"])
    if bids and asks:
        assert max(bids) < min(asks), "crossed book"

    async with admin_client(server) as admin:
        final = await audit_of(admin)
    check_audit(final)
    for asset in ("USDC", "BTC"):
        t = final["totals"][asset]
        assert Decimal(t["users"]) == users[asset], asset
        assert Decimal(t["external"]) == -deposited[asset], asset
    assert Decimal(final["totals"]["USDC"]["system"]) == fees
    assert Decimal(final["totals"]["BTC"]["system"]) == 0

    # what was observed after the restart is the new committed baseline
    load.known = {oid: Known(o) for oid, o in by_id.items()}
    for w, v in enumerate(views):
        load.live[w] = [o["order_id"] for o in reversed(v["orders"]) if o["status"] in LIVE]
    load.max_seq = max(load.max_seq, final["seq"])
    return final


@pytest.mark.slow
async def test_kill_9_under_load(servers: Servers) -> None:
    started = time.monotonic()
    rng = random.Random(20260321)
    server = servers.make({"EXCHANGE_SNAPSHOT_EVERY": str(SNAPSHOT_EVERY)})
    async with admin_client(server) as admin:
        accounts = [await admin.create_account(f"crash-{i}") for i in range(4)]
        for info in accounts:
            await admin.deposit(info["account_id"], "USDC", "1000000", f"seed-{info['account_id']}")
            await admin.deposit(info["account_id"], "BTC", "100", f"seed-b-{info['account_id']}")
        load = Load(accounts)

        # warm-up past the first snapshot, so every restart below starts from one
        gate = asyncio.Semaphore(8)

        async def warm(i: int) -> None:
            account, did = accounts[i % 4]["account_id"], f"warm-{i}"
            async with gate:
                result = await admin.deposit(account, "USDC", "1", did)
            load.deposits[did] = (account, "USDC", "1", result["entry"])

        await asyncio.gather(*(warm(i) for i in range(SNAPSHOT_EVERY)))
        deadline = time.monotonic() + 20
        while not (await audit_of(admin))["snapshots"]:
            assert time.monotonic() < deadline, "no snapshot after the warm-up"
            await asyncio.sleep(0.1)

    recoveries: list[dict[str, Any]] = []
    kills = 6
    for _ in range(kills):
        clients = [client_of(server, info) for info in accounts]
        admin = admin_client(server)
        try:
            tasks = [
                asyncio.create_task(trader(load, w, c, random.Random(rng.random())))
                for w, c in enumerate(clients)
            ]
            tasks.append(asyncio.create_task(depositor(load, admin, random.Random(rng.random()))))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await asyncio.to_thread(server.kill)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            for c in [*clients, admin]:
                await c.aclose()
        await asyncio.to_thread(server.start)
        audit = await verify(server, load, rng)
        recoveries.append({"seq": audit["seq"], **audit["recovery"]})

    summary = [(r["seq"], r["snapshot_seq"], r["replayed"]) for r in recoveries]
    print(f"acks={load.acks} unknown={load.unknown} (seq, snapshot, replayed)={summary}")
    assert load.server_errors == []
    assert load.acks > 200, load.acks
    assert load.unknown >= kills  # every kill cut at least one request short
    for r in recoveries:
        assert r["snapshot_seq"] is not None, summary
        # "a snapshot every N commands": at most N behind, plus one lost while being written
        assert r["replayed"] < 2 * SNAPSHOT_EVERY, summary
    assert time.monotonic() - started < 120


# ============================================================ 2. corrupt snapshots


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def tamper_content(data: bytes) -> tuple[bytes, int]:
    """A well-formed snapshot (valid zlib, JSON and CRC32) with one number changed: only
    the state hash can tell."""
    snap = orjson.loads(zlib.decompress(data))

    def bump(node: Any) -> bool:
        if isinstance(node, dict):
            return any(bump(node[k]) for k in sorted(node) if k not in ("version", "last_seq"))
        if isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, int) and not isinstance(item, bool) and item >= 10**6:
                    node[i] = item + 1
                    return True
                if bump(item):
                    return True
        return False

    assert bump(snap.get("accounts", snap))
    out = zlib.compress(orjson.dumps(snap))
    return out, zlib.crc32(out)


async def test_corrupt_snapshot_falls_back(servers: Servers) -> None:
    server = servers.make({"EXCHANGE_SNAPSHOT_EVERY": "50"})
    db = Db(server.database_url)
    hashes: dict[int, str] = {}  # every committed seq seen -> its state hash

    async with admin_client(server) as admin:

        async def observe() -> dict[str, Any]:
            audit = await audit_of(admin)
            assert hashes.setdefault(audit["seq"], audit["state_hash"]) == audit["state_hash"]
            return audit

        maker = await admin.create_account("snap-maker")
        taker = await admin.create_account("snap-taker")
        await observe()
        await admin.deposit(maker["account_id"], "BTC", "10", "snap-d1")
        await observe()
        await admin.deposit(taker["account_id"], "USDC", "1000000", "snap-d2")
        await observe()
        async with client_of(server, maker) as m, client_of(server, taker) as t:
            for i in range(100):
                placed = await m.place_order(
                    market=MARKET,
                    side="sell",
                    price=str(50_000 + i),
                    size="0.01",
                    client_order_id=f"ask-{i}",
                )
                await observe()
                if i % 3 == 0:
                    await t.place_order(
                        market=MARKET,
                        side="buy",
                        price=str(50_000 + i),
                        size="0.004",
                        time_in_force="ioc",
                    )
                elif i % 3 == 1:
                    await m.cancel_order(placed["order"]["order_id"])
                else:
                    await m.amend_order(placed["order"]["order_id"], size="0.02")
                await observe()
        # A snapshot waits SNAPSHOT_DUTY times the last one's cost, so on a slow or busy
        # machine the 204 commands above could leave fewer than three, and only a later
        # command would take the next: keep adding commands (slowly: the newest
        # snapshot must stay within 50 of the head) until the server has taken them.
        deadline = time.monotonic() + 30
        n = 0
        while True:
            audit = await observe()
            snaps = audit["snapshots"]
            if len(snaps) == 3 and snaps[0]["seq"] > audit["seq"] - 50:
                break
            assert time.monotonic() < deadline, snaps
            await asyncio.sleep(0.1)
            n += 1
            await admin.deposit(maker["account_id"], "USDC", "1", f"snap-wait-{n}")
        check_audit(audit)
    assert audit["seq"] >= 204
    seq0, hash0 = audit["seq"], audit["state_hash"]
    snap_seqs = [s["seq"] for s in snaps]
    for s in snaps:  # each snapshot is the state at its seq
        assert s["state_hash"] == hashes[s["seq"]], s

    async def restart() -> dict[str, Any]:
        server.start()
        async with admin_client(server) as admin:
            audit = await audit_of(admin)
            health = await admin.health()
        assert (audit["seq"], audit["state_hash"]) == (seq0, hash0)
        assert health["seq"] == seq0
        check_audit(audit)
        return audit

    server.stop()
    # no new snapshots while the stored ones are corrupted one by one (a long replay is
    # otherwise snapshotted right after opening, which would change the list under test)
    server.env["EXCHANGE_SNAPSHOT_EVERY"] = "1000000"
    rows = await db.run("SELECT seq, data FROM snapshots ORDER BY seq DESC")
    assert [r[0] for r in rows] == snap_seqs
    await db.run("UPDATE snapshots SET data = $1 WHERE seq = $2", flip(rows[0][1]), snap_seqs[0])
    audit = await restart()
    recovery = audit["recovery"]
    assert [f["seq"] for f in recovery["fallbacks"]] == [snap_seqs[0]]
    assert all(isinstance(f["reason"], str) and f["reason"] for f in recovery["fallbacks"])
    assert recovery["snapshot_seq"] == snap_seqs[1]
    assert recovery["replayed"] == seq0 - snap_seqs[1]

    # a well-formed snapshot with a valid checksum but altered content: the state hash
    server.stop()
    data, checksum = tamper_content(rows[1][1])
    await db.run(
        "UPDATE snapshots SET data = $1, checksum = $2 WHERE seq = $3", data, checksum, snap_seqs[1]
    )
    audit = await restart()
    recovery = audit["recovery"]
    assert [f["seq"] for f in recovery["fallbacks"]] == snap_seqs[:2]
    assert recovery["snapshot_seq"] == snap_seqs[2]
    assert recovery["replayed"] == seq0 - snap_seqs[2]

    # every snapshot unusable (truncated, garbage, empty): a full replay, the same state
    server.stop()
    rows = await db.run("SELECT seq, data FROM snapshots ORDER BY seq DESC")
    assert [r[0] for r in rows] == snap_seqs
    for (seq, data), bad in zip(
        rows,
        (lambda d: d[: len(d) // 2], lambda d: b"not a snapshot", lambda d: b""),
        strict=True,
    ):
        await db.run("UPDATE snapshots SET data = $1 WHERE seq = $2", bad(data), seq)
    server.env["EXCHANGE_SNAPSHOT_EVERY"] = "50"  # from here on the server snapshots again
    audit = await restart()
    recovery = audit["recovery"]
    assert [f["seq"] for f in recovery["fallbacks"]] == snap_seqs
    assert recovery["snapshot_seq"] is None
    assert recovery["replayed"] == seq0

    # the server goes on: new snapshots are taken and the next restart uses the newest
    async with admin_client(server) as admin:
        for i in range(60):
            await admin.deposit(maker["account_id"], "USDC", "1", f"after-{i}")
        # "every 50 commands", but never sooner than SNAPSHOT_DUTY times the cost of the
        # snapshot taken at opening: on a slow or busy machine the 60 deposits can all
        # come before that, and only a later command takes the snapshot. Keep adding some.
        deadline = time.monotonic() + 30
        n = 0
        while True:
            audit = await audit_of(admin)
            if audit["snapshots"] and audit["snapshots"][0]["seq"] > seq0 + 10:
                break
            assert time.monotonic() < deadline, audit["snapshots"]
            await asyncio.sleep(0.1)
            n += 1
            await admin.deposit(maker["account_id"], "USDC", "1", f"after-wait-{n}")
    assert audit["seq"] == seq0 + 60 + n
    seq0, hash0 = audit["seq"], audit["state_hash"]
    newest = audit["snapshots"][0]["seq"]
    server.kill()
    audit = await restart()
    assert audit["recovery"]["snapshot_seq"] == newest
    assert audit["recovery"]["fallbacks"] == []
    assert audit["recovery"]["replayed"] == seq0 - newest


async def test_snapshot_cadence_counts_commands_across_restarts(servers: Servers) -> None:
    """ "A snapshot every N commands" counts the commands since the last snapshot, also those
    replayed at start-up: a server that crashes every N-1 commands must still take them."""
    server = servers.make({"EXCHANGE_SNAPSHOT_EVERY": "50"})
    async with admin_client(server) as admin:
        info = await admin.create_account("cadence")
        for i in range(39):
            await admin.deposit(info["account_id"], "USDC", "1", f"cadence-{i}")
        audit = await audit_of(admin)
    assert (audit["seq"], audit["snapshots"]) == (40, [])
    server.kill()
    server.start()
    async with admin_client(server) as admin:
        audit = await audit_of(admin)
        assert audit["recovery"]["snapshot_seq"] is None
        assert audit["recovery"]["replayed"] == 40
        for i in range(39, 59):
            await admin.deposit(info["account_id"], "USDC", "1", f"cadence-{i}")
        deadline = time.monotonic() + 10
        while not (audit := await audit_of(admin))["snapshots"]:
            assert time.monotonic() < deadline, f"no snapshot at seq {audit['seq']}"
            await asyncio.sleep(0.1)
    assert audit["seq"] == 60
    assert [s["seq"] for s in audit["snapshots"]] == [50]
    server.kill()
    server.start()
    async with admin_client(server) as admin:
        audit = await audit_of(admin)
    check_audit(audit)
    assert audit["recovery"]["snapshot_seq"] == 50
    assert audit["recovery"]["replayed"] == 10


# ============================================================= 3. corrupt journal


async def journal_workload(server: ServerProcess) -> tuple[int, str]:
    """~40 commands of every common kind; returns the committed (seq, state hash)."""
    async with admin_client(server) as admin:
        a = await admin.create_account("j-a")
        b = await admin.create_account("j-b")
        for i in range(10):
            await admin.deposit(a["account_id"], "USDC", str(1000 + i), f"j-usdc-{i}")
            await admin.deposit(b["account_id"], "BTC", "0.1", f"j-btc-{i}")
        async with client_of(server, a) as ca, client_of(server, b) as cb:
            for i in range(5):
                await cb.place_order(market=MARKET, side="sell", price=str(50_000 + i), size="0.01")
                await ca.place_order(
                    market=MARKET,
                    side="buy",
                    price=str(50_000 + i),
                    size="0.005",
                    time_in_force="ioc",
                )
                await ca.place_order(market=MARKET, side="buy", price=str(40_000 + i), size="0.01")
        audit = await audit_of(admin)
    check_audit(audit)
    assert audit["seq"] == 37
    return audit["seq"], audit["state_hash"]


def refused_to_start(server: ServerProcess, seq: int) -> None:
    """The server does not open: it exits non-zero, or stays up answering health 503 with
    the reason; either way what it says and logs names the seq."""
    names_seq = re.compile(rf"seq\W{{1,3}}{seq}(?!\d)")
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=3)  # never healthy; a slow start is told apart below
    proc = server.proc
    assert proc is not None
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        try:
            response = httpx.get(server.base_url + "/v1/health", timeout=2)
        except httpx.TransportError:
            response = None
        if response is not None:
            body = response.json()
            assert response.status_code == 503, body
            if body["status"] not in ("starting", "recovering"):  # it gave up
                assert body["status"] == "failed", body
                assert names_seq.search(body["error"]), body
                break
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    else:
        assert proc.returncode != 0
    log = server.log()
    assert names_seq.search(log), (str(info.value), log)
    server.stop()


async def test_corrupt_journal_refuses_to_start(servers: Servers) -> None:
    # a row's command altered (still valid JSON, still decodable): only the checksum can tell
    server = servers.make()
    db = Db(server.database_url)
    seq0, hash0 = await journal_workload(server)
    server.kill()
    assert await db.run("SELECT count(*) FROM snapshots") == [(0,)]
    rows = await db.run("SELECT seq, command FROM journal ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, seq0 + 1))
    seq, original = next(r for r in rows if r[0] >= 12 and '"Deposit"' in r[1])
    command = json.loads(original)
    command["amount"] += 1
    await db.run("UPDATE journal SET command = $1 WHERE seq = $2", json.dumps(command), seq)
    refused_to_start(server, seq)

    # nothing was touched by the refusal: with the row repaired it starts as it was
    await db.run("UPDATE journal SET command = $1 WHERE seq = $2", original, seq)
    server.start()
    async with admin_client(server) as admin:
        audit = await audit_of(admin)
    assert (audit["seq"], audit["state_hash"]) == (seq0, hash0)
    check_audit(audit)
    server.stop()

    # a row missing in the middle (a gap) in a fresh server
    server = servers.make()
    db = Db(server.database_url)
    seq0, _ = await journal_workload(server)
    server.kill()
    await db.run("DELETE FROM journal WHERE seq = $1", 23)
    refused_to_start(server, 23)


# ============================================ 4. idempotent order retry across a crash


async def test_order_retry_is_idempotent_across_restart(servers: Servers) -> None:
    server = servers.make()
    async with admin_client(server) as admin:
        buyer = await admin.create_account("retry-buyer")
        seller = await admin.create_account("retry-seller")
        await admin.deposit(buyer["account_id"], "USDC", "100000", "r-1")
        await admin.deposit(seller["account_id"], "BTC", "1", "r-2")
    rest = {
        "market": MARKET,
        "side": "buy",
        "type": "limit",
        "price": "49000",
        "size": "0.1",
        "time_in_force": "gtc",
        "client_order_id": "X",
    }
    # crosses two asks, then rests: a retry must return its fills too
    partial = {
        "market": MARKET,
        "side": "buy",
        "type": "limit",
        "price": "50001",
        "size": "0.3",
        "time_in_force": "gtc",
        "client_order_id": "P",
    }

    async def state(c: AsyncExchangeClient) -> tuple[Any, ...]:
        async with AsyncExchangeClient(server.base_url) as public:
            book = await public.book(MARKET)
        return (await c.get_orders(), (await c.account())["balances"], book["bids"], book["asks"])

    async with client_of(server, seller) as s:
        await s.place_order(market=MARKET, side="sell", price="50000", size="0.1")
        await s.place_order(market=MARKET, side="sell", price="50001", size="0.05")

    async with client_of(server, buyer) as c:
        status, first = await call(c, "POST", "/v1/orders", rest)
        assert status == 201, first
        assert first["order"]["status"] == "open" and first["fills"] == []
        assert "replayed" not in first or first["replayed"] is False
        status, first_p = await call(c, "POST", "/v1/orders", partial)
        assert status == 201, first_p
        assert first_p["order"]["status"] == "partially_filled"
        assert [(f["price"], f["size"]) for f in first_p["fills"]] == [
            ("50000", "0.1"),
            ("50001", "0.05"),
        ]
        before = await state(c)
        for body, original in ((rest, first), (partial, first_p)):
            status, again = await call(c, "POST", "/v1/orders", body)
            assert (status, again) == (
                200,
                {"order": original["order"], "fills": original["fills"], "replayed": True},
            )
        assert await state(c) == before

    server.kill()
    server.start()

    async with client_of(server, buyer) as c:
        assert await state(c) == before
        for body, original in ((rest, first), (partial, first_p)):
            status, again = await call(c, "POST", "/v1/orders", body)
            assert (status, again) == (
                200,
                {"order": original["order"], "fills": original["fills"], "replayed": True},
            )
        assert await state(c) == before

        for change in (
            {"price": "49000.1"},
            {"size": "0.2"},
            {"side": "sell"},
            {"time_in_force": "ioc"},
            {"time_in_force": "post_only"},
        ):
            status, refused = await call(c, "POST", "/v1/orders", {**rest, **change})
            assert status == 409, (change, refused)
            assert refused["error"]["code"] == "DUPLICATE_CLIENT_ORDER_ID"
            assert refused["error"]["order_id"] == first["order"]["order_id"]
        assert await state(c) == before

        # once the order has ended its client id is free again: a new order, not a replay
        await c.cancel_order(first["order"]["order_id"])
        status, fresh = await call(c, "POST", "/v1/orders", rest)
        assert status == 201, fresh
        assert fresh["order"]["order_id"] != first["order"]["order_id"]
        assert fresh["order"]["status"] == "open"
        status, again = await call(c, "POST", "/v1/orders", rest)  # the live one, not the old
        assert (status, again) == (200, {"order": fresh["order"], "fills": [], "replayed": True})

        # the same new request sent five times at once: placed once, the others are replays
        burst = {**rest, "client_order_id": "Y", "price": "48000"}
        answers = await asyncio.gather(*(call(c, "POST", "/v1/orders", burst) for _ in range(5)))
        assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 201]
        placed = next(body for status, body in answers if status == 201)
        assert placed["order"]["status"] == "open"
        for status, body in answers:
            if status == 200:
                assert body == {"order": placed["order"], "fills": [], "replayed": True}
        open_ids = [o["order_id"] for o in (await c.get_orders(status="open"))["orders"]]
        newest_first = [placed["order"], fresh["order"], first_p["order"]]
        assert open_ids == [o["order_id"] for o in newest_first]
