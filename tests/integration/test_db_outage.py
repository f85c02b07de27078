"""The database drops every connection under load; the exchange recovers by itself.

DESIGN section 10: a command is acknowledged only after its journal row commits;
if a commit fails the sequencer stops taking commands (503), rebuilds the engine
from the journal once the database answers, and opens again. Here three
clients place (and sometimes cancel) orders against a real server on a
throwaway PostgreSQL database while the test kills every backend of that
database three times at random moments (`pg_terminate_backend`; each time
repeated every 50 ms until a journal commit has failed, so every outage really
interrupts a commit). Then:

* after each kill the service is healthy again within 15 s and acknowledges
  new orders, without the process being restarted (it never exits);
* every acknowledged order is there afterwards, in its acknowledged state or a
  later one (503s and connection errors are "unknown" outcomes: either is fine);
* the audit shows no broken invariant and every asset sums to zero
  (users + system + external);
* a restart (SIGTERM, start) recovers the same seq and the same state hash.

Reads (`GET /v1/orders/{id}`) run during the outages too; a read that meets a
killed connection must answer 503 `DATABASE_UNAVAILABLE`, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from exchange_client import ApiError, AsyncExchangeClient
from tests.integration.conftest import start_server
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

pytestmark = pytest.mark.postgres

UNKNOWN_CODES = {"COMMIT_FAILED", "NOT_ACCEPTING_COMMANDS"}
TERMINAL = {"filled", "cancelled", "expired", "rejected"}
KILLS = 3
RECOVER_WITHIN_S = 15.0
CLIENTS = 3
WORKERS = 4  # concurrent requests per client, so the sequencer is mostly mid-commit
MARKET = "BTC-USDC"


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[ServerProcess]:
    # frequent snapshots, so snapshot writes are among the things the kills interrupt
    env = {"EXCHANGE_SNAPSHOT_EVERY": "250", "EXCHANGE_SNAPSHOT_INTERVAL_S": "3"}
    yield from start_server("postgres", tmp_path, env)


@dataclass
class Client:
    name: str
    client: AsyncExchangeClient
    rng: random.Random
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id -> last ack
    unknown: int = 0  # 503 or connection error: the command may or may not have happened
    unexpected: list[str] = field(default_factory=list)  # anything else that went wrong
    read_errors: list[str] = field(default_factory=list)  # reads failing other than 503
    attempts: int = 0

    def live_ids(self) -> list[str]:
        return [oid for oid, o in self.acked.items() if o["status"] not in TERMINAL]


def _is_unknown(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPError):
        return True
    return isinstance(exc, ApiError) and exc.status == 503 and exc.code in UNKNOWN_CODES


async def client_loop(c: Client, worker: int, stop: asyncio.Event) -> None:
    """Place orders around 50,000 (both sides, so they trade), cancel some, read some."""
    n = 0
    while not stop.is_set():
        n += 1
        c.attempts += 1
        roll = c.rng.random()
        live = c.live_ids()
        try:
            if roll < 0.1 and live:
                oid = c.rng.choice(live)
                try:
                    reply = await c.client.cancel_order(oid)
                except ApiError as exc:
                    if exc.status >= 500:
                        raise
                    continue  # filled or cancelled in the meantime (STP, a taker)
                c.acked[oid] = reply["order"]
            elif roll < 0.15 and live:
                try:
                    await c.client.get_order(c.rng.choice(live))
                except (ApiError, httpx.HTTPError) as exc:
                    if not _is_unknown(exc) and not (
                        isinstance(exc, ApiError) and exc.status == 503
                    ):
                        c.read_errors.append(repr(exc)[:300])
                continue
            else:
                price = 50_000 + c.rng.randint(-10, 10)
                reply = await c.client.place_order(
                    market=MARKET,
                    side=c.rng.choice(("buy", "sell")),
                    type="limit",
                    price=str(price),
                    size=f"0.00{c.rng.randint(1, 5)}",
                    client_order_id=f"{c.name}-{worker}-{n}",
                )
                order = reply["order"]
                c.acked[order["order_id"]] = order
        except (ApiError, httpx.HTTPError) as exc:
            if _is_unknown(exc):
                c.unknown += 1
                await asyncio.sleep(0.05)
            else:
                c.unexpected.append(repr(exc)[:300])
                await asyncio.sleep(0.05)


def _acks(clients: list[Client]) -> int:
    return sum(len(c.acked) for c in clients)


async def terminate_backends(database_url: str) -> int:
    """Kill every connection to the throwaway database; returns how many were killed."""
    url = make_url(database_url)
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.database,
        )
    finally:
        await conn.close()
    return sum(1 for r in rows if r[0])


async def commit_failures(server: ServerProcess, http: httpx.AsyncClient) -> int:
    text = (await http.get(server.base_url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("exchange_commit_failures_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no exchange_commit_failures_total in /metrics")


async def kill(server: ServerProcess, http: httpx.AsyncClient) -> tuple[int, int]:
    """One outage: terminate every backend of the database, again every 50 ms (at most
    40 times) until a journal commit has failed, so the kill lands mid-commit and not only
    on idle pooled connections (which pre-ping would quietly replace).
    Returns (terminations, backends killed)."""
    failures = await commit_failures(server, http)
    rounds = killed = 0
    while rounds < 40:
        rounds += 1
        killed += await terminate_backends(server.database_url)
        await asyncio.sleep(0.05)
        with contextlib.suppress(httpx.HTTPError):
            if await commit_failures(server, http) > failures:
                break
    return rounds, killed


async def wait_recovered(
    server: ServerProcess, http: httpx.AsyncClient, clients: list[Client], acks_before: int
) -> float:
    """Seconds until /v1/health is 200 and a new order has been acknowledged."""
    started = time.monotonic()
    healthy = False
    while time.monotonic() - started < RECOVER_WITHIN_S:
        assert server.proc is not None and server.proc.poll() is None, (
            f"the server exited:\n{server.log()}"
        )
        with contextlib.suppress(httpx.HTTPError):
            healthy = (await http.get(server.base_url + "/v1/health")).status_code == 200
        if healthy and _acks(clients) > acks_before:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"not recovered within {RECOVER_WITHIN_S}s (healthy={healthy}, "
        f"acks {acks_before} -> {_acks(clients)}):\n{server.log()}"
    )


async def audit(server: ServerProcess) -> dict[str, Any]:
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        result: dict[str, Any] = await admin.request("GET", "/v1/admin/audit")
    return result


def check_audit(report: dict[str, Any]) -> None:
    assert report["invariants"] == [], report["invariants"]
    assert report["totals"], "the audit lists no assets"
    for asset, t in report["totals"].items():
        total = Decimal(t["users"]) + Decimal(t["system"]) + Decimal(t["external"])
        assert total == 0, f"{asset}: users + system + external = {total} ({t})"


def _later_or_same(acked: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Why `now` cannot follow the acknowledged `acked`, or None if it can."""
    for key in ("order_id", "client_order_id", "market", "side", "price", "size"):
        if acked[key] != now[key]:
            return f"{key}: acknowledged {acked[key]!r}, now {now[key]!r}"
    if Decimal(now["filled"]) < Decimal(acked["filled"]):
        return f"filled went back from {acked['filled']} to {now['filled']}"
    if acked["status"] in TERMINAL and (
        now["status"] != acked["status"] or now["filled"] != acked["filled"]
    ):
        return (
            f"acknowledged {acked['status']}/{acked['filled']}, now {now['status']}/{now['filled']}"
        )
    if acked["status"] == "partially_filled" and now["status"] == "open":
        return "partially_filled went back to open"
    return None


