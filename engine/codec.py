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


def _expr(tp: Any, value: str, env: dict[str, Any]) -> str:
    """Python source decoding `value` (an expression) into type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _expr(args[0], "_v", env) if len(args) == 1 else "_v"
        if inner == "_v":
            return value
        return f"(None if (_v := {value}) is None else {inner})"
    if origin is tuple:
        return f"tuple([{_expr(typing.get_args(tp)[0], '_x', env)} for _x in {value}])"
    if isinstance(tp, type) and issubclass(tp, Enum):
        env[tp.__name__] = tp
        return f"{tp.__name__}({value})"
    if isinstance(tp, type) and issubclass(tp, c.Command):
        return f"decode({value})"
    return value


def _compile(cls: type[c.Command]) -> Decoder:
    """One generated function per command class: no per-field dispatch at decode time."""
    hints = typing.get_type_hints(cls, vars(c))
    env: dict[str, Any] = {"cls": cls, "decode": decode, "_MISSING": _MISSING}
    lines = ["def _decode(d):"]
    names = []
    for n, f in enumerate(dataclasses.fields(cls)):
        local = f"a{n}"
        names.append(f"{f.name}={local}")
        expr = _expr(hints[f.name], local, env)
        if f.default is dataclasses.MISSING:
            lines.append(f"    {local} = d[{f.name!r}]")
            if expr != local:
                lines.append(f"    {local} = {expr}")
        else:
            env[f"_default_{n}"] = f.default
            lines.append(f"    {local} = d.get({f.name!r}, _MISSING)")
            decoded = expr if expr != local else local
            lines.append(f"    {local} = _default_{n} if {local} is _MISSING else {decoded}")
    lines.append(f"    return cls({', '.join(names)})")
    exec(compile("\n".join(lines) + "\n", f"<decoder {cls.__name__}>", "exec"), env)  # noqa: S102
    fn: Decoder = env["_decode"]
    return fn


_MISSING = object()
_DECODERS: dict[str, Decoder] = {}


def decode(data: dict[str, Any]) -> c.Command:
    name = data.get("command", "")
    fn = _DECODERS.get(name)
    if fn is None:
        cls = _BY_NAME.get(name)
        if cls is None:
            raise ValueError(f"unknown command {data.get('command')!r}")
        fn = _DECODERS[name] = _compile(cls)
    try:
        cmd: c.Command = fn(data)
    except KeyError as exc:
        raise ValueError(f"{name}: missing field {exc}") from exc
    return cmd
