"""Decimal strings <-> integer atomic units, exactly or not at all.

Rule owned here: a wire amount is accepted only when it converts to an integer
number of atomic units without rounding; anything else is refused, never
silently rounded. Formatting drops trailing zeros ("65000.5", "1", "0.0001").
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


class FixedPointError(ValueError):
    """The text is not a decimal, or has more precision than the unit allows."""


def parse_units(text: str, decimals: int) -> int:
    """'65000.5' with 6 decimals -> 65000500000. Raises FixedPointError if inexact."""
    if not isinstance(text, str) or not text or len(text) > 64:
        raise FixedPointError("expected a decimal string")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise FixedPointError(f"not a decimal: {text!r}") from exc
    if not value.is_finite():
        raise FixedPointError(f"not a finite decimal: {text!r}")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise FixedPointError(f"{text} has more than {decimals} decimal places")
    return int(scaled)


def format_units(units: int, decimals: int) -> str:
    """65000500000 with 6 decimals -> '65000.5'; trailing zeros dropped."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    if decimals == 0:
        return f"{sign}{units}"
    whole, frac = divmod(units, 10**decimals)
    if frac == 0:
        return f"{sign}{whole}"
    frac_text = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{sign}{whole}.{frac_text}"


def ceil_div(a: int, b: int) -> int:
    """Integer division rounding towards +infinity (b > 0)."""
    return -((-a) // b)
