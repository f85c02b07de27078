"""Order-book checksum (API.md, WebSocket book channel).

checksum = zlib.crc32 (unsigned 32-bit) of the ASCII string built from the top 25
asks (ascending price) followed by the top 25 bids (descending price); each level
contributes its price string then its size string, each with every "." removed
and then leading "0" characters stripped; everything is concatenated with no
separator. Strings are used exactly as they appear on the wire (no re-formatting).

Normalisation examples: "65000.5" -> "650005"; "0.5" -> "05" -> "5";
"0.0001" -> "00001" -> "1"; "100" -> "100" (trailing zeros are kept).

Worked example: asks [["101.5","2"]], bids [["100","0.25"]] gives the string
"1015" + "2" + "100" + "025"->"25" = "1015210025", and the checksum is
zlib.crc32(b"1015210025") (tested in tests/test_signing.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

CHECKSUM_DEPTH = 25

Level = Sequence[str]


def normalize(value: str) -> str:
    """Remove every "." then strip leading zeros ("0.5" -> "5")."""
    return value.replace(".", "").lstrip("0")


def checksum_string(bids: Sequence[Level], asks: Sequence[Level]) -> str:
    """The string that is CRC'd: top 25 asks then top 25 bids, best first."""
    parts: list[str] = []
    for level in list(asks[:CHECKSUM_DEPTH]) + list(bids[:CHECKSUM_DEPTH]):
        parts.append(normalize(level[0]))
        parts.append(normalize(level[1]))
    return "".join(parts)


def book_checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """Unsigned CRC32 of ``checksum_string(bids, asks)``.

    ``bids`` must be best-first (descending price), ``asks`` best-first (ascending);
    each level is ``[price_str, size_str]``.
    """
    return zlib.crc32(checksum_string(bids, asks).encode("ascii")) & 0xFFFFFFFF
