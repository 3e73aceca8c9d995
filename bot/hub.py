"""Live connections of citizens' web chats, so staff replies and handoff changes reach them."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)


class ConversationHub:
    """Which websockets are open for which conversation."""

    def __init__(self) -> None:
        self._sockets: defaultdict[int, set[web.WebSocketResponse]] = defaultdict(set)

    def register(self, conversation_id: int, ws: web.WebSocketResponse) -> None:
        self._sockets[conversation_id].add(ws)

    def unregister(self, conversation_id: int, ws: web.WebSocketResponse) -> None:
        sockets = self._sockets.get(conversation_id)
        if sockets is None:
            return
        sockets.discard(ws)
        if not sockets:
            del self._sockets[conversation_id]

    def connected(self, conversation_id: int) -> bool:
        return bool(self._sockets.get(conversation_id))

    async def publish(self, conversation_id: int, frame: dict[str, Any]) -> int:
        """Send a frame to every open socket of the conversation; returns how many got it."""
        delivered = 0
        for ws in list(self._sockets.get(conversation_id, ())):
            if ws.closed:
                self.unregister(conversation_id, ws)
                continue
            try:
                await ws.send_json(frame)
                delivered += 1
            except (ConnectionError, RuntimeError):
                logger.info("dropping a closed web chat socket of conversation %s", conversation_id)
                self.unregister(conversation_id, ws)
        return delivered

    async def close_all(self) -> None:
        for sockets in list(self._sockets.values()):
            for ws in list(sockets):
                await ws.close()
        self._sockets.clear()
