"""In-process wake-ups, so a worker in the same process reacts at once instead of at its next poll."""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def wake(self, name: str) -> None:
        self._event(name).set()

    async def wait(self, name: str, timeout: float) -> None:
        """Return when `name` is woken or after `timeout` seconds, whichever is first."""
        event = self._event(name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()
