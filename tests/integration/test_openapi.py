"""/openapi.json describes every REST route, with the error body on the error statuses."""

from __future__ import annotations

import httpx

from tests.server import ServerProcess

EXPECTED = {
    ("get", "/v1/health"),
    ("get", "/v1/time"),
    ("get", "/v1/assets"),
    ("get", "/v1/markets"),
    ("get", "/v1/markets/{market}/book"),
    ("get", "/v1/markets/{market}/trades"),
    ("get", "/v1/markets/{market}/candles"),
    ("get", "/v1/markets/{market}/ticker"),
    ("post", "/v1/admin/accounts"),
    ("post", "/v1/admin/deposits"),
    ("post", "/v1/admin/markets/{market}/state"),
    ("post", "/v1/orders"),
    ("post", "/v1/orders/batch"),
    ("get", "/v1/orders"),
    ("get", "/v1/orders/{order_id}"),
    ("get", "/v1/orders/by-client-id/{client_order_id}"),
    ("patch", "/v1/orders/{order_id}"),
    ("delete", "/v1/orders/{order_id}"),
    ("delete", "/v1/orders"),
    ("get", "/v1/fills"),
    ("get", "/v1/account"),
    ("put", "/v1/account/settings"),
    ("post", "/v1/withdrawals"),
    ("get", "/v1/ledger"),
    ("post", "/v1/account/keys"),
    ("delete", "/v1/account/keys/{api_key}"),
    ("get", "/metrics"),
}


def test_openapi_lists_every_route_with_error_bodies(server: ServerProcess) -> None:
    spec = httpx.get(server.base_url + "/openapi.json").json()
    routes = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes >= EXPECTED
    assert "ErrorBody" in spec["components"]["schemas"]
    for method, path in EXPECTED:
        if path.startswith("/v1/") and (method, path) not in {
            ("get", "/v1/time"),
            ("get", "/v1/assets"),
            ("get", "/v1/markets"),
        }:
            responses = spec["paths"][path][method]["responses"]
            errors = [s for s in responses if s[0] in "45"]
            assert errors, f"{method} {path} documents no error response"
            for status in errors:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema.get("$ref", "").endswith("/ErrorBody") or status == "422", (
                    method,
                    path,
                    status,
                )
    order = spec["components"]["schemas"]["OrderRequest"]
    assert order.get("additionalProperties") is False
