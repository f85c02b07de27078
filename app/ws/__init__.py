"""WebSocket layer: the fan-out hub (`hub.py`); never await the slowest client."""

from app.ws.hub import PRIVATE_CHANNELS, Connection, Hub, HubMetrics

__all__ = ["PRIVATE_CHANNELS", "Connection", "Hub", "HubMetrics"]
