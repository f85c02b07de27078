"""REST client (async and sync) for the v1 wire contract in API.md.

Rule owned here: a request body is serialized ONCE (orjson) and those exact bytes
are both signed and sent; the query string is built once (``urlencode``) and the
signed ``path_with_query`` is byte-for-byte the path and query on the wire (the
full URL is handed to httpx, which does not re-encode it). Non-2xx replies raise
``ApiError``. ``None`` values are dropped from bodies and query strings.
Both clients share every endpoint definition (``_Endpoints``) and request
preparation (``_prepare``); only the transport call differs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

import httpx
import orjson

from .errors import ApiError
from .signing import auth_headers

R = TypeVar("R")

Params = Mapping[str, Any] | None


def _seg(value: object) -> str:
    """Percent-encode one path segment (only unreserved characters left as is)."""
    return quote(str(value), safe="")


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def build_path(path: str, params: Params = None) -> str:
    """``path`` plus ``?query`` (None values dropped), exactly as it will be sent."""
    if not params:
        return path
    items = [(k, _param_value(v)) for k, v in params.items() if v is not None]
    return f"{path}?{urlencode(items)}" if items else path


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    if "json" in response.headers.get("content-type", "json"):
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass
    return response.text


def _result(response: httpx.Response) -> Any:
    body = _decode(response)
    if response.status_code >= 400:
        err = ApiError.from_body(response.status_code, body)
        err.headers = dict(response.headers)
        raise err
    return body


class _Endpoints(Generic[R]):
    """Every route of API.md; ``R`` is ``Any`` (sync) or ``Awaitable[Any]`` (async)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        recv_window: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self.recv_window = recv_window

    def _prepare(
        self, method: str, path: str, json: Any = None, params: Params = None,
        signed: bool = True,
    ) -> tuple[str, dict[str, str], bytes]:
        """Return (full URL, headers, body bytes); the body bytes are what gets signed.

        A signed request made without credentials is sent unsigned (the server
        answers 401 MISSING_AUTH_HEADERS), which tests rely on.
        """
        method = method.upper()
        path_q = build_path(path, params)
        content = b"" if json is None else orjson.dumps(json)
        headers: dict[str, str] = {"Accept": "application/json"}
        if json is not None:
            headers["Content-Type"] = "application/json"
        if signed and self.api_key is not None and self.api_secret is not None:
            headers.update(auth_headers(self.api_key, self.api_secret, method, path_q, content,
                                        recv_window=self.recv_window))
        return self.base_url + path_q, headers, content

    @abstractmethod
    def request(self, method: str, path: str, json: Any = None, params: Params = None,
                signed: bool = True) -> R:
        """Send one request; return the decoded JSON body or raise ApiError."""

    # ---- operator -------------------------------------------------------
    def create_account(self, name: str) -> R:
        return self.request("POST", "/v1/admin/accounts", {"name": name})

    def deposit(self, account_id: int | str, asset: str, amount: str, deposit_id: str) -> R:
        body = {"account_id": account_id, "asset": asset, "amount": amount,
                "deposit_id": deposit_id}
        return self.request("POST", "/v1/admin/deposits", body)

    def set_market_state(self, market: str, state: str) -> R:
        return self.request("POST", f"/v1/admin/markets/{_seg(market)}/state", {"state": state})

    def list_accounts(self) -> R:
        return self.request("GET", "/v1/admin/accounts")

    def set_fee_tier(self, account_id: int | str, tier: int) -> R:
        return self.request("POST", f"/v1/admin/accounts/{_seg(account_id)}/fee-tier",
                            {"tier": tier})

    def audit(self) -> R:
        """Seq, state hash, invariants, conservation totals, snapshots, last recovery."""
        return self.request("GET", "/v1/admin/audit")

    def set_oracle_prices(self, prices: Mapping[str, str]) -> R:
        return self.request("POST", "/v1/oracle/prices", {"prices": dict(prices)})

    # ---- public ---------------------------------------------------------
    def health(self) -> R:
        return self.request("GET", "/v1/health", signed=False)

    def time(self) -> R:
        return self.request("GET", "/v1/time", signed=False)

    def assets(self) -> R:
        return self.request("GET", "/v1/assets", signed=False)

    def markets(self) -> R:
        return self.request("GET", "/v1/markets", signed=False)

    def market(self, market: str) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}", signed=False)

    def book(self, market: str, depth: int | None = 50) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}/book", params={"depth": depth},
                            signed=False)

    def trades(self, market: str, limit: int | None = None) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}/trades",
                            params={"limit": limit}, signed=False)

    def candles(self, market: str, interval: str = "1m", limit: int | None = None) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}/candles",
                            params={"interval": interval, "limit": limit}, signed=False)

    def ticker(self, market: str) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}/ticker", signed=False)

    def funding(self, market: str, limit: int | None = None) -> R:
        return self.request("GET", f"/v1/markets/{_seg(market)}/funding",
                            params={"limit": limit}, signed=False)

    def lending(self) -> R:
        return self.request("GET", "/v1/lending", signed=False)

    def insurance(self) -> R:
        return self.request("GET", "/v1/insurance", signed=False)

    def metrics(self) -> R:
        return self.request("GET", "/metrics", signed=False)

    # ---- private: orders ------------------------------------------------
    def place_order(self, **fields: Any) -> R:
        return self.request("POST", "/v1/orders", _clean(fields))

    def place_batch(self, orders: Sequence[Mapping[str, Any]], atomic: bool = False) -> R:
        body = {"orders": [_clean(o) for o in orders], "atomic": atomic}
        return self.request("POST", "/v1/orders/batch", body)

    def get_orders(self, market: str | None = None, status: str | None = None,
                   limit: int | None = None, cursor: str | None = None) -> R:
        params = {"market": market, "status": status, "limit": limit, "cursor": cursor}
        return self.request("GET", "/v1/orders", params=params)

    def get_order(self, order_id: str) -> R:
        return self.request("GET", f"/v1/orders/{_seg(order_id)}")

    def get_order_by_client_id(self, client_order_id: str) -> R:
        return self.request("GET", f"/v1/orders/by-client-id/{_seg(client_order_id)}")

    def amend_order(self, order_id: str, price: str | None = None,
                    size: str | None = None) -> R:
        return self.request("PATCH", f"/v1/orders/{_seg(order_id)}",
                            _clean({"price": price, "size": size}))

    def cancel_order(self, order_id: str) -> R:
        return self.request("DELETE", f"/v1/orders/{_seg(order_id)}")

    def cancel_all(self, market: str | None = None) -> R:
        return self.request("DELETE", "/v1/orders", params={"market": market})

    def cancel_batch(self, cancels: Sequence[Mapping[str, str]]) -> R:
        """Up to 20 cancels, each ``{"order_id"}`` or ``{"client_order_id"}``."""
        return self.request("POST", "/v1/orders/cancel-batch",
                            {"cancels": [dict(c) for c in cancels]})

    def fills(self, market: str | None = None, limit: int | None = None,
              cursor: str | None = None) -> R:
        return self.request("GET", "/v1/fills",
                            params={"market": market, "limit": limit, "cursor": cursor})

    # ---- private: account -----------------------------------------------
    def account(self) -> R:
        return self.request("GET", "/v1/account")

    def update_settings(self, **fields: Any) -> R:
        return self.request("PUT", "/v1/account/settings", _clean(fields))

    def get_risk_plan(self) -> R:
        return self.request("GET", "/v1/account/risk-plan")

    def set_risk_plan(self, plan: Mapping[str, Any]) -> R:
        return self.request("PUT", "/v1/account/risk-plan", dict(plan))

    def what_if(self, orders: Sequence[Mapping[str, Any]] = (),
                prices: Mapping[str, str] | None = None) -> R:
        body: dict[str, Any] = {"orders": [_clean(o) for o in orders]}
        if prices is not None:
            body["prices"] = dict(prices)
        return self.request("POST", "/v1/account/what-if", body)

    def dead_man_switch(self, timeout_ms: int) -> R:
        return self.request("POST", "/v1/account/dead-man-switch", {"timeout_ms": timeout_ms})

    def withdraw(self, asset: str, amount: str, withdrawal_id: str,
                 allow_borrow: bool = False) -> R:
        body = {"asset": asset, "amount": amount, "withdrawal_id": withdrawal_id,
                "allow_borrow": allow_borrow}
        return self.request("POST", "/v1/withdrawals", body)

    def ledger(self, asset: str | None = None, limit: int | None = None,
               cursor: str | None = None) -> R:
        return self.request("GET", "/v1/ledger",
                            params={"asset": asset, "limit": limit, "cursor": cursor})

    def funding_payments(self, market: str | None = None, limit: int | None = None,
                         cursor: str | None = None) -> R:
        return self.request("GET", "/v1/funding-payments",
                            params={"market": market, "limit": limit, "cursor": cursor})

    def create_key(self, permissions: Sequence[str], label: str | None = None) -> R:
        return self.request("POST", "/v1/account/keys",
                            _clean({"permissions": list(permissions), "label": label}))

    def revoke_key(self, api_key: str) -> R:
        return self.request("DELETE", f"/v1/account/keys/{_seg(api_key)}")


