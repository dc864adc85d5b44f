"""The one door every result enters through: `ingest(task_id, outcome)`, idempotent on task_id.

The first valid result wins: it is stored (the task with its payload, a transcript) with one
delivery per target, in a single transaction. An identical repeat is acknowledged and
ignored (`duplicate`); a different one is refused (`conflict`) and changes nothing. Every
result for a task leaves a CallbackReceipt saying which of these happened; one for no task
(`unknown_task`) leaves none (anyone can send those: they are counted in the metrics).

`Ingestor` is the door: one per process, it group-commits. Results that arrive while a
transaction is being written go into the next one, written on one of the database's writer
threads (`Database.on_writer`), and each caller is answered once its result is durable.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlmodel import col, select

from gateway import bulk, metrics
from gateway.config import Config
from gateway.db import Database, unavailable
from gateway.deliveries import PLUGIN_PREFIX
from gateway.models import CallbackReceipt, Delivery, Task, TaskStatus, Transcript, time_ordered_id, utcnow
from gateway.notify import DELIVERIES, NOTIFY_SQL, notify_params, task_done_channel
from gateway.payloads import Outcome, build_payload, serialise_result
from gateway.plugins import Plugins

log = structlog.get_logger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
UNKNOWN_TASK = "unknown_task"


@dataclass(frozen=True)
class IngestResult:
    outcome: str
    task_id: str | None


def delivery_targets(task: Task, config: Config, plugin_targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(target, kind) for every place a finished task goes: its callback_url, webhooks.urls, and
    `plugin_targets` (the plugins' share, the same for every task: see plugin_targets)."""
    urls = ([task.callback_url] if task.callback_url else []) + list(config.webhooks.urls)
    return [(u, "webhook") for u in dict.fromkeys(urls)] + plugin_targets


def plugin_targets(plugins: Plugins | None, success: bool) -> list[tuple[str, str]]:
    """(plugin:<name>, "plugin") for each loaded, active plugin implementing transcript_completed
    (or transcript_failed)."""
    if plugins is None:
        return []
    hook = "transcript_completed" if success else "transcript_failed"
    return [(PLUGIN_PREFIX + name, "plugin") for name in plugins.delivery_targets(hook)]


def body_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


async def find_task_id(db: Database, provider: str, external_id: str) -> str | None:
    """Our task for a remote provider's callback: the one whose upstream id is the payload's task_id.
    (A `local` callback carries our own task_id; ingest finds and checks that task itself.)"""
    async with db.session() as s:
        row = await s.exec(select(Task.id).where(Task.provider == provider,
                                                 Task.upstream_task_id == external_id))
        return row.first()


async def submission_in_flight(db: Database, provider: str) -> bool:
    """A live worker is sending the request that creates an upstream job of `provider` and has
    not stored its upstream id yet (Task.submitting_at): only then can an unknown id be ours.
    Not while a file is being uploaded first, nor for a task whose worker died."""
    async with db.session() as s:
        row = await s.exec(select(Task.id).where(Task.provider == provider, Task.status == TaskStatus.PROCESSING,
                                                 col(Task.upstream_task_id).is_(None),
                                                 col(Task.submitting_at).is_not(None),
                                                 col(Task.lease_expires_at) > utcnow()).limit(1))
        return row.first() is not None


async def find_task_id_waiting(db: Database, provider: str, external_id: str, wait_s: float,
                               step_s: float = 0.1) -> str | None:
    """find_task_id; for a remote provider, a callback may overtake the storing of the upstream id
    it answers (the service calls back before our submission has committed): while a submission
    to that provider is in flight, look again for up to `wait_s` seconds; else answer at once."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        task_id = await find_task_id(db, provider, external_id)
        if task_id is not None or asyncio.get_running_loop().time() >= deadline:
            return task_id
        if not await submission_in_flight(db, provider):
            return await find_task_id(db, provider, external_id)  # one may have been stored meanwhile
        await asyncio.sleep(step_s)


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
    ids = sorted({i.task_id for i in items if i.task_id is not None and i.known is None})
    tasks = {row.id: row for row in bulk.locked_rows(conn, Task.__table__, _TASK_COLUMNS, ids)}
    plan = plan_batch(items, tasks, config, plugins)
    _write(conn, plan)
    return plan, tasks


_TASK_COLUMNS = ("id", "provider", "model", "speaker", "callback_url", "progress", "result_sha256", "started_at")


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


@dataclass
class Plan:
    """What one batch writes: rows for each table, and each item's answer."""
    now: datetime
    results: list[IngestResult] = field(default_factory=list)
    stored: list[dict | None] = field(default_factory=list)  # the task update, for accepted items
    transcripts: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)
    receipts: list[dict] = field(default_factory=list)


