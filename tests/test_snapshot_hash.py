"""The state hash is SHA-256 of one canonical JSON text (sorted keys, no spaces,
non-ASCII escaped), whichever serializer wrote it: orjson on the fast path, the standard
library when orjson would write other bytes or refuses the data."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from engine.commands import CreateAccount, Deposit
from engine.exchange import Exchange
from engine.markets import default_config
from engine.snapshot import hash_snapshot
from tests.engine_helpers import run


def canonical(snap: dict[str, Any]) -> str:
    text = json.dumps(snap, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def engine_with(name: str) -> Exchange:
    ex = Exchange(default_config())
    run(ex, CreateAccount(name=name, api_key="k", api_secret="s"))
    run(ex, Deposit(account_id=ex.next_account_id - 1, asset="USDC", amount=5, deposit_id="d"))
    return ex


@pytest.mark.parametrize("name", ["alice", "Zoë 🚀", "a\x7fb", "tab\tand \"quote\" \\"])
def test_engine_state_hashes_as_the_canonical_text(name: str) -> None:
    ex = engine_with(name)
    snap = ex.snapshot()
    assert snap["accounts"][-1][1] == name
    assert hash_snapshot(snap) == canonical(snap) == ex.state_hash()


def test_non_ascii_text_hashes_as_the_escaped_canonical_text() -> None:
    snap = {"name": "Zoë 🚀", "a": [1, 2]}
    assert "Zo\\u00eb \\ud83d\\ude80" in json.dumps(snap)  # the canonical text
    assert hash_snapshot(snap) == canonical(snap)
    assert hash_snapshot(snap) != hash_snapshot({"name": "Zoe 🚀", "a": [1, 2]})


def test_data_orjson_refuses_still_hashes() -> None:
    snap = {"b": 2**70, "a": [1, "x"], "c": {"3": None}}  # beyond 64 bits
    assert hash_snapshot(snap) == canonical(snap)
    assert hash_snapshot({"b": 2**70 + 1}) != hash_snapshot({"b": 2**70})


def test_orders_are_written_field_by_field_in_order_fields_order() -> None:
    """`_order_out` spells the fields out for speed; it must equal reading ORDER_FIELDS
    one by one, for live, finished and untriggered orders of every kind."""
    from engine.book import ORDER_FIELDS
    from engine.snapshot import _order_out, order_fields
    from tests.test_replay_determinism import SEED, build_workload, replay_config

    cfg = replay_config(rebate=True)
    ex = Exchange(cfg)
    orders = []
    for i, cmd in enumerate(build_workload(cfg, SEED, 3000)):
        ex.apply(cmd)
        if i % 200 == 0:  # live orders along the way (few are left at the end)
            orders += [*ex.orders.values()]
    live = len(orders)
    orders += [*ex.done.values()]
    assert live > 50 and len(orders) > 500
    assert any(o.trigger_price is not None for o in orders)
    assert any(o.cancel_reason is not None for o in orders)
    for o in orders:
        row = _order_out(o)
        assert len(row) == len(ORDER_FIELDS) and row == order_fields(o)


def test_signatures_are_kept_60_s_and_snapshotted_as_the_pairs_they_are() -> None:
    """The engine remembers (signature, ts) of signed commands for 60 s, oldest first; a
    snapshot lists those very tuples (no per-pair copy at the seq boundary) and writes
    them as the [sig, ts] pairs earlier snapshots held, so their hashes still match."""
    from engine.commands import attach_signature

    ex = engine_with("alice")
    t0 = ex.last_ts
    for k, at in enumerate((t0 + 1, t0 + 30_000, t0 + 60_001, t0 + 60_002)):
        cmd = Deposit(account_id=ex.next_account_id - 1, asset="USDC", amount=1,
                      deposit_id=f"s{k}")
        attach_signature(cmd, f"sig{k}", at)
        run(ex, cmd, ts=at)
    # the first (t0 + 1) is more than 60 s older than the last (t0 + 60_002): forgotten
    assert list(ex.signatures) == [("sig1", t0 + 30_000), ("sig2", t0 + 60_001),
                                   ("sig3", t0 + 60_002)]
    snap = ex.snapshot()
    assert snap["signatures"][0] is ex.signatures[0]
    as_pairs = {**snap, "signatures": [[s, ts] for s, ts in ex.signatures]}  # the old form
    assert hash_snapshot(snap) == hash_snapshot(as_pairs) == canonical(as_pairs)
    restored = Exchange.restore(default_config(), json.loads(json.dumps(as_pairs)))
    assert list(restored.signatures) == list(ex.signatures)
    assert restored.state_hash() == ex.state_hash()


def test_a_signature_is_kept_until_the_timestamp_its_request_claimed_expires() -> None:
    """A request may be dated up to a receive window (60 s) ahead of the server, and stays
    valid until its own timestamp + 60 s, so the engine keeps its signature by the
    timestamp the request claimed, not the command's: a restart 70 s later still finds
    it spent. Only expired pairs at the front are dropped (those behind a later-expiring
    one wait for it); a journal written before `sig_ts` existed falls back to the
    command's ts."""
    from engine.codec import decode, encode
    from engine.commands import attach_signature

    ex = engine_with("alice")
    t0 = ex.last_ts
    acct = ex.next_account_id - 1

    def deposit(k: int, at: int, sig_ts: int | None) -> None:
        cmd = Deposit(account_id=acct, asset="USDC", amount=1, deposit_id=f"f{k}")
        if sig_ts is not None:
            attach_signature(cmd, f"sig{k}", sig_ts)
        else:  # as decoded from an older journal: a signature without its timestamp
            old = {**encode(cmd), "sig": f"sig{k}"}
            del old["sig_ts"]
            cmd = decode(old)
            assert cmd.sig_ts is None
        run(ex, cmd, ts=at)

    deposit(0, t0 + 1, t0 + 60_001)  # dated 60 s ahead
    deposit(1, t0 + 2, None)  # an old journal's command: kept by its own ts
    deposit(2, t0 + 70_000, t0 + 10_000)  # dated 60 s back
    # sig1 (t0 + 2) and sig2 have expired, but wait behind sig0, which is still valid
    assert list(ex.signatures) == [("sig0", t0 + 60_001), ("sig1", t0 + 2),
                                   ("sig2", t0 + 10_000)]
    restored = Exchange.restore(default_config(), json.loads(json.dumps(ex.snapshot())))
    assert list(restored.signatures) == list(ex.signatures)
    deposit(3, t0 + 120_002, t0 + 120_002)  # sig0 has now expired: all three go
    assert list(ex.signatures) == [("sig3", t0 + 120_002)]
    one = Exchange.restore(default_config(), json.loads(json.dumps(ex.snapshot())))
    deposit(4, t0 + 500_000, t0 + 400_000)  # expired on arrival, the deque empties
    assert list(ex.signatures) == []
    assert list(one.signatures) == [("sig3", t0 + 120_002)]


def test_a_stored_snapshot_is_the_text_its_hash_is_taken_of() -> None:
    """encode_snapshot serializes once: the stored (compressed) bytes are the canonical
    text, whose SHA-256 is the state hash, and they decode to the same engine."""
    import zlib

    from app.recovery import decode_snapshot, encode_snapshot

    ex = engine_with("Zoë")  # non-ASCII: the standard library's escaped text
    snap = ex.snapshot()
    data, checksum, state_hash = encode_snapshot(snap)
    text = zlib.decompress(data)
    assert text == json.dumps(snap, sort_keys=True, separators=(",", ":")).encode()
    assert state_hash == hashlib.sha256(text).hexdigest() == ex.state_hash()
    assert checksum == zlib.crc32(data)
    assert decode_snapshot(default_config(), data, checksum, state_hash).state_hash() == (
        state_hash)
