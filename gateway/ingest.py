"""The one door every result enters through: `ingest(task_id, outcome)`, idempotent on task_id.

The first valid result wins: it is stored (the task with its payload, a transcript) with one
delivery per target, in a single transaction. An identical repeat is acknowledged and
ignored (`duplicate`); a different one is refused (`conflict`) and changes nothing. Every
result for a task leaves a CallbackReceipt saying which of these happened; one for no task
(`unknown_task`) leaves none (anyone can send those: they are counted in the metrics).

`Ingestor` is the door: one per process, it group-commits. Results that arrive while a
transaction is being written go into the next one, written on one of the database's writer
threads (`Database.on_writer`), and each caller is answered once its result is durable. What
each result is, and what it writes, is decided in gateway/decisions.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

import structlog

from gateway import bulk, metrics
from gateway.config import Config
from gateway.db import Database, unavailable
from gateway.decisions import ACCEPTED, DUPLICATE, IngestResult, Plan, plan_batch
from gateway.models import CallbackReceipt, Delivery, PartialSegment, Task, Transcript
from gateway.notify import DELIVERIES, NOTIFY_SQL, notify_params, task_done_channel
from gateway.payloads import Outcome
from gateway.plugins import Plugins

log = structlog.get_logger(__name__)


class Ingestor:
    """The door, with group commit: results that arrive while a transaction is being written
    wait for the next one, which stores them all (one transaction, a few statements, one disk
    flush), so throughput grows with load instead of every result queueing for the writer on
    its own. Each caller still gets its own answer only after its result is durable. If a batch
    fails, its results are tried one by one, so one bad result never fails the others.

    A writer thread takes batch after batch from the waiting results itself, without going back
    to the event loop in between (which, under load, is busy serving requests), and hands each
    batch's answers to the loop as soon as it is durable. It gives its turn back to the process's
    other transactions after `turn_s` or when nothing waits. PostgreSQL runs `db.writers` such
    threads at once; SQLite one."""

    def __init__(self, db: Database, config: Config, plugins: Plugins | None, max_batch: int = 256,
                 remember: int = 16384, turn_s: float = 0.025):
        self.db = db
        self.config = config
        self.plugins = plugins
        self.max_batch = max_batch
        self.turn_s = turn_s
        # (provider, sha256 of a callback body) -> (task_id, its task_id field), for bodies that
        # were stored or acknowledged: the same bytes again can only be a duplicate.
        self._seen: OrderedDict[tuple[str, str], tuple[str, str | None]] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()  # _pending and _writing: shared with the writer threads
        self._pending: deque[_Item] = deque()
        self._writing = 0  # writer runs started and not yet out of work
        self._runs: set[asyncio.Task] = set()

    async def ingest(self, task_id: str | None, outcome: Outcome, *, provider: str,
                     external_task_id: str | None = None, raw_sha256: str = "") -> IngestResult:
        """Store the first result for `task_id` and schedule its deliveries; repeats change nothing."""
        return await self._enqueue(_Item(task_id, outcome, provider, external_task_id or task_id,
                                         raw_sha256 or "-", asyncio.get_running_loop().create_future()))

    async def repeat(self, provider: str, raw_sha256: str) -> IngestResult | None:
        """A callback body seen before, byte for byte: a duplicate, answered without parsing it
        (only its receipt is written). None if these bytes are new here."""
        seen = self._seen.get((provider, raw_sha256))
        if seen is None:
            return None
        self._seen.move_to_end((provider, raw_sha256))
        task_id, external_task_id = seen
        return await self._enqueue(_Item(task_id, None, provider, external_task_id, raw_sha256,
                                         asyncio.get_running_loop().create_future(),
                                         known=IngestResult(DUPLICATE, task_id)))

    def _remember_body(self, item: _Item, result: IngestResult) -> None:
        if item.raw_sha256 == "-" or result.outcome not in (ACCEPTED, DUPLICATE):
            return
        self._seen[(item.provider, item.raw_sha256)] = (result.task_id, item.external_task_id)
        self._seen.move_to_end((item.provider, item.raw_sha256))
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    async def _enqueue(self, item: _Item) -> IngestResult:
        with self._lock:
            self._pending.append(item)
            start = self._writing < self.db.writers
            self._writing += start
        if start:
            # its own context: not the first caller's, whose bound log fields (task_id) it would keep
            run = asyncio.create_task(self._run(asyncio.get_running_loop()), context=contextvars.Context())
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
        return await item.answer

    async def close(self) -> None:
        """Store what is waiting, then return once every writer run has ended."""
        while self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writer turns on a writer thread until nothing waits. Without a connection to write on,
        everything waiting fails alike (a 503 when the database is unreachable)."""
        run = _Run()
        while not run.ended:
            try:
                await self.db.on_writer(lambda conn: self._write_batches(conn, loop, run))
            except Exception as exc:
                while not run.ended and (batch := self._take(run)):
                    self._answer_batch(batch, [_Answer(exc)] * len(batch))

    def _take(self, run: _Run) -> list[_Item]:
        with self._lock:
            n = min(len(self._pending), self.max_batch)
            batch = [self._pending.popleft() for _ in range(n)]
            if not batch:
                self._writing -= 1  # under the lock: a result enqueued from now on starts a run
                run.ended = True
            return batch

    def _write_batches(self, conn, loop: asyncio.AbstractEventLoop, run: _Run) -> None:
        """On a writer thread: store batch after batch until none is left or `turn_s` is up."""
        deadline = time.monotonic() + self.turn_s
        while time.monotonic() < deadline and (batch := self._take(run)):
            answers = self._store(conn, batch)
            try:
                loop.call_soon_threadsafe(self._answer_batch, batch, answers)
            except RuntimeError:  # the loop is closed: nobody waits for these answers any more
                pass

    def _store(self, conn, items: list[_Item]) -> list[_Answer]:
        """Each item's answer: one transaction for the batch, or one per item if it fails for a
        reason other than an unreachable database."""
        try:
            with conn.begin():
                plan, tasks = store_batch(conn, items, self.config, self.plugins)
        except Exception as exc:
            if len(items) > 1 and not unavailable(exc):  # find the one that fails; the others go in
                return [a for item in items for a in self._store(conn, [item])]
            return [_Answer(exc)] * len(items)
        return [_Answer(result, True, tasks[result.task_id].started_at, plan.now) if stored is not None
                else _Answer(result) for result, stored in zip(plan.results, plan.stored)]

    def _answer_batch(self, items: list[_Item], answers: list[_Answer]) -> None:
        """On the event loop: log, count and answer a stored batch."""
        logger = log.bind()  # the configured logger, resolved once for the batch rather than per line
        for item, a in zip(items, answers):
            if isinstance(a.result, Exception):
                logger.warning("ingest.failed", task_id=item.task_id, error=type(a.result).__name__)
                _answer(item, a.result)
                continue
            fields = {"task_id": a.result.task_id or item.task_id, "provider": item.provider,
                      "outcome": a.result.outcome, "success": item.outcome.success if item.outcome else None}
            if a.stored and not item.outcome.success:  # a failure stored: say why
                logger.warning("ingest", error=item.outcome.error, **fields)
            else:
                logger.info("ingest", **fields)
            self._remember_body(item, a.result)
            if a.stored:
                metrics.observe_result(item.provider, a.started_at, a.now, item.outcome.success,
                                       item.outcome.duration)
            else:
                metrics.observe_repeat(item.provider, a.result.outcome)
            _answer(item, a.result)