def plan_batch(items: list[_Item], tasks: dict, config: Config, plugins: Plugins | None) -> Plan:
    """Decide each item (accepted, duplicate, conflict, unknown task) and build the rows to write."""
    plan = Plan(now=utcnow())
    digests = {tid: t.result_sha256 for tid, t in tasks.items()}
    plugins_for = {success: plugin_targets(plugins, success) for success in (True, False)}
    for item in items:
        task = tasks.get(item.task_id)
        if task is not None and task.provider != item.provider:
            task = None  # a result completes only its provider's task
        stored = None
        if item.known is not None:
            result = item.known
        elif task is None:
            result = IngestResult(UNKNOWN_TASK, None)
        else:
            payload = build_payload(task.id, item.outcome, model=task.model, speaker=task.speaker)
            text, digest = serialise_result(payload)
            if digests[task.id] is None:
                digests[task.id] = digest
                stored = _plan_result(plan, task, item.outcome, payload, text, digest,
                                      delivery_targets(task, config, plugins_for[item.outcome.success]))
                result = IngestResult(ACCEPTED, task.id)
            else:
                result = IngestResult(DUPLICATE if digests[task.id] == digest else CONFLICT, task.id)
        plan.results.append(result)
        plan.stored.append(stored)
        if result.task_id is not None:
            plan.receipts.append({"provider": item.provider, "external_task_id": item.external_task_id,
                                  "task_id": result.task_id, "body_sha256": item.raw_sha256,
                                  "outcome": result.outcome, "received_at": plan.now})
    return plan


def _plan_result(plan: Plan, task, outcome: Outcome, payload: dict, text: str, digest: str,
                 targets: list[tuple[str, str]]) -> dict:
    now = plan.now
    update = {"id": task.id, "result_json": text,
              "result_sha256": digest, "status": TaskStatus.COMPLETED if outcome.success else TaskStatus.FAILED,
              "error": None if outcome.success else payload["data"]["msg"],
              "speaker_note": outcome.speaker_note if outcome.success and task.speaker else None,
              "note": outcome.note if outcome.success else None,
              "progress": 1.0 if outcome.success else task.progress,
              "lease_owner": None, "lease_expires_at": None, "finished_at": now, "updated_at": now}
    if outcome.success:
        inner = payload["data"]["data"]
        segs = inner["data"]
        plan.transcripts.append({"task_id": task.id, "model": task.model,
                                 "duration": inner["usage_metadata"]["duration"], "segment_count": len(segs),
                                 "text": " ".join(x["text"] for x in segs), "created_at": now})
    plan.deliveries += [{"id": time_ordered_id(), "task_id": task.id, "target": target, "kind": kind,
                         "next_attempt_at": now, "created_at": now, "updated_at": now}
                        for target, kind in targets]
    return update


def _write(conn, plan: Plan) -> None:
    """The task updates, then each new table's rows (parents first, so foreign keys hold), each
    table at once; on PostgreSQL with the wake-ups' NOTIFY, all of it one statement."""
    updates = [u for u in plan.stored if u is not None]
    with bulk.writes(conn) as w:
        w.update_dicts(Task.__table__, "id", updates)
        w.insert_dicts(Transcript.__table__, plan.transcripts)
        w.insert_dicts(Delivery.__table__, plan.deliveries)
        w.insert_dicts(CallbackReceipt.__table__, plan.receipts)
        if updates:
            w.then(NOTIFY_SQL, notify_params(DELIVERIES, *(task_done_channel(u["id"]) for u in updates)))
