"""`@message`: how commands are declared. Immutable to the type checker, cheap to build.

mypy treats a `@message` class as a frozen, keyword-only dataclass, so code that
assigns to a command's field does not type-check (`make lint`). At run time it
is a slotted dataclass without the frozen `__setattr__` guard, which cost a
microsecond per command built (a third of decoding a journal row); equality and
hashing are by value as for a frozen dataclass. The sequencer's `stamp` is the
one place that writes to a command, once, before anyone else sees it.

Left interpreted by the compiled build: mypyc compiles neither a
`dataclass_transform` function nor the classes it decorates as native classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def message(cls: type[T]) -> type[T]:
    return dataclass(slots=True, kw_only=True, unsafe_hash=True)(cls)
