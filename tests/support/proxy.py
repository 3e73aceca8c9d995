"""A loopback TCP relay in a background thread, to put the real engine behind a switch.

`forward` relays to the real engine; `stall` accepts connections and never answers
(an engine that hangs); `stopped` means nothing listens (an engine that is down), and the
connections already open (the app's keep-alive pool) are cut. What clients sent through it
is kept in `sent`, to inspect their request lines.
"""

from __future__ import annotations

import asyncio
import re
import threading


class EngineSwitch:
    """Listens on `port` and, depending on `mode`, relays to `target_port` or stalls."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.mode = "forward"
        self.sent = bytearray()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def start(self, mode: str = "forward") -> None:
        self.mode = mode
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=5)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.close()
            self._open.clear()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        if self.mode == "stall":
            await asyncio.sleep(60)
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.add(upstream_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool = False) -> None:
            try:
                while data := await src.read(65536):
                    if record:
                        self.sent.extend(data)
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()
                self._open.discard(dst)

        await asyncio.gather(pipe(reader, upstream_writer, record=True), pipe(upstream_reader, writer))

    def request_lines(self) -> list[str]:
        """The HTTP request lines clients sent through the relay ("GET /status?x=1 HTTP/1.1")."""
        # Not anchored to a line start: on a kept-alive connection a request follows the
        # previous one's body directly.
        return re.findall(r"(?:GET|POST|PUT|DELETE|PATCH|HEAD) /\S* HTTP/1\.[01]", self.sent.decode("latin-1"))
