"""The journal codec: decode(encode(cmd)) == cmd for every command, deterministically."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from app import native
from engine import codec
from engine import commands as c
from engine.types import CancelReason, MarketState, OrderType, Side, StpMode, TimeInForce

ints = st.integers(min_value=0, max_value=2**62)
maybe_int = st.none() | ints
text = st.text(min_size=1, max_size=12)

place = st.builds(
    c.PlaceOrder,
    seq=ints,
    ts=ints,
    account_id=ints,
    market=text,
    side=st.sampled_from(Side),
    size=ints,
    type=st.sampled_from(OrderType),
    price=maybe_int,
    tif=st.sampled_from(TimeInForce),
    expire_ts=maybe_int,
    client_order_id=st.none() | text,
    stp=st.none() | st.sampled_from(StpMode),
    reduce_only=st.booleans(),
    trigger_price=maybe_int,
    sig=st.none() | text,
    sig_ts=maybe_int,
)
cancel = st.builds(
    c.CancelOrder,
    account_id=ints,
    order_id=maybe_int,
    client_order_id=st.none() | text,
    reason=st.sampled_from(CancelReason),
)
commands = st.one_of(
    place,
    cancel,
    st.builds(
        c.BatchPlace,
        account_id=ints,
        orders=st.lists(place, max_size=3).map(tuple),
        atomic=st.booleans(),
    ),
    st.builds(c.BatchCancel, account_id=ints, cancels=st.lists(cancel, max_size=3).map(tuple)),
    st.builds(
        c.CreateAccount,
        name=text,
        api_key=text,
        api_secret=text,
        permissions=st.lists(text, max_size=3).map(tuple),
    ),
    st.builds(c.Deposit, account_id=ints, asset=text, amount=ints, deposit_id=text),
    st.builds(
        c.Withdraw,
        account_id=ints,
        asset=text,
        amount=ints,
        withdrawal_id=text,
        allow_borrow=st.booleans(),
    ),
    st.builds(c.AmendOrder, account_id=ints, order_id=maybe_int, price=maybe_int, size=maybe_int),
    st.builds(c.SetMarketState, market=text, state=st.sampled_from(MarketState)),
    st.builds(
        c.SetAccountSettings,
        account_id=ints,
        stp=st.none() | st.sampled_from(StpMode),
        auto_borrow=st.none() | st.booleans(),
        tier=maybe_int,
    ),
    st.builds(c.OpenSession, account_id=ints),
    st.builds(c.Tick, seq=ints, ts=ints),
)


@given(commands)
def test_round_trip_through_json(cmd: c.Command) -> None:
    data = orjson.dumps(codec.encode(cmd), option=orjson.OPT_SORT_KEYS)
    assert codec.decode(orjson.loads(data)) == cmd
    assert orjson.dumps(codec.encode(cmd), option=orjson.OPT_SORT_KEYS) == data


def test_unknown_command_is_refused() -> None:
    try:
        codec.decode({"command": "DropTables"})
    except ValueError as exc:
        assert "DropTables" in str(exc)
    else:
        raise AssertionError("decode accepted an unknown command")


def test_generated_decoders_are_current() -> None:
    """engine/decoders.py is what engine/codegen.py makes of engine/commands.py now."""
    assert native.DECODERS_FILE.read_text() == native.generated_decoders(), (
        "engine/decoders.py is stale: run `exchange engine codegen`"
    )


def test_missing_field_and_bad_enum_are_value_errors() -> None:
    good = codec.encode(c.CancelOrder(account_id=7, order_id=3))
    assert codec.decode(good) == c.CancelOrder(account_id=7, order_id=3)
    for broken in ({k: v for k, v in good.items() if k != "account_id"}, {**good, "reason": "?"}):
        try:
            codec.decode(broken)
        except ValueError as exc:
            assert "CancelOrder" in str(exc) or "'?'" in str(exc)
        else:
            raise AssertionError(f"decode accepted {broken}")


def test_nested_commands_are_encoded_as_tagged_dicts() -> None:
    """codec.encode itself turns legs into dicts (orjson would also serialize a bare
    dataclass, silently without the tag, which is how a compiled-build bug hid)."""
    leg = c.PlaceOrder(account_id=1, market="BTC-USDC", side=Side.BUY, size=5, price=7)
    data = codec.encode(c.BatchPlace(account_id=1, orders=(leg,)))
    assert data["orders"] == [{**codec.encode(leg)}]
    assert type(data["orders"][0]) is dict and data["orders"][0]["command"] == "PlaceOrder"
    cancel = c.CancelOrder(account_id=1, order_id=9)
    assert codec.encode(c.BatchCancel(account_id=1, cancels=(cancel,)))["cancels"] == [
        {"command": "CancelOrder", "seq": 0, "ts": 0, "sig": None, "sig_ts": None,
             "account_id": 1,
         "order_id": 9, "client_order_id": None, "reason": "user"}
    ]
