"""REST order entry: signed, durable `POST /v1/orders` against a trivial FastAPI peer.

    python loadtests/bench_rest.py [--seconds 10] [--runs 3] [--warmup 1.5]
                                   [--connections 16] [--takers 3]
                                   [--backend sqlite|postgres] [--postgres-url URL]
    python loadtests/bench_rest.py --seconds 1 --runs 1 --warmup 0.2     # smoke, ~10 s
    python loadtests/bench_rest.py --runs 1 --py-spy ours.svg   # + a py-spy flame graph

Two servers, each one uvicorn worker with the same settings (`app.cli serve` runs
`uvicorn.run(app, log_config=None, ws="websockets-sansio")`, so loop and HTTP parser
are uvicorn's "auto": uvloop and httptools when installed), pinned to CPU 0; the load
generator (this process) is pinned to CPU 1 (`taskset -c`, or `sched_setaffinity`
without the taskset binary; no pinning on a 1-CPU machine):

* **ours**: the real server, `python -m app.cli serve` on a free loopback port, after
  `python -m app.cli db upgrade`; SQLite (WAL, synchronous=FULL) in a temporary
  directory, or with `--backend postgres` a throwaway database `exch_bench_<hex>` on the
  server of `--postgres-url` (default EXCHANGE_TEST_POSTGRES_URL), dropped at the end.
  `EXCHANGE_RATE_LIMITS=off`, `EXCHANGE_LOG_LEVEL=warning`, everything else default
  (group commit up to 512 commands, a snapshot every 10,000 commands). A request is
  answered only after its command is committed to the journal.
* **peer**: `peer_app` below, a FastAPI app with one `POST /v1/orders` taking a pydantic
  model with the same fields as our body and returning a small JSON ack (201), no
  auth, no I/O: the floor cost of FastAPI + pydantic on this machine.
* **generator ceiling** (once, unless `--no-ceiling`): the same load against a bare
  asyncio protocol that answers every request with a canned 201, to show the generator
  is not what limits the other two rows.

Load: `--connections` (16) HTTP/1.1 keep-alive connections from a minimal asyncio client
(uvloop when installed), closed loop: each sends one request, reads the whole response
(Content-Length), checks it, sends the next. Every request is signed as API.md says
(HMAC-SHA256 over timestamp + method + path + body, current timestamp, a unique
client_order_id so every signature is new); the peer gets the same bytes. Connection i
signs as account i; all are created and funded through the admin routes first. Orders
are limit orders on BTC-USDC around a fixed mid of 50,000: the maker connections rest
1-3 lots 1-5 ticks off the mid (buy below, sell above, at random); `--takers` (3)
connections send IOC limits of 12 lots 6 ticks through the mid, alternating sides, which
trade with the resting orders and keep the book from growing. Every response must be a
201 whose JSON carries the order with our client_order_id (the peer: its ack); any other
answer or a broken connection is an error and the command exits 1.

Per run: `--warmup` seconds not counted, then `--seconds` measured: requests/s = requests
sent after the warm-up / time until the last of them was answered; latency from write
to the last byte of the response. Runs are interleaved (ours, peer, ours, peer, ...),
each on fresh connections; the table shows the median, min and max requests/s and the
latency percentiles of the median run. For ours, `/metrics` is read before and after
each run: commands per group commit, commit latency, engine apply time per command.
Markdown goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import hmac
import itertools
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any, Literal, cast

import orjson
from fastapi import FastAPI
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository root importable
    sys.path.insert(0, str(ROOT))

from tests.server import stop_process  # noqa: E402 - needs the path above

ADMIN_KEY = "bench-admin-key"
ADMIN_SECRET = "bench-admin-secret-0123456789abcdef"
MARKET = "BTC-USDC"
MID_TICKS = 500_000  # 50,000.0 with a tick of 0.1
TICK, LOT = "0.1", "0.0001"  # checked against GET /v1/markets at start
MAKER_LOTS = (1, 3)
MAKER_TICKS = (1, 5)
TAKER_LOTS = 12
TAKER_TICKS = 6
TARGET_RATIO = 0.7  # the issue: >= 0.7x the peer's requests/s ...
TARGET_P99_MS = 10.0  # ... with p99 <= 10 ms
PATH = b"/v1/orders"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the peer
class PeerOrder(BaseModel):
    market: str
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"] = "limit"
    price: str | None = None
    size: str
    time_in_force: Literal["gtc", "ioc", "fok", "post_only"] | None = None
    client_order_id: str | None = None


def create_peer_app() -> FastAPI:
    """A trivial FastAPI order endpoint: validate the body, answer a small ack."""
    app = FastAPI()
    ids = itertools.count(1)

    @app.post("/v1/orders", status_code=201)
    async def place_order(order: PeerOrder) -> dict[str, Any]:
        return {
            "order_id": str(next(ids)),
            "client_order_id": order.client_order_id,
            "status": "accepted",
        }

    return app


peer_app = create_peer_app()


def serve_peer(port: int) -> None:
    """The peer under uvicorn with the settings `app.cli serve` uses."""
    import uvicorn

    uvicorn.run(
        peer_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
        ws="websockets-sansio",
    )


# ------------------------------------------------------------------ the canned server
def _content_length(head: bytes) -> int:
    """Content-Length of an HTTP head (0 if absent); -1 for chunked bodies."""
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        return -1 if b"\r\ntransfer-encoding:" in lower else 0
    j = lower.find(b"\r\n", i + 2)
    return int(lower[i + 17 : j if j >= 0 else len(lower)])


CANNED_BODY = b'{"order_id":"1","client_order_id":"x","status":"accepted"}'
CANNED = (
    b"HTTP/1.1 201 Created\r\nserver: canned\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(CANNED_BODY), CANNED_BODY)
)


class _Canned(asyncio.Protocol):
    """Answers each complete request with `CANNED`: the generator's speed limit."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            total = end + 4 + max(_content_length(bytes(buf[:end])), 0)
            if len(buf) < total:
                return
            del buf[:total]
            assert self.transport is not None
            self.transport.write(CANNED)


