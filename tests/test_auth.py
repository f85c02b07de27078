"""app.auth: every AuthError code, replay, window edges, revocation, permissions."""

from __future__ import annotations

from typing import Any

import pytest

from app.auth import Authenticator, AuthError, KeyRecord, has_permission, require
from exchange_client.signing import sign

NOW = 1_700_000_000_000
USER = KeyRecord("u1", "usersecret", 7, frozenset({"read", "trade"}))
REVOKED = KeyRecord("r1", "revsecret", 8, frozenset({"read"}), revoked=True)
ADMIN = KeyRecord("adm", "admsecret", None, frozenset({"admin"}))
ORACLE = KeyRecord("orc", "orcsecret", None, frozenset({"oracle"}))
KEYS = {k.api_key: k for k in (USER, REVOKED, ADMIN, ORACLE)}


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make(clock: Clock | None = None, **kw: int) -> Authenticator:
    return Authenticator(KEYS.get, clock=clock or Clock(), **kw)


def signed(key: KeyRecord = USER, ts: int = NOW, method: str = "POST",
           path: str = "/v1/orders", body: bytes = b'{"a":1}'
           ) -> tuple[str, str, str, str, str, bytes]:
    return (key.api_key, str(ts), sign(key.secret, ts, method, path, body), method, path, body)


