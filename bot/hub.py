"""Live connections of citizens' web chats, so staff replies and handoff changes reach them.

The hub holds this process's open websockets. A frame for a conversation is published through
the fan-out (`crm_backend.shared.FanOut`): every app process's hub hears it and sends it to the
sockets of that conversation it holds, so a reply produced on one process reaches a page open
on another. With the in-process fan-out (one app process) that is this hub alone.

A frame published while this process could not hear the fan-out (Redis restarted) is lost to
it; when it hears again, the hub closes its sockets with 1012 (service restart), and each page
reconnects at once and shows its conversation again from the log (the welcome's history).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from aiohttp import WSCloseCode, web

from crm_backend.shared import FanOut
from crm_backend.shared.local import LocalFanOut

logger = logging.getLogger(__name__)

TOPIC = "webchat"


class ConversationHub:
    """Which websockets are open for which conversation, here; frames for them from any process."""

    def __init__(self, fanout: FanOut | None = None) -> None:
        self._sockets: defaultdict[int, set[web.WebSocketResponse]] = defaultdict(set)
        self._fanout: FanOut = fanout if fanout is not None else LocalFanOut()
        self._fanout.subscribe(TOPIC, self._receive)
        self._fanout.on_gap(self.resync)

    def register(self, conversation_id: int, ws: web.WebSocketResponse) -> None:
        if ws not in self._sockets[conversation_id]:
            self._sockets[conversation_id].add(ws)
            self._fanout.join(TOPIC, str(conversation_id))

    def unregister(self, conversation_id: int, ws: web.WebSocketResponse) -> None:
        sockets = self._sockets.get(conversation_id)
        if sockets is None or ws not in sockets:
            return
        sockets.discard(ws)
        self._fanout.leave(TOPIC, str(conversation_id))
        if not sockets:
            del self._sockets[conversation_id]

    def connected(self, conversation_id: int) -> bool:
        """Whether this process holds an open socket of the conversation."""
        return bool(self._sockets.get(conversation_id))

    async def publish(self, conversation_id: int, frame: dict[str, Any]) -> bool:
        """Send a frame to every open socket of the conversation, on whichever process holds it.

        Returns:
            Whether a page of the conversation is open somewhere (so the frame was delivered live).
        """
        online = await self._fanout.listening(TOPIC, str(conversation_id))
        await self._fanout.publish(TOPIC, {"conversation_id": conversation_id, "frame": frame})
        return online

    async def _receive(self, message: dict[str, Any]) -> None:
        await self.deliver_here(int(message["conversation_id"]), message["frame"])

    async def deliver_here(self, conversation_id: int, frame: dict[str, Any]) -> int:
        """Send a frame to this process's open sockets of the conversation; returns how many got it."""
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

    async def resync(self) -> None:
        """Frames for this process's pages may have been lost: each page reconnects and reads its history."""
        count = await self._close_sockets(WSCloseCode.SERVICE_RESTART, b"resync")
        logger.info("asked %d web chat pages to resync", count)

    async def close_all(self) -> None:
        await self._close_sockets(WSCloseCode.GOING_AWAY, b"")

    async def _close_sockets(self, code: int, message: bytes) -> int:
        closed = 0
        for conversation_id, sockets in list(self._sockets.items()):
            for ws in list(sockets):
                self.unregister(conversation_id, ws)
                await ws.close(code=code, message=message)
                closed += 1
        return closed
