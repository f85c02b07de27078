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


def canonical_text(snap: dict[str, Any]) -> str:
    return json.dumps(snap, sort_keys=True, separators=(",", ":"))


def canonical(snap: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_text(snap).encode()).hexdigest()


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
    one by one, for live, finished and untriggered orders of every kind. A finished
    order is kept as the fields of the view its last update carried (the Order's view
    when its command has ended), and a snapshot writes it as the first DONE_FIELDS of its
    row."""
    from engine.book import DONE_FIELDS, ORDER_FIELDS
    from engine.events import OrderView
    from engine.snapshot import _order_out, order_fields
    from tests.test_replay_determinism import SEED, build_workload, replay_config

    assert ORDER_FIELDS[:DONE_FIELDS] == OrderView._fields
    cfg = replay_config(rebate=True)
    ex = Exchange(cfg)
    seen = {}
    for i, cmd in enumerate(build_workload(cfg, SEED, 3000)):
        ex.apply(cmd)
        seen.update(ex.orders)
        if i % 200 == 0:  # live orders along the way (few are left at the end)
            for o in ex.orders.values():
                row = _order_out(o)
                assert len(row) == len(ORDER_FIELDS) and row == order_fields(o)
    finished = [o for oid, o in seen.items() if oid in ex.done]
    assert len(finished) > 300 and len(ex.done) > 600
    assert any(o.trigger_price is not None for o in finished)
    assert any(o.cancel_reason is not None for o in finished)
    written = {row[0]: row for row in json.loads(canonical_text(ex.snapshot()))["done"]}
    for o in finished:
        assert ex.done[o.order_id] == o.view() == ex.order(o.order_id)
        assert written[o.order_id] == order_fields(o)[:DONE_FIELDS]


def test_a_snapshot_holds_nothing_the_engine_changes_later() -> None:
    """A snapshot is encoded on another thread while the engine goes on: commands applied
    after it was taken do not change what it encodes to (it shares only the finished
    orders' immutable tuples with the engine), and orjson writes it as the standard
    library does."""
    from tests.test_replay_determinism import SEED, build_workload, replay_config

    cfg = replay_config(rebate=True)
    ex = Exchange(cfg)
    commands = build_workload(cfg, SEED, 3000)
    for cmd in commands[:2000]:
        ex.apply(cmd)
    snap = ex.snapshot()
    text = canonical(snap)
    assert hash_snapshot(snap) == text == ex.state_hash()
    assert len(snap["done"]) == len(ex.done) > 500
    assert all(type(row) is tuple and row is ex.done[row[0]] for row in snap["done"])
    for cmd in commands[2000:]:
        ex.apply(cmd)
    assert canonical(snap) == text != ex.state_hash()
    assert Exchange.restore(cfg, snap).check_invariants() == []


def test_request_signatures_are_not_engine_state() -> None:
    """The signature a command carries is journaled for the replay window, but the engine
    never reads it: the same commands with and without signatures reach the same state,
    and a snapshot holds no signatures (recovery reads them back from the journal)."""
    from engine.commands import attach_signature

    signed, plain = engine_with("alice"), engine_with("alice")
    t0 = signed.last_ts
    for k, at in enumerate((t0 + 1, t0 + 30_000, t0 + 60_001)):
        for ex in (signed, plain):
            cmd = Deposit(account_id=ex.next_account_id - 1, asset="USDC", amount=1,
                          deposit_id=f"s{k}")
            if ex is signed:
                attach_signature(cmd, f"sig{k}", at + 5_000)
            run(ex, cmd, ts=at)
    snap = signed.snapshot()
    assert "signatures" not in snap
    assert snap == plain.snapshot()
    assert signed.state_hash() == plain.state_hash()


def version_1(snap: dict[str, Any], signatures: list[list[Any]]) -> dict[str, Any]:
    """`snap` as version 1 wrote it: finished orders with every field of ORDER_FIELDS
    (the last five, which only a live order uses, made up here) and, before signatures
    left the engine, its list of request signatures."""
    old = {**snap, "version": 1, "done": [[*row, 0, 7, 3, 0, 0] for row in snap["done"]]}
    return {**old, "signatures": signatures} if signatures else old


@pytest.mark.parametrize("signatures", [[], [["ab" * 32, 60_000]]])
def test_a_version_1_snapshot_still_loads(signatures: list[list[Any]]) -> None:
    """Version 1 snapshots (finished orders with all their fields; before that, also a
    `signatures` list) were hashed in that shape: such a snapshot loads when its text
    matches that hash (checked before it is upgraded), into the same engine as the
    version 2 snapshot of the same state, and is refused when it does not match."""
    from app.recovery import SnapshotInvalid, decode_snapshot, encode_snapshot
    from tests.test_replay_determinism import SEED, build_workload, replay_config

    cfg = replay_config(rebate=True)
    ex = Exchange(cfg)
    for cmd in build_workload(cfg, SEED, 1000):
        ex.apply(cmd)
    assert len(ex.done) > 100
    old = version_1(ex.snapshot(), signatures)
    data, checksum, old_hash = encode_snapshot(old)
    assert old_hash == canonical(old) != ex.state_hash()
    restored = decode_snapshot(cfg, data, checksum, old_hash)
    assert restored.state_hash() == ex.state_hash()
    assert restored.snapshot() == ex.snapshot()
    with pytest.raises(SnapshotInvalid, match="state hash mismatch"):
        decode_snapshot(cfg, data, checksum, ex.state_hash())
    with pytest.raises(ValueError, match="unsupported snapshot version 1"):
        Exchange.restore(cfg, old)


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
