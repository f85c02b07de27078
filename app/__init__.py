"""The edges around the engine: sequencer, store, API, WebSocket, CLI.

Importing `app` chooses the engine build (compiled or pure Python) before
anything imports `engine`; see app/native.py.
"""

from app import native as _native

_native.select()
