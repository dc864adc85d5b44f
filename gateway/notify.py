"""Wake-ups, so a loop reacts at once instead of at its next poll.

In one process, `Notifier.wake(name)` sets an event. Across processes on PostgreSQL, a
transaction calls `publish(session, name)` (`pg_notify`, delivered when it commits) and every
process's `PgListener` (LISTEN on one channel) wakes its own Notifier with each name the
notification carries (one per line). Polling
(`jobs.poll_s`) stays the fallback: a lost notification only costs latency, never work.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger(__name__)

CHANNEL = "transcribe_gateway"
DELIVERIES = "deliveries"


def task_channel(provider: str) -> str:
    """The wake-up name of the loop that claims `provider`'s tasks."""
    return f"tasks:{provider}"


def task_done_channel(task_id: str) -> str:
    """The wake-up name a request waiting for one task (sync-generate-audio) listens on."""
    return f"task:{task_id}"


def partial_channel(task_id: str) -> str:
    """The wake-up name of a task's newly stored partial texts (gateway/partials.py)."""
    return f"partial:{task_id}"


class Notifier:
    """Named wake-ups in one process. A name exists while something listens for it: a claim loop
    from its start (`listen`) to the end of the process, a request waiting for one task only
    while it waits (`subscribed`). Waking a name nobody listens for does nothing, so the names
    of finished tasks (woken here and by every other process's notifications) never pile up."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._listeners: dict[str, int] = {}

    def listen(self, name: str) -> None:
        """Keep `name` for good: a wake between two waits is not lost."""
        self._events.setdefault(name, asyncio.Event())
        self._listeners[name] = self._listeners.get(name, 0) + 1

    @contextlib.contextmanager
    def subscribed(self, name: str):
        """Listen for `name` for the duration of the block."""
        self.listen(name)
        try:
            yield
        finally:
            self._listeners[name] -= 1
            if not self._listeners[name]:
                del self._listeners[name], self._events[name]

    def wake(self, name: str) -> None:
        event = self._events.get(name)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._events.values():
            event.set()

    async def wait(self, name: str, timeout: float, *more: str) -> None:
        """Return when `name` (or any of `more`) is woken (or was woken since the last wait) or
        after `timeout` seconds, whichever is first. Call it while listening for them."""
        events = [self._events[n] for n in (name, *more)]
        if not more:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(events[0].wait(), timeout)
        elif not any(e.is_set() for e in events):
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        for e in events:
            e.clear()

    def names(self) -> int:
        """How many names are listened for (a finished task leaves none behind)."""
        return len(self._events)


PAYLOAD_BYTES = 7999  # PostgreSQL's limit on a notification's payload is 8,000 bytes
NOTIFY_SQL = "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload"  # driver SQL, (channel, payloads)


def notify_params(*names: str) -> tuple[str, list[str]]:
    """NOTIFY_SQL's parameters: the channel, and every name in as few notifications as will hold
    them (one name per line, up to PAYLOAD_BYTES a payload): a batch of results is one
    notification rather than one per task, each of which every listening process would read."""
    payloads, lines, size = [], [], -1
    for name in dict.fromkeys(names):
        if lines and size + 1 + len(name.encode()) > PAYLOAD_BYTES:
            payloads.append("\n".join(lines))
            lines, size = [], -1
        lines.append(name)
        size += 1 + len(name.encode())
    if lines:
        payloads.append("\n".join(lines))
    return CHANNEL, payloads


async def publish(session, *names: str) -> None:
    """Wake `names` in every process once this session's transaction commits (PostgreSQL only)."""
    if session.bind.dialect.name == "postgresql" and names:
        conn = await session.connection()
        await conn.exec_driver_sql(NOTIFY_SQL, notify_params(*names))


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgListener:
    """LISTEN on the channel and wake the local Notifier; reconnects after a lost connection."""

    def __init__(self, url: str, notifier: Notifier, retry_s: float = 1.0):
        self.url = libpq_url(url)
        self.notifier = notifier
        self.retry_s = retry_s
        self.listening = asyncio.Event()

    async def run(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.notifier.wake_all()  # whatever was missed while disconnected
                    async for n in conn.notifies():
                        for name in n.payload.split("\n"):
                            self.notifier.wake(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                log.warning("notify.listen_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.retry_s)