class AsyncExchangeClient(_Endpoints[Awaitable[Any]]):
    """Async client over one keep-alive ``httpx.AsyncClient``; every method is awaitable.

    Pass ``transport`` (e.g. ``httpx.ASGITransport(app)``) to talk to an app in-process.
    """

    def __init__(self, base_url: str, api_key: str | None = None,
                 api_secret: str | None = None, timeout: float = 10,
                 recv_window: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, api_secret, recv_window)
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def request(self, method: str, path: str, json: Any = None, params: Params = None,
                      signed: bool = True) -> Any:
        url, headers, content = self._prepare(method, path, json, params, signed)
        return _result(await self.http.request(method.upper(), url, headers=headers,
                                               content=content))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncExchangeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ExchangeClient(_Endpoints[Any]):
    """Synchronous twin of ``AsyncExchangeClient`` (same methods, one ``httpx.Client``)."""

    def __init__(self, base_url: str, api_key: str | None = None,
                 api_secret: str | None = None, timeout: float = 10,
                 recv_window: int | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, api_secret, recv_window)
        self.http = httpx.Client(timeout=timeout, transport=transport)

    def request(self, method: str, path: str, json: Any = None, params: Params = None,
                signed: bool = True) -> Any:
        url, headers, content = self._prepare(method, path, json, params, signed)
        return _result(self.http.request(method.upper(), url, headers=headers, content=content))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ExchangeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
