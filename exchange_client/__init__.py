"""Client library for the exchange's v1 API (REST, WebSocket, signing, book checksum)."""

from .checksum import book_checksum, checksum_string
from .errors import ApiError
from .rest import AsyncExchangeClient, ExchangeClient
from .signing import auth_headers, sign, ws_auth_frame
from .ws import BookChecksumError, BookFollower, BookGapError, ExchangeWebSocket

__all__ = [
    "ApiError",
    "AsyncExchangeClient",
    "BookChecksumError",
    "BookFollower",
    "BookGapError",
    "ExchangeClient",
    "ExchangeWebSocket",
    "auth_headers",
    "book_checksum",
    "checksum_string",
    "sign",
    "ws_auth_frame",
]