def store_batch(conn, items: list[_Item], config: Config, plugins: Plugins | None) -> tuple[Plan, dict]:
    """In one transaction (on a writer thread): lock the items' tasks, decide each item in
    arrival order (a repeat in the same batch is a repeat), write every table at once (bulk)."""
    # known repeats too: a task deleted or cancelled since ignores them
    ids = sorted({i.task_id for i in items if i.task_id is not None})
    tasks = {row.id: row for row in bulk.locked_rows(conn, Task.__table__, _TASK_COLUMNS, ids)}
    plan = plan_batch(items, tasks, config, plugins)
    _write(conn, plan)
    return plan, tasks


_TASK_COLUMNS = ("id", "status", "provider", "model", "speaker", "callback_url", "progress", "result_sha256", "started_at",
                 "options")


@dataclass
class _Item:
    task_id: str | None
    outcome: Outcome | None  # None for a known repeat
    provider: str
    external_task_id: str | None
    raw_sha256: str
    answer: asyncio.Future
    known: IngestResult | None = None  # decided already (a known repeat): only its receipt is written


@dataclass
class _Run:
    ended: bool = False  # it found nothing waiting (and no longer counts as writing)


@dataclass(frozen=True)
class _Answer:
    """What became of one item of a batch: its IngestResult, or the exception that stopped it."""
    result: IngestResult | Exception
    stored: bool = False  # accepted, with its task's start time (for the job metrics)
    started_at: datetime | None = None
    now: datetime | None = None


def _answer(item: _Item, result) -> None:
    if item.answer.done():  # its caller was cancelled: the result is stored (or not) all the same
        return
    if isinstance(result, BaseException):
        item.answer.set_exception(result)
    else:
        item.answer.set_result(result)


def _write(conn, plan: Plan) -> None:
    """The task updates, then each new table's rows (parents first, so foreign keys hold), each
    table at once, and the finished tasks' partial texts removed; on PostgreSQL with the
    wake-ups' NOTIFY, all of it one statement."""
    updates = [u for u in plan.stored if u is not None]
    with bulk.writes(conn) as w:
        w.update_dicts(Task.__table__, "id", updates)
        w.insert_dicts(Transcript.__table__, plan.transcripts)
        w.insert_dicts(Delivery.__table__, plan.deliveries)
        w.insert_dicts(CallbackReceipt.__table__, plan.receipts)
        w.delete_in(PartialSegment.__table__, "task_id", [u["id"] for u in updates])  # the texts streamed so far
        if updates:
            w.then(NOTIFY_SQL, notify_params(DELIVERIES, *(task_done_channel(u["id"]) for u in updates)))