def code_of(auth: Authenticator, *args: object, **kw: object) -> str:
    with pytest.raises(AuthError) as info:
        auth.verify(*args, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_valid_request_returns_record() -> None:
    assert make().verify(*signed()) is USER
    assert make().verify(*signed(), recv_window="60000") is USER


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_missing_headers(missing: int) -> None:
    args: list[Any] = list(signed())
    for value in (None, ""):
        args[missing] = value
        assert code_of(make(), *args) == "MISSING_AUTH_HEADERS"


@pytest.mark.parametrize("ts", ["abc", "1.5", "-5", "1e12", " 1", "１２", "9" * 30, True])
def test_invalid_timestamp(ts: object) -> None:
    args: list[Any] = list(signed())
    args[1] = ts
    assert code_of(make(), *args) == "INVALID_TIMESTAMP"


@pytest.mark.parametrize("rw", ["0", "60001", "abc", "-1", 0, 60001])
def test_invalid_recv_window(rw: object) -> None:
    assert code_of(make(), *signed(), recv_window=rw) == "INVALID_RECV_WINDOW"


def test_window_edges_are_inclusive_both_ways() -> None:
    auth = make()
    assert auth.verify(*signed(ts=NOW - 5000)) is USER
    assert auth.verify(*signed(ts=NOW + 5000)) is USER
    assert code_of(auth, *signed(ts=NOW - 5001)) == "TIMESTAMP_OUTSIDE_RECV_WINDOW"
    assert code_of(auth, *signed(ts=NOW + 5001)) == "TIMESTAMP_OUTSIDE_RECV_WINDOW"
    assert auth.verify(*signed(ts=NOW - 9000), recv_window="9000") is USER
    assert code_of(auth, *signed(ts=NOW - 9001), recv_window=9000) == (
        "TIMESTAMP_OUTSIDE_RECV_WINDOW")
    narrow = make(recv_window_ms=100)
    assert code_of(narrow, *signed(ts=NOW - 101)) == "TIMESTAMP_OUTSIDE_RECV_WINDOW"


def test_unknown_and_revoked_keys_look_the_same() -> None:
    auth = make()
    args: list[Any] = list(signed())
    args[0] = "nope"
    with pytest.raises(AuthError) as unknown:
        auth.verify(*args)
    with pytest.raises(AuthError) as revoked:
        auth.verify(*signed(REVOKED))
    assert unknown.value.code == revoked.value.code == "UNKNOWN_API_KEY"
    assert unknown.value.message == revoked.value.message
    assert unknown.value.status == 401


def test_invalid_signature_variants() -> None:
    auth = make()
    key, ts, sig, method, path, body = signed()
    assert code_of(auth, key, ts, sig, method, path, b'{"a":2}') == "INVALID_SIGNATURE"
    assert code_of(auth, key, ts, sig, method, path + "?x=1", body) == "INVALID_SIGNATURE"
    assert code_of(auth, key, ts, sig, "PUT", path, body) == "INVALID_SIGNATURE"
    assert code_of(auth, key, ts, sig.upper(), method, path, body) == "INVALID_SIGNATURE"
    assert code_of(auth, key, ts, "é" * 64, method, path, body) == "INVALID_SIGNATURE"
    other = sign(ADMIN.secret, NOW, method, path, body)  # right payload, wrong secret
    assert code_of(auth, key, ts, other, method, path, body) == "INVALID_SIGNATURE"
    assert auth.verify(key, ts, sig, method, path, body) is USER  # failures were not recorded


def test_replay_rejected_even_with_larger_window_then_expires() -> None:
    clock = Clock()
    auth = make(clock)
    args = signed()
    auth.verify(*args)
    assert code_of(auth, *args) == "REPLAYED_SIGNATURE"
    clock.now = NOW + 4000
    assert code_of(auth, *args) == "REPLAYED_SIGNATURE"
    clock.now = NOW + 59_000  # unsigned recv-window header cannot launder a replay
    assert code_of(auth, *args, recv_window="60000") == "REPLAYED_SIGNATURE"
    clock.now = NOW + 60_001
    assert code_of(auth, *args, recv_window="60000") == "TIMESTAMP_OUTSIDE_RECV_WINDOW"
    assert auth.remembered() == 0  # pruned lazily


async def test_a_request_dated_ahead_stays_spent_after_a_restart(db_url: str) -> None:
    """A request dated 59 s ahead of the server, with a 60 s window, is valid until its own
    timestamp + 60 s. The journal keeps the timestamp it claimed with its signature, and a
    restart reads the recent ones back into a fresh memory (as `Runtime.rebuild` does),
    so it is still refused 70 s after it was accepted, when the command's own ts + 60 s
    has passed, and 119 s after, when the journal row is older than one window."""
    from app.db import upgrade_async
    from app.recovery import RecoveryReport, spent_signatures
    from app.store import Store
    from engine.commands import Deposit, Tick, attach_signature, stamp
    from engine.exchange import Exchange
    from engine.markets import default_config

    clock = Clock()
    auth = make(clock)
    args = signed(ts=NOW + 59_000)
    record, claimed = auth.verify_request(*args, recv_window="60000")
    assert (record, claimed) == (USER, NOW + 59_000)
    other = signed(ts=NOW - 61_000, body=b"{}")  # a request whose window closed at NOW - 1
    ex = Exchange(default_config())
    commands = [Deposit(account_id=1, asset="USDC", amount=1, deposit_id=f"d{k}")
                for k in range(3)]
    attach_signature(commands[0], other[2], NOW - 61_000)
    attach_signature(commands[2], args[2], claimed)
    await upgrade_async(db_url)
    store = await Store.open(db_url)
    try:
        entries = []
        for k, cmd in enumerate(commands):
            stamp(cmd, k + 1, NOW - 1 + k)
            ex.apply(cmd)
            entries.append((cmd.seq, cmd.ts, cmd, []))
        await store.write_batch(entries)
        for now in (NOW + 70_000, NOW + 119_000):  # after a restart: a fresh memory
            clock.now = now
            rebuilt = make(clock)
            report = RecoveryReport()
            spent = await spent_signatures(store, ex, now, 60_000, report)
            assert spent == [(args[2], NOW + 59_000), (other[2], NOW - 61_000)]
            assert report.signatures == 2 and report.wire()["signatures"] == 2
            for sig, ts in spent:
                rebuilt.remember(sig, ts)
            assert code_of(rebuilt, *args, recv_window="60000") == "REPLAYED_SIGNATURE"
        clock.now = NOW + 119_001  # its own window is over
        assert code_of(rebuilt, *args, recv_window="60000") == "TIMESTAMP_OUTSIDE_RECV_WINDOW"
        # a clock behind the journal reads back from the journal's last ts instead
        assert await spent_signatures(store, ex, NOW - 300_000, 60_000, report) == spent
        # a clock ahead reads back from the journal's last ts: some already expired, kept
        assert await spent_signatures(store, ex, NOW + 500_000, 60_000, report) == spent
        # two windows after their commands, none of them can still be valid
        tick = Tick()
        stamp(tick, 4, NOW + 120_002)
        ex.apply(tick)
        await store.write_batch([(4, tick.ts, tick, [])])
        assert await spent_signatures(store, ex, NOW + 120_002, 60_000, report) == []
        assert report.wire()["signatures"] == 0
    finally:
        await store.close()


def test_ws_auth_payload() -> None:
    sig = sign(USER.secret, NOW, "GET", "/v1/ws", b"")
    auth = make()
    assert auth.verify("u1", NOW, sig, "GET", "/v1/ws", b"") is USER
    assert code_of(auth, "u1", NOW, sig, "GET", "/v1/ws", b"") == "REPLAYED_SIGNATURE"


def test_memory_bound_never_allows_replay() -> None:
    clock = Clock()
    auth = make(clock, max_remembered=3)
    requests = [signed(ts=NOW - 10 + i) for i in range(5)]
    for args in requests:
        auth.verify(*args)
    assert auth.remembered() == 3
    for args in requests:  # the two forgotten ones are refused by the horizon
        assert code_of(auth, *args) in {"REPLAYED_SIGNATURE", "TIMESTAMP_OUTSIDE_RECV_WINDOW"}
    assert auth.verify(*signed(ts=NOW + 1)) is USER


def test_permissions() -> None:
    require(USER, "read")
    require(USER, "trade")
    with pytest.raises(AuthError) as info:
        require(USER, "withdraw")
    assert (info.value.code, info.value.status) == ("PERMISSION_DENIED", 403)
    for perm in ("read", "trade", "withdraw", "admin", "oracle"):
        assert has_permission(ADMIN, perm)
    assert has_permission(ORACLE, "oracle")
    for perm in ("read", "trade", "withdraw", "admin"):
        assert not has_permission(ORACLE, perm)
    assert not has_permission(USER, "admin") and not has_permission(USER, "oracle")
    Authenticator.require(ADMIN, "withdraw")
