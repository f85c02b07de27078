"""Commands <-> plain JSON-able dicts, for the journal.

Rule owned here: `decode(encode(cmd)) == cmd` for every command, and the encoding
is deterministic (same command, same dict), so journal checksums are stable.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

from engine import commands as c

_BY_NAME: dict[str, type[c.Command]] = {cls.__name__: cls for cls in c.ALL_COMMANDS}


def _encode_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, c.Command):
        return encode(value)
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


Decoder = Callable[[Any], Any]


def _identity(v: Any) -> Any:
    return v


def _decoder_for(tp: Any) -> Decoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder_for(args[0]) if len(args) == 1 else _identity
        return lambda v: None if v is None else inner(v)
    if origin is tuple:
        item = _decoder_for(typing.get_args(tp)[0])
        return lambda v: tuple(item(x) for x in v)
    if isinstance(tp, type) and issubclass(tp, Enum):
        enum_tp = tp
        return lambda v: enum_tp(v)
    if isinstance(tp, type) and issubclass(tp, c.Command):
        return lambda v: decode(v)
    return _identity


_DECODERS: dict[str, list[tuple[str, Decoder]]] = {}


def _decoders(cls: type[c.Command]) -> list[tuple[str, Decoder]]:
    found = _DECODERS.get(cls.__name__)
    if found is None:
        hints = typing.get_type_hints(cls, vars(c))
        found = [(f.name, _decoder_for(hints[f.name])) for f in dataclasses.fields(cls)]
        _DECODERS[cls.__name__] = found
    return found


def decode(data: dict[str, Any]) -> c.Command:
    cls = _BY_NAME.get(data.get("command", ""))
    if cls is None:
        raise ValueError(f"unknown command {data.get('command')!r}")
    kwargs = {name: dec(data[name]) for name, dec in _decoders(cls) if name in data}
    return cls(**kwargs)