async def check_acknowledged(clients: list[Client]) -> int:
    """Every acknowledged order, read back one by one; returns how many were checked."""
    problems: list[str] = []
    sem = asyncio.Semaphore(8)

    async def one(c: Client, oid: str, acked: dict[str, Any]) -> None:
        async with sem:
            try:
                now = (await c.client.get_order(oid))["order"]
            except ApiError as exc:
                problems.append(f"{c.name} order {oid} ({acked['status']}): {exc}")
                return
        why = _later_or_same(acked, now)
        if why is not None:
            problems.append(f"{c.name} order {oid}: {why}")

    await asyncio.gather(*(one(c, oid, o) for c in clients for oid, o in c.acked.items()))
    assert not problems, f"{len(problems)} acknowledged orders lost or changed: {problems[:10]}"
    return _acks(clients)


async def test_connections_killed_under_load(pg_server: ServerProcess) -> None:
    server = pg_server
    rng = random.Random(20261121)
    clients: list[Client] = []
    async with AsyncExchangeClient(server.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
        for i in range(CLIENTS):
            info = await admin.create_account(f"outage-{i}")
            for asset, amount in (("USDC", "10000000"), ("BTC", "200")):
                await admin.deposit(info["account_id"], asset, amount, f"out-{i}-{asset}")
            api = AsyncExchangeClient(server.base_url, info["api_key"], info["api_secret"])
            clients.append(Client(f"c{i}", api, random.Random(rng.random())))

    stop = asyncio.Event()
    tasks = [asyncio.create_task(client_loop(c, w, stop)) for c in clients for w in range(WORKERS)]
    killed: list[tuple[int, int]] = []
    recovered_in: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            await asyncio.sleep(1.5)
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                acks = _acks(clients)
                killed.append(await kill(server, http))
                recovered_in.append(await wait_recovered(server, http, clients, acks))
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        assert server.proc is not None and server.proc.poll() is None, "the server exited"
        unexpected = [e for c in clients for e in c.unexpected]
        assert not unexpected, f"errors other than 503/connection: {unexpected[:10]}"
        assert all(n > 0 for _, n in killed), f"(terminations, backends killed): {killed}"
        assert _acks(clients) > 100, "the clients barely got anything acknowledged"
        async with httpx.AsyncClient(timeout=5) as http:
            failed = await commit_failures(server, http)
        print(
            f"\nkills (terminations, backends): {killed}, "
            f"recovered in {[round(s, 2) for s in recovered_in]} s; "
            f"attempts {sum(c.attempts for c in clients)}, acknowledged {_acks(clients)}, "
            f"unknown {sum(c.unknown for c in clients)}, "
            f"failed commits {failed}"
        )
        assert failed >= KILLS, f"only {failed} commits failed in {KILLS} outages"

        checked = await check_acknowledged(clients)
        before = await audit(server)
        check_audit(before)
        async with httpx.AsyncClient(timeout=5) as http:
            health = (await http.get(server.base_url + "/v1/health")).json()
        assert health["seq"] == before["seq"]

        server.stop()  # SIGTERM: a graceful shutdown
        server.start()
        after = await audit(server)
        check_audit(after)
        assert (after["seq"], after["state_hash"]) == (before["seq"], before["state_hash"])
        assert after["recovery"]["fallbacks"] == []
        assert await check_acknowledged(clients) == checked

        read_errors = [e for c in clients for e in c.read_errors]
        # a read that meets a killed connection answers 503 DATABASE_UNAVAILABLE, never 500
        assert read_errors == [], read_errors[:3]
    finally:
        for c in clients:
            await c.client.aclose()
