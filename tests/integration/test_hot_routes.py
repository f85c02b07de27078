"""The hot routes (app/api/hot.py) answer exactly as the FastAPI routes they stand in for.

Two real servers, one with `EXCHANGE_HOT_ROUTES=off` (every request through FastAPI),
get the same requests in the same order: valid placements and cancels, idempotent
replays, business rejections, every kind of bad body, content type and credentials.
Status, body (timestamps aside) and the headers a client reads must be equal, and
`/metrics` must show which requests the hot server served itself and which it handed to
FastAPI, so a hot path that quietly falls back on everything fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from exchange_client import AsyncExchangeClient
from exchange_client.signing import auth_headers, now_ms
from tests.server import ADMIN_KEY, ADMIN_SECRET, ServerProcess

BTC = "BTC-USDC"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for name, hot in (("hot", "true"), ("fastapi", "false")):
            tmp: Path = tmp_path_factory.mktemp(f"hot-{name}")
            srv = ServerProcess(
                f"sqlite+aiosqlite:///{tmp / 'exchange.db'}",
                tmp / "data",
                {"EXCHANGE_HOT_ROUTES": hot},
            )
            srv.migrate()
            srv.start()
            started[name] = srv
        yield started
    finally:
        for srv in started.values():
            srv.stop()


class Side:
    """One server's view: its accounts (same ids on both: fresh databases) and a client."""

    def __init__(self, srv: ServerProcess, http: httpx.AsyncClient) -> None:
        self.srv = srv
        self.http = http
        self.keys: dict[str, tuple[str, str]] = {}
        self.last_ts = 0

    async def setup(self) -> None:
        async with AsyncExchangeClient(self.srv.base_url, ADMIN_KEY, ADMIN_SECRET) as admin:
            for name in ("maker", "taker", "poor"):
                info = await admin.create_account(name)
                self.keys[name] = (info["api_key"], info["api_secret"])
                if name != "poor":
                    for asset, amount in (("USDC", "100000"), ("BTC", "2")):
                        await admin.deposit(info["account_id"], asset, amount,
                                            f"{info['account_id']}-{asset}")
        async with AsyncExchangeClient(self.srv.base_url, *self.keys["maker"]) as maker:
            reader = await maker.create_key(["read"])
            self.keys["reader"] = (reader["api_key"], reader["api_secret"])

    async def send(
        self,
        who: str,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = "application/json",
        sign: str = "ok",
    ) -> httpx.Response:
        key, secret = self.keys.get(who, ("no-such-key", "x"))
        # a new millisecond per request: two cases with the same bytes sent within one
        # would carry the same signature, and the second would be refused as a replay
        self.last_ts = max(now_ms(), self.last_ts + 1)
        ts = self.last_ts - (60_000 if sign == "stale" else 0)
        headers = auth_headers(key, secret, method, path, body, timestamp_ms=ts)
        if sign == "bad":
            headers["X-Signature"] = "0" * 64
        elif sign == "none":
            headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return await self.http.request(method, self.srv.base_url + path, content=body,
                                       headers=headers)


VOLATILE = re.compile(r'"(created_ts|updated_ts|ts)":\d+')
SERVER_TIME = re.compile(r"server time \d+|timestamp \d+")


def comparable(r: httpx.Response) -> tuple[int, str, dict[str, str | None]]:
    text = SERVER_TIME.sub("T", VOLATILE.sub(r'"\1":0', r.text))
    headers = {h: r.headers.get(h) for h in ("content-type", "x-ratelimit-remaining",
                                             "retry-after")}
    return r.status_code, text, headers


def place(**fields: Any) -> bytes:
    body = {"market": BTC, "side": "sell", "price": "50000", "size": "0.01", **fields}
    return json.dumps(body).encode()  # (orjson refuses the integer beyond 64 bits)