def serve_canned(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        _runner().run(main())


# --------------------------------------------------------------------------- processes
def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinning(cpu: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """argv prefix / preexec_fn that pin a child to `cpu` (nothing for None)."""
    if cpu is None:
        return [], None
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)], None
    if hasattr(os, "sched_setaffinity"):
        return [], lambda: os.sched_setaffinity(0, {cpu})
    return [], None


class Server:
    """A server subprocess on a loopback port, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        log_dir: Path,
        cpu: int | None,
    ) -> None:
        self.name, self.argv, self.env, self.port, self.cpu = name, argv, env, port, cpu
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready_path: str | None, timeout: float = 60.0) -> None:
        import httpx

        prefix, preexec = pinning(self.cpu)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, *self.argv],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")
            try:
                if ready_path is None:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                elif httpx.get(f"http://127.0.0.1:{self.port}{ready_path}", timeout=2).is_success:
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.tail()}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


# -------------------------------------------------------------------------- the client
class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head_end = -1
        self._total = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(bytes(buf[:end]))
            if length < 0:
                self._fail(ConnectionError("chunked response: not supported by this client"))
                return
            self._head_end, self._total = end, end + 4 + length
        if len(buf) < self._total:
            return
        status = int(buf[9:12])
        body = bytes(buf[self._head_end + 4 : self._total])
        del buf[: self._total]
        self._head_end = self._total = -1
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            self._fail(ConnectionError("a response nobody asked for"))
        else:
            waiter.set_result((status, body))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection closed by the server ({exc})"))


@dataclass
class Account:
    account_id: int
    api_key: str
    secret: str


class Requests:
    """Signed `POST /v1/orders` requests of one connection: the bodies are drawn once
    (seeded), then each request gets a unique client_order_id, the current time and its
    HMAC."""

    def __init__(
        self,
        account: Account,
        host: bytes,
        taker: bool,
        tag: str,
        rng: random.Random,
        n_templates: int = 1024,
    ) -> None:
        self.head = (
            b"POST /v1/orders HTTP/1.1\r\nHost: "
            + host
            + b"\r\nContent-Type: application/json\r\nX-API-Key: "
            + account.api_key.encode()
        )
        self.mac = hmac.new(account.secret.encode(), digestmod=hashlib.sha256)
        self.tag = tag.encode()
        self.n = 0
        self.templates: list[bytes] = []
        for i in range(n_templates):
            if taker:
                side, lots = ("buy", "sell")[i % 2], TAKER_LOTS
                price = MID_TICKS + TAKER_TICKS if side == "buy" else MID_TICKS - TAKER_TICKS
                tif = b',"time_in_force":"ioc"'
            else:
                side, lots = rng.choice(("buy", "sell")), rng.randint(*MAKER_LOTS)
                off = rng.randint(*MAKER_TICKS)
                price = MID_TICKS - off if side == "buy" else MID_TICKS + off
                tif = b""
            self.templates.append(
                b'{"market":"%s","side":"%s","type":"limit","price":"%d.%d","size":"0.%04d"%s'
                b',"client_order_id":"'
                % (MARKET.encode(), side.encode(), price // 10, price % 10, lots, tif)
            )

    def next(self) -> tuple[bytes, bytes]:
        """(request bytes, client_order_id)"""
        n = self.n
        self.n = n + 1
        cid = self.tag + str(n).encode()
        body = self.templates[n % len(self.templates)] + cid + b'"}'
        ts = str(time.time_ns() // 1_000_000).encode()
        mac = self.mac.copy()
        mac.update(ts + b"POST" + PATH + body)
        return (
            self.head
            + b"\r\nX-Timestamp: "
            + ts
            + b"\r\nX-Signature: "
            + mac.hexdigest().encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body,
            cid,
        )


ORDER_STATUSES = frozenset({"open", "partially_filled", "filled", "cancelled", "expired"})


@dataclass
class Run:
    target: str
    requests: int = 0
    elapsed: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    server_cpu: float = float("nan")  # CPU seconds of the server process / wall seconds
    client_cpu: float = float("nan")  # the same for this process (the generator)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message)


def check_ours(run: Run, status: int, body: bytes, cid: bytes) -> None:
    if status != 201:
        run.error(f"HTTP {status}: {body[:300]!r}")
        return
    try:
        reply = orjson.loads(body)
        order = reply["order"]
        ok = order["client_order_id"] == cid.decode() and order["status"] in ORDER_STATUSES
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        run.error(f"unexpected body: {body[:300]!r}")
        return
    run.statuses[order["status"]] = run.statuses.get(order["status"], 0) + 1
    run.fills += len(reply["fills"])


def check_peer(run: Run, status: int, body: bytes, cid: bytes) -> None:
    try:
        ok = status == 201 and orjson.loads(body)["client_order_id"] == cid.decode()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        run.error(f"HTTP {status}: {body[:300]!r}")


def check_canned(run: Run, status: int, body: bytes, cid: bytes) -> None:
    try:
        ok = status == 201 and bool(orjson.loads(body)["status"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        run.error(f"HTTP {status}: {body[:300]!r}")


async def drive(
    run: Run,
    port: int,
    sources: list[Requests],
    check: Callable[[Run, int, bytes, bytes], None],
    warmup: float,
    seconds: float,
    at_measure: Callable[[], object] | None = None,
) -> None:
    """One run: a connection per request source, closed loop, `warmup` + `seconds`;
    `at_measure` is called when the measured part starts."""
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in sources:
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
        conns.append(proto)
    t_start = time.perf_counter_ns()
    measure_from = t_start + int(warmup * 1e9)
    stop_at = measure_from + int(seconds * 1e9)
    last_done = measure_from
    latencies = run.latencies_ns
    clock = time.perf_counter_ns
    if at_measure is not None:
        loop.call_later(warmup, at_measure)

    async def one(conn: _Conn, source: Requests) -> None:
        nonlocal last_done
        transport = conn.transport
        assert transport is not None
        while clock() < stop_at:
            request, cid = source.next()
            waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            conn.waiter = waiter
            t0 = clock()
            transport.write(request)
            try:
                status, body = await waiter
            except ConnectionError as exc:
                run.error(str(exc))
                return
            t1 = clock()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                last_done = max(last_done, t1)
                check(run, status, body, cid)
            elif status >= 300:  # warm-up: not counted, but an error all the same
                check(run, status, body, cid)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(c, s) for c, s in zip(conns, sources, strict=True))),
            timeout=warmup + seconds + 60,
        )
    except TimeoutError:
        run.error("the run did not finish within 60 s of its end: a request hung")
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    run.requests = len(latencies)
    run.elapsed = (last_done - measure_from) / 1e9
    latencies.sort()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------- our server
def admin_setup(base_url: str, n: int) -> list[Account]:
    from exchange_client import ExchangeClient

    admin = ExchangeClient(base_url, ADMIN_KEY, ADMIN_SECRET)
    try:
        spec = next(m for m in admin.markets()["markets"] if m["symbol"] == MARKET)
        got = tuple(Decimal(spec[k]) for k in ("tick_size", "lot_size", "min_size"))
        if got != (Decimal(TICK), Decimal(LOT), Decimal(LOT)):
            raise SystemExit(
                f"{MARKET} has tick/lot/min size {got}, this benchmark expects {(TICK, LOT, LOT)}"
            )
        accounts = []
        for i in range(n):
            info = admin.create_account(f"bench-rest-{i}")
            for asset, amount in (("USDC", "100000000"), ("BTC", "2000")):
                admin.deposit(info["account_id"], asset, amount, f"bench-rest-{i}-{asset}")
            accounts.append(Account(int(info["account_id"]), info["api_key"], info["api_secret"]))
        return accounts
    finally:
        admin.close()


def scrape(base_url: str) -> dict[str, float]:
    """Every sample of `/metrics` by its name with labels, plus `commands`: the sum of
    `exchange_commands_total` over its labels."""
    import httpx

    out: dict[str, float] = {"commands": 0.0}
    for line in httpx.get(base_url + "/metrics", timeout=10).text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
        if name.startswith("exchange_commands_total{"):
            out["commands"] += float(value)
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = d("exchange_batch_size_count")
    commands = d("exchange_batch_size_sum")
    commits = d("exchange_commit_seconds_count")
    slow = commits - d('exchange_commit_seconds_bucket{le="0.01"}')
    return {
        "commands_per_batch": commands / batches if batches else 0.0,
        "commit_ms": d("exchange_commit_seconds_sum") / commits * 1e3 if commits else 0.0,
        "slow_commits": slow / commits if commits else 0.0,
        "apply_us": d("exchange_engine_apply_seconds_total") / commands * 1e6 if commands else 0.0,
    }


def book_summary(base_url: str) -> str:
    import httpx

    book = httpx.get(f"{base_url}/v1/markets/{MARKET}/book?depth=1000", timeout=10).json()
    bids, asks = book["bids"], book["asks"]
    size = sum(float(s) for _, s in bids + asks)
    return f"{len(bids)} bid and {len(asks)} ask levels, {size:.4f} BTC resting"


# ---------------------------------------------------------------------------- report
def _dist(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions(backend: str, pg_version: str | None) -> str:
    # uvicorn's "auto" loop and HTTP parser: uvloop and httptools when installed
    loop = "uvloop " + _dist("uvloop") if _dist("uvloop") != "not installed" else "asyncio"
    http = "httptools " + _dist("httptools") if _dist("httptools") != "not installed" else "h11"
    db = (
        f"PostgreSQL {pg_version} (synchronous_commit=on)"
        if backend == "postgres"
        else f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL)"
    )
    return (
        f"Python {platform.python_version()}, fastapi {_dist('fastapi')}, starlette "
        f"{_dist('starlette')}, uvicorn {_dist('uvicorn')} ({loop}, {http}), pydantic "
        f"{_dist('pydantic')}, orjson {_dist('orjson')}, {db}"
    )


def revision() -> str:
    from loadtests.bench_engine import engine_revision

    rev = engine_revision()
    try:
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(ROOT),
                "diff",
                "--quiet",
                "HEAD",
                "--",
                "app",
                "exchange_client",
            ],
            capture_output=True,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return rev
    return rev + ("; uncommitted changes in app/ or exchange_client/" if dirty else "")


def pct(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns))) - 1))
    return sorted_ns[i] / 1e6


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]


def row(label: str, runs: list[Run], ratio: str) -> str:
    m = median_run(runs)
    rates = [r.rps for r in runs]
    lat = m.latencies_ns
    return (
        f"| {label} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} "
        f"| {pct(lat, 0.5):.2f} | {pct(lat, 0.9):.2f} | {pct(lat, 0.99):.2f} "
        f"| {pct(lat, 0.999):.2f} | {m.requests:,} | {sum(r.errors for r in runs)} "
        f"| {m.server_cpu:.0%} | {m.client_cpu:.0%} | {ratio} |"
    )


def report(bench: Bench, pinned: str, backend_versions: str, book: str, load_before: float) -> str:
    """The Markdown section: context lines, the table, the targets, ours per run."""
    from loadtests.bench_engine import machine

    args = bench.args
    ours, peer = bench.results["ours"], bench.results["peer"]
    ceiling = bench.results.get("ceiling", [])
    ours_rps = statistics.median(r.rps for r in ours)
    peer_rps = statistics.median(r.rps for r in peer)
    ratio = ours_rps / peer_rps if peer_rps else float("nan")
    p99 = pct(median_run(ours).latencies_ns, 0.99)
    n_makers = args.connections - args.takers
    lines = [
        f"### Results ({datetime.date.today().isoformat()})",
        "",
        f"- machine: {machine()}; load average {load_before:.2f} before the runs, "
        f"{os.getloadavg()[0]:.2f} after",
        f"- revision: {revision()}",
        f"- versions: {backend_versions}",
        f"- command: `{' '.join(['python loadtests/bench_rest.py', *sys.argv[1:]])}`",
        f"- setup: {pinned}; {args.connections} keep-alive connections, closed loop, one "
        f"request in flight each; {args.runs} runs per server interleaved (ours, peer, ...), "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured each",
        f"- workload: {n_makers} connections rest BTC-USDC limit orders "
        f"({MAKER_LOTS[0]}-{MAKER_LOTS[1]} lots, {MAKER_TICKS[0]}-{MAKER_TICKS[1]} ticks off "
        f"a mid of 50,000), {args.takers} send IOC limits of {TAKER_LOTS} lots through it; "
        f"one funded account per connection; book after the last run: {book}",
        "",
        "| server | req/s median | min | max | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| requests (median run) | errors | server CPU | generator CPU | ÷ peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        row("exchange (ours): signed, durable `POST /v1/orders`", ours, f"**{ratio:.2f}**"),
        row("FastAPI + pydantic peer (`peer_app`)", peer, "1.00"),
    ]
    if ceiling:
        c_rps = statistics.median(r.rps for r in ceiling)
        lines.append(
            row(
                "generator ceiling (canned responses)",
                ceiling,
                f"{c_rps / peer_rps:.2f}" if peer_rps else "-",
            )
        )
    every = "; ".join(
        f"{name}: " + ", ".join(f"{r.rps:,.0f} ({r.server_cpu:.0%})" for r in runs)
        for name, runs in (("ours", ours), ("peer", peer))
    )
    lines += ["", f"Every run in order, req/s (server CPU): {every}."]
    met_ratio = "met" if ratio >= TARGET_RATIO else "NOT met"
    met_p99 = "met" if p99 <= TARGET_P99_MS else "NOT met"
    lines += [
        "",
        f"Targets: requests/s >= {TARGET_RATIO}x the peer's: **{met_ratio}** ({ratio:.2f}x); "
        f"p99 <= {TARGET_P99_MS:g} ms: **{met_p99}** ({p99:.2f} ms). Latency is from the "
        "median run of each row. Server CPU: the server process's CPU time (all threads) over "
        "the run's wall time; well under 100% for the peer means CPU 0 was shared with "
        "something else.",
        "",
        "Ours, per run (`/metrics` before and after; commands include the warm-up and the "
        "sequencer's ticks):",
        "",
        "| run | req/s | p99 ms | commands per group commit (mean) | commit ms (mean) "
        "| commits over 10 ms | engine apply µs/command | fills per taker order "
        "| answers: open / partially filled / filled / cancelled |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ours, 1):
        m, s = r.metrics, r.statuses
        takers = s.get("filled", 0) + s.get("cancelled", 0) + s.get("partially_filled", 0)
        lines.append(
            f"| {i} | {r.rps:,.0f} | {pct(r.latencies_ns, 0.99):.2f} "
            f"| {m.get('commands_per_batch', 0):.1f} | {m.get('commit_ms', 0):.2f} "
            f"| {m.get('slow_commits', 0):.1%} | {m.get('apply_us', 0):.1f} "
            f"| {r.fills / takers if takers else 0:.1f} "
            f"| {s.get('open', 0):,} / {s.get('partially_filled', 0):,} / "
            f"{s.get('filled', 0):,} / {s.get('cancelled', 0):,} |"
        )
    errors = [f"{r.target}: {e}" for r in ours + peer + ceiling for e in r.error_samples]
    total = sum(r.errors for r in ours + peer + ceiling)
    lines += [
        "",
        "Every answer was checked: no errors."
        if not total
        else f"ERRORS: {total}; first ones: " + "; ".join(errors),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main
def pg_version(url: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    from tests.dbutil import run_sync

    async def get() -> str:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return run_sync(get())


def prepare_database(
    args: argparse.Namespace, tmp: Path, cleanup: contextlib.ExitStack
) -> tuple[str, str]:
    """(database URL, versions line): a SQLite file in `tmp`, or a throwaway PostgreSQL
    database dropped by `cleanup`."""
    if args.backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'exchange.db'}", versions("sqlite", None)
    if not args.postgres_url:
        raise SystemExit("--backend postgres needs --postgres-url or EXCHANGE_TEST_POSTGRES_URL")
    from tests.dbutil import create_database, drop_database, run_sync

    url = run_sync(create_database(args.postgres_url, prefix="exch_bench_"))
    cleanup.callback(lambda: run_sync(drop_database(url)))
    return url, versions("postgres", pg_version(url))


def start_servers(
    args: argparse.Namespace,
    tmp: Path,
    database_url: str,
    cpu: int | None,
    cleanup: contextlib.ExitStack,
) -> dict[str, Server]:
    """Ours (migrated first), the peer and, unless --no-ceiling, the canned server."""
    port = free_port()
    env = {
        **os.environ,
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_DATA_DIR": str(tmp),
        "EXCHANGE_HOST": "127.0.0.1",
        "EXCHANGE_PORT": str(port),
        "EXCHANGE_ADMIN_KEY": ADMIN_KEY,
        "EXCHANGE_ADMIN_SECRET": ADMIN_SECRET,
        "EXCHANGE_RATE_LIMITS": "off",
        "EXCHANGE_LOG_LEVEL": "warning",
    }
    log(f"migrating {database_url}")
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run(
        [*cli, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    servers = {"ours": Server("ours", [sys.executable, "/tmp/exp/serve_variant.py"], env, port, tmp, cpu)}
    this = [sys.executable, "-m", "loadtests.bench_rest"]
    for name, flag in (("peer", "--serve-peer"), ("ceiling", "--serve-canned")):
        if name == "ceiling" and args.no_ceiling:
            continue
        p = free_port()
        servers[name] = Server(name, [*this, flag, str(p)], dict(os.environ), p, tmp, cpu)
    for name, srv in servers.items():
        cleanup.callback(srv.stop)
        srv.start("/v1/health" if name == "ours" else None)
    return servers


class Bench:
    """The interleaved runs against the started servers, from this process (CPU 1)."""

    def __init__(
        self, args: argparse.Namespace, servers: dict[str, Server], accounts: list[Account]
    ) -> None:
        self.args, self.servers, self.accounts = args, servers, accounts
        self.ours_url = servers["ours"].base_url
        self.rng = random.Random(args.seed)
        self.results: dict[str, list[Run]] = {name: [] for name in servers}

    def sources(self, tag: str) -> list[Requests]:
        host = self.ours_url.removeprefix("http://").encode()
        first_taker = self.args.connections - self.args.takers
        return [
            Requests(acc, host, i >= first_taker, f"{tag}c{i}n", self.rng)
            for i, acc in enumerate(self.accounts)
        ]

    def run(self, runner: asyncio.Runner, target: str, n: int) -> None:
        args, srv = self.args, self.servers[target]
        run = Run(target)
        check = {"ours": check_ours, "peer": check_peer, "ceiling": check_canned}[target]
        before = scrape(self.ours_url) if target == "ours" else {}
        profiler: list[subprocess.Popen[bytes]] = []
        at_measure = None
        if args.py_spy and target == "ours" and n == 1:
            start_profiler = py_spy(args.py_spy, srv, args.seconds)

            def at_measure() -> None:
                profiler.append(start_profiler())

        coro = drive(
            run,
            srv.port,
            self.sources(f"{target[0]}{n}"),
            check,
            args.warmup,
            args.seconds,
            at_measure,
        )
        pid = srv.pid
        cpu0, own0, t0 = process_cpu_seconds(pid), os.times(), time.perf_counter()
        runner.run(coro)
        wall, own1 = time.perf_counter() - t0, os.times()
        run.server_cpu = (process_cpu_seconds(pid) - cpu0) / wall
        run.client_cpu = (own1.user + own1.system - own0.user - own0.system) / wall
        if target == "ours":
            run.metrics = metrics_delta(before, scrape(self.ours_url))
        for proc in profiler:
            proc.wait(60)
            log(f"py-spy: {args.py_spy} (exit {proc.returncode})")
        self.results[target].append(run)
        log(
            f"run {n} {target}: {run.rps:,.0f} req/s, p99 {pct(run.latencies_ns, 0.99):.2f} ms, "
            f"server CPU {run.server_cpu:.0%}, generator CPU {run.client_cpu:.0%}, "
            f"{run.errors} errors"
        )

    def run_all(self) -> None:
        with _runner() as runner:
            for n in range(1, self.args.runs + 1):
                self.run(runner, "ours", n)
                self.run(runner, "peer", n)
            if "ceiling" in self.servers:
                self.run(runner, "ceiling", 1)


def py_spy(out: str, srv: Server, seconds: float) -> Callable[[], subprocess.Popen[bytes]]:
    """A starter of `py-spy record` on `srv` for `seconds`, 100 samples/s per thread (it
    pauses the server for each sample, which costs it a few percent; `--nonblocking` would
    not, but then many stacks come out torn). The format follows the file name: .txt raw
    stacks, .json speedscope, else a flame graph SVG."""
    fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(out).suffix, "flamegraph")
    argv = ["py-spy", "record", "--threads", "-r", "100", "-f", fmt, "-o", out]
    argv += ["-d", str(max(1, round(seconds))), "-p", str(srv.pid)]
    return lambda: subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def choose_pinning() -> tuple[int | None, str]:
    """(the servers' CPU, how the report describes it); the generator takes CPU 1."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return None, "NOT pinned (one CPU, or no affinity API): servers and generator share"
    how = "taskset -c" if shutil.which("taskset") else "sched_setaffinity"
    return 0, f"servers pinned to CPU 0, load generator to CPU 1 ({how})"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per server (interleaved)")
    ap.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--takers", type=int, default=3, help="connections sending crossing IOCs")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--postgres-url", default=os.environ.get("EXCHANGE_TEST_POSTGRES_URL"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-ceiling", action="store_true", help="skip the generator ceiling run")
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        help="record our server with py-spy (on PATH) during the measured part of its first run",
    )
    ap.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-canned", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 0 <= args.takers < args.connections:
        ap.error("--takers must be at least 0 and less than --connections")
    if args.py_spy and not shutil.which("py-spy"):
        ap.error("--py-spy needs py-spy on PATH (pip install py-spy)")
    return args


def main() -> int:
    args = parse_args()
    if args.serve_peer:
        serve_peer(args.serve_peer)
        return 0
    if args.serve_canned:
        serve_canned(args.serve_canned)
        return 0
    cpu, pinned = choose_pinning()
    with contextlib.ExitStack() as cleanup:
        tmp = Path(tempfile.mkdtemp(prefix="bench-rest-"))
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        database_url, backend_versions = prepare_database(args, tmp, cleanup)
        servers = start_servers(args, tmp, database_url, cpu, cleanup)
        if cpu is not None:
            os.sched_setaffinity(0, {1})
        ours = servers["ours"]
        log(
            f"servers up ({pinned}); ours: pid {ours.pid}, {ours.base_url}; creating and "
            f"funding {args.connections} accounts"
        )
        bench = Bench(args, servers, admin_setup(ours.base_url, args.connections))
        load_before = os.getloadavg()[0]
        bench.run_all()
        book = book_summary(ours.base_url)
        print(report(bench, pinned, backend_versions, book, load_before))
        errors = sum(run.errors for runs in bench.results.values() for run in runs)
        if errors:
            log(f"{errors} requests failed; our server's log ends with:\n{ours.tail()}")
        return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
