"""Commands <-> plain JSON-able dicts, for the journal.

Rule owned here: `decode(encode(cmd)) == cmd` for every command, and the encoding
is deterministic (same command, same dict), so journal checksums are stable.
Decoding is done by the generated functions of `engine.decoders`.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from engine import commands as c
from engine.decoders import DECODERS


def _encode_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if type(value) in _FIELD_NAMES:  # a nested command. Not isinstance(value, c.Command):
        return encode(value)  # compiled, that tests the exact class, not subclasses
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


_FIELD_NAMES: dict[type[c.Command], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in c.ALL_COMMANDS
}
_PLAIN = (int, str, bool, type(None))


def encode(cmd: c.Command) -> dict[str, Any]:
    out: dict[str, Any] = {"command": type(cmd).__name__}
    for name in _FIELD_NAMES[type(cmd)]:
        value = getattr(cmd, name)
        out[name] = value if type(value) in _PLAIN else _encode_value(value)
    return out


def decode(data: dict[str, Any]) -> c.Command:
    name = data.get("command", "")
    fn = DECODERS.get(name)
    if fn is None:
        raise ValueError(f"unknown command {name!r}")
    try:
        return fn(data)
    except KeyError as exc:
        raise ValueError(f"{name}: missing field or unknown value {exc}") from exc