# (who, method, path, body, content type, signing) -> the same answer from both servers
CASES: list[tuple[str, str, str, bytes, str | None, str]] = [
    ("maker", "POST", "/v1/orders", place(client_order_id="m1"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(client_order_id="m1"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(client_order_id="m1", price="50001"),
     "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(price="50002"), "application/json; charset=utf-8",
     "ok"),
    ("taker", "POST", "/v1/orders",
     place(side="buy", price="50002", size="0.015", time_in_force="ioc"),
     "application/json", "ok"),
    ("poor", "POST", "/v1/orders", place(side="buy"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(market="NOPE-USDC"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(price="50000.05"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(size="0.00001"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(expire_ts=2**64), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(expire_ts=1.5), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(colour="red"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(size=1), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", b'{"market":"BTC-USDC"}', "application/json", "ok"),
    ("maker", "POST", "/v1/orders", b'{"market": "BTC-USDC", "side": "sell",',
     "application/json", "ok"),
    ("maker", "POST", "/v1/orders", b"", "application/json", "ok"),
    ("maker", "POST", "/v1/orders", b"\xff\xfe{}", "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place().decode().encode("utf-16"), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", b'{"size": NaN}', "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(), "text/plain", "ok"),
    ("maker", "POST", "/v1/orders", place(), None, "ok"),
    ("maker", "POST", "/v1/orders?dry=1", place(), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(), "application/json", "bad"),
    ("maker", "POST", "/v1/orders", place(), "application/json", "stale"),
    ("maker", "POST", "/v1/orders", place(), "application/json", "none"),
    ("stranger", "POST", "/v1/orders", place(), "application/json", "ok"),
    ("reader", "POST", "/v1/orders", place(), "application/json", "ok"),
    ("maker", "POST", "/v1/orders", place(colour="red"), "application/json", "bad"),
    ("maker", "DELETE", "/v1/orders/1", b"", None, "ok"),
    ("taker", "DELETE", "/v1/orders/2", b"", None, "ok"),
    ("maker", "DELETE", "/v1/orders/999999", b"", None, "ok"),
    ("maker", "DELETE", "/v1/orders/abc", b"", None, "ok"),
    ("maker", "DELETE", "/v1/orders/2?x=1", b"", None, "ok"),
    ("reader", "DELETE", "/v1/orders/2", b"", None, "ok"),
    ("maker", "DELETE", "/v1/orders/2", b"", None, "bad"),
    ("maker", "DELETE", "/v1/orders/2", b"", None, "ok"),
    ("maker", "DELETE", "/v1/orders/2", b"", None, "ok"),
]


@pytest.fixture
async def sides(servers: dict[str, ServerProcess]) -> AsyncIterator[dict[str, Side]]:
    async with httpx.AsyncClient(timeout=10) as http:
        out = {name: Side(srv, http) for name, srv in servers.items()}
        for side in out.values():
            await side.setup()
        yield out


async def hot_counts(srv: ServerProcess) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(srv.base_url + "/metrics")).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^exchange_hot_route_requests_total(\{.*\}) (\S+)$", text, re.M)
    }


async def test_hot_routes_answer_as_fastapi_does(sides: dict[str, Side]) -> None:
    answers: dict[str, list[tuple[int, str, dict[str, str | None]]]] = {}
    for name, side in sides.items():
        answers[name] = [comparable(await side.send(*case)) for case in CASES]
    for case, hot, slow in zip(CASES, answers["hot"], answers["fastapi"], strict=True):
        assert hot == slow, case
    statuses = [status for status, _, _ in answers["hot"]]
    assert statuses == [
        201, 200, 409, 201, 201, 400, 404, 400, 400, 400, 422, 422, 422, 422, 422, 422, 422,
        201, 422, 422, 422, 422, 401, 401, 401, 401, 403, 401,
        400, 404, 404, 404, 422, 403, 401, 200, 400,
    ]
    taker = orjson.loads(answers["hot"][4][1])
    assert taker["order"]["status"] == "filled"
    assert [(f["price"], f["size"], f["liquidity"]) for f in taker["fills"]] == [
        ("50000", "0.01", "taker"), ("50002", "0.005", "taker")
    ]
    # served: the 14 placements with a JSON body that validates (whatever the answer) and
    # the 8 cancels without a query string; 13 placements were handed to FastAPI; the two
    # requests with a query string never reached the hot routes
    assert await hot_counts(sides["hot"].srv) == {
        '{route="place",outcome="served"}': 14.0,
        '{route="place",outcome="fallback"}': 13.0,
        '{route="cancel",outcome="served"}': 8.0,
    }
    assert await hot_counts(sides["fastapi"].srv) == {}


async def test_concurrent_hot_orders_share_group_commits(sides: dict[str, Side]) -> None:
    """Many placements at once through the hot route: each gets its own answer."""
    side = sides["hot"]
    bodies = [place(price=str(60000 + i), client_order_id=f"c{i}") for i in range(40)]
    answers = await asyncio.gather(*(side.send("maker", "POST", "/v1/orders", b)
                                     for b in bodies))
    assert [r.status_code for r in answers] == [201] * 40
    assert [r.json()["order"]["client_order_id"] for r in answers] == [f"c{i}" for i in range(40)]
    assert len({r.json()["order"]["order_id"] for r in answers}) == 40
