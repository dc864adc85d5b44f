"""Upload bodies take turns: at most server.max_concurrent_uploads are read at once.

The others wait with their connections paused: aiohttp stops reading a socket once a request's
buffer is full, so TCP back-pressure holds the rest of their bytes in the client. The event loop
then reads a few fast streams at a time instead of hundreds, and short requests (/healthz, a
status) are not kept waiting behind hundreds of uploads, while the uploads go as fast as before
(bench/loop.py: docs/ARCHITECTURE.md).

A body takes its turn before its first read (its first bytes have usually come with its
headers: reading them without a turn let 200 bodies opened at once be parsed all together).
A turn is for a body that is arriving fast. A body that brings less than `MIN_BYTES` in a window
of `WINDOW_S` while it has a turn gives the turn to the next one; its next read waits without a
turn (a slow sender costs the loop little) and then it queues again. So slow senders cannot hold
every turn. The time waited counts towards server.body_timeout_s like the time spent reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Awaitable, TypeVar

from aiohttp import web
from prometheus_client import Gauge

WINDOW_S = 0.5
MIN_BYTES = 1 << 16  # per WINDOW_S: 128 KiB/s keeps a turn

RECEIVING = Gauge("tgw_uploads_receiving", "Upload bodies being read now (at most server.max_concurrent_uploads).")
WAITING = Gauge("tgw_uploads_waiting", "Upload bodies waiting for their turn to be read.")

T = TypeVar("T")


class Turns:
    def __init__(self, limit: int):
        self._places = asyncio.Semaphore(limit) if limit else None

    @contextlib.asynccontextmanager
    async def turn(self, request: web.Request) -> AsyncIterator["Turn"]:
        """A body's reading, every read through `Turn.read`, its turn taken first and given back
        however it ends; a body that is already in memory (it came with its headers) needs no turn."""
        turn = Turn(None if request.content.is_eof() else self._places)
        try:
            if turn.places is not None:
                await turn.take()
            yield turn
        finally:
            turn.give_up()


class Turn:
    def __init__(self, places: asyncio.Semaphore | None):
        self.places, self.held = places, False
        self.window_start, self.window_bytes = 0.0, 0

    async def read(self, reading: Awaitable[T]) -> T:
        """`reading` (a read of the body: a chunk, a part's headers), within this body's turn; without
        one when it has none yet or has just given it up (then it queues for a turn after)."""
        if self.places is None:
            return await reading
        if not self.held:
            result = await reading  # waits for the sender without a turn
            await self.take()
            return result
        pending = asyncio.ensure_future(reading)
        try:
            done, _ = await asyncio.wait((pending,), timeout=WINDOW_S)
            if not done:  # nothing arrived for a whole window
                self.give_up()
                result = await pending
                await self.take()
                return result
        finally:
            if not pending.done():
                pending.cancel()
        result = pending.result()
        self._count(len(result) if isinstance(result, (bytes, bytearray)) else 0)
        return result

    def _count(self, size: int) -> None:
        """A window that brought less than MIN_BYTES ends the turn."""
        self.window_bytes += size
        if time.monotonic() - self.window_start >= WINDOW_S:
            if self.window_bytes < MIN_BYTES:
                self.give_up()
            else:
                self.window_start, self.window_bytes = time.monotonic(), 0

    async def take(self) -> None:
        WAITING.inc()
        try:
            await self.places.acquire()
        finally:
            WAITING.dec()
        self.held = True
        RECEIVING.inc()
        self.window_start, self.window_bytes = time.monotonic(), 0

    def give_up(self) -> None:
        """The turn goes to the next body (at the end, early once the body is read, or when slow)."""
        if self.held:
            self.held = False
            RECEIVING.dec()
            self.places.release()
