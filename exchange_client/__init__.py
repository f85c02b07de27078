"""Client library for the exchange's v1 API: REST and WebSocket (async and sync), signing,
book following with resync, reconnecting streams. Guide: docs/client.md."""

from .book import BookChecksumError, BookFollower, BookGapError, BookSet
from .checksum import book_checksum, checksum_string
from .errors import ApiError
from .rest import AsyncExchangeClient, ExchangeClient
from .signing import auth_headers, sign, ws_auth_frame
from .ws import Backoff, ExchangeWebSocket, MarketStream
from .ws_sync import SyncExchangeWebSocket, SyncMarketStream

__all__ = [
    "ApiError",
    "AsyncExchangeClient",
    "Backoff",
    "BookChecksumError",
    "BookFollower",
    "BookGapError",
    "BookSet",
    "ExchangeClient",
    "ExchangeWebSocket",
    "MarketStream",
    "SyncExchangeWebSocket",
    "SyncMarketStream",
    "auth_headers",
    "book_checksum",
    "checksum_string",
    "sign",
    "ws_auth_frame",
]
