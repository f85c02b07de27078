"""The client library covers every REST route the server declares (no socket: a mock
transport records what each client method sends)."""

from __future__ import annotations

import inspect
import re
from typing import Any

import httpx
from fastapi.routing import APIRoute

from app.api import account, admin, oracle, orders, public
from exchange_client import ExchangeClient
from exchange_client.rest import _Endpoints

NOT_METHODS = {"request"}


def _server_routes() -> set[tuple[str, str]]:
    routers = [public.router, public.metrics_router, admin.router, oracle.router,
               orders.router, account.router]
    return {(m, r.path) for router in routers for r in router.routes
            if isinstance(r, APIRoute) for m in r.methods}


def _dummy(param: inspect.Parameter) -> Any:
    ann = str(param.annotation)
    if "Sequence" in ann:
        return []
    if "Mapping" in ann:
        return {}
    if ann.startswith("int"):
        return 5
    return "x"


def test_every_server_route_has_a_client_method() -> None:
    sent: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path))
        return httpx.Response(200, json={})

    client = ExchangeClient("http://test", "k", "s", transport=httpx.MockTransport(handler))
    methods = [name for name, fn in inspect.getmembers(_Endpoints, inspect.isfunction)
               if not name.startswith("_") and name not in NOT_METHODS]
    for name in methods:
        fn = getattr(client, name)
        args = [_dummy(p) for p in inspect.signature(fn).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
        fn(*args)
    assert len(sent) == len(methods)
    missing = []
    for method, path in sorted(_server_routes()):
        pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        if not any(m == method and pattern.match(p) for m, p in sent):
            missing.append(f"{method} {path}")
    assert missing == []
