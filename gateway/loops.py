"""The loops of a worker process: claim tasks and run them on their provider; claim deliveries
and send them.

Every loop takes work from the database with a lease, so a process that dies loses nothing:
its leases expire and another loop (or the restarted process) claims the work again. There is
one task loop per configured provider (the local engine: `engine.concurrency` at once; a
remote provider: its `concurrency`) and one delivery loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from gateway import deliveries, ingest, leases, lifecycle, partials, retention, streams
from gateway.config import Config
from gateway.db import Database
from gateway.models import Asset, Task
from gateway.notify import DELIVERIES, Notifier, partial_channel, task_channel, task_done_channel
from gateway.payloads import Outcome
from gateway.plugins import Plugins
from gateway.providers import Job, PermanentError, Pending, Provider, Providers, RetryableError, TaskCancelled
from gateway.urls import UrlPolicy

log = structlog.get_logger(__name__)


@dataclass
class _Running:
    """What a running task's provider reported and the task loop has yet to store."""

    progress: float = 0.0
    stored: float = 0.0  # the progress last stored
    texts: list[tuple[float, float, str]] = field(default_factory=list)  # decoded, not stored yet
    seq: int = 0  # the number of the next text stored
    cancelled: threading.Event = field(default_factory=threading.Event)  # the task was cancelled or deleted

    def report(self, fraction: float) -> None:
        if self.cancelled.is_set():
            raise TaskCancelled("the task was cancelled")
        self.progress = fraction

    def decoded(self, start: float, end: float, text: str) -> None:
        self.texts.append((start, end, text))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def no_callback_reason(provider: Provider, upstream_task_id: str) -> str:
    waited = (f"providers.{provider.name}.timeout_s ({provider.callback_timeout_s:g} s)"
              if provider.callback_timeout_s is not None else "the time it was given")
    return f"no callback from provider {provider.name!r} for its task {upstream_task_id} within {waited}"


class Loops:
    """The task loops and the delivery loop of one process, and the asyncio tasks each runs its
    claimed items in. (A `providers.Job` is what one provider run is given; nothing here is one.)"""

    def __init__(self, db: Database, config: Config, providers: Providers, notifier: Notifier,
                 http: aiohttp.ClientSession, plugins: Plugins | None, ingestor: ingest.Ingestor):
        self.db = db
        self.ingestor = ingestor
        self.plugins = plugins
        self.config = config
        self.providers = providers
        self.notifier = notifier
        self.http = http
        self.owner = worker_id()
        self.stopping = False
        self.url_policy = UrlPolicy.of(config.server)
        self._client_http: aiohttp.ClientSession | None = None
        self._runs: dict[asyncio.Task, Task] = {}                   # tasks being run on their provider
        self._sends: dict[asyncio.Task, leases.Claimed] = {}    # running deliveries
        self._loops: list[asyncio.Task] = []
        self._claiming: set[asyncio.Task] = set()  # loops waiting for a claim's answer

    def start(self) -> None:
        """Start every loop of this process: one per provider, the delivery loop, the retention sweep."""
        coros = [self.task_loop(p) for p in self.providers.active.values()] + [self.delivery_loop(),
                                                                               self.retention_loop()]
        self._loops = [asyncio.create_task(c) for c in coros]

    async def _claim_loop(self, name: str, parallel: int, claim, run, idle_s, running: dict) -> None:
        """Claim work while a slot is free and run each claimed item in its own asyncio task (in
        `running`, with its item, until it ends)."""
        slots = asyncio.Semaphore(parallel)
        me = asyncio.current_task()
        self.notifier.listen(name)
        failed = object()
        while True:
            await slots.acquire()
            if self.stopping:
                return
            self._claiming.add(me)  # stop() lets a claim finish: cancelled, its row could stay ours
            try:
                item = await claim()
            except Exception:
                item = failed
                log.exception(f"{name}.claim_failed")
            finally:
                self._claiming.discard(me)
            if self.stopping:
                return  # what was just claimed, stop() gives back
            if item is failed or item is None:
                slots.release()
                if item is failed:
                    await asyncio.sleep(self.config.jobs.poll_s)
                else:
                    await self.notifier.wait(name, await idle_s())
                continue
            work = asyncio.create_task(run(item))
            running[work] = item
            work.add_done_callback(lambda w: (running.pop(w, None), slots.release()))

    # --- tasks ---------------------------------------------------------------------------

    async def task_loop(self, provider: Provider) -> None:
        async def idle_s() -> float:
            return self.config.jobs.poll_s

        await self._claim_loop(
            task_channel(provider.name), provider.concurrency,
            lambda: leases.claim_task(self.db, self.owner, self.config.jobs.lease_s, [provider.name]),
            lambda task: self._run_task(provider, task), idle_s, self._runs)

    async def _run_task(self, provider: Provider, task: Task) -> None:
        structlog.contextvars.bind_contextvars(task_id=task.id, provider=provider.name)
        log.info("task.claimed", attempt=task.attempts)
        t0 = time.perf_counter()
        try:
            if task.upstream_task_id:  # submitted earlier; the provider's callback never came
                outcome = Outcome.failure(no_callback_reason(provider, task.upstream_task_id))
            elif task.attempts > self.config.jobs.max_attempts:
                outcome = Outcome.failure(f"gave up after {task.attempts - 1} interrupted attempts")
            else:
                outcome = await self._run_with_lease(provider, task)
        except TaskCancelled:
            log.info("task.stopped", attempt=task.attempts, reason="cancelled or deleted while it ran")
            return
        except Exception as exc:
            if isinstance(exc, RetryableError):
                reason = str(exc)
                log.warning("task.error", attempt=task.attempts, error=reason)
            else:
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("task.error", attempt=task.attempts)
            if task.attempts < self.config.jobs.max_attempts:
                delay = self.config.jobs.backoff.delay(task.attempts)
                log.warning("task.retry", attempt=task.attempts, retry_in_s=delay, error=reason)
                await leases.release_task(self.db, task.id, self.owner, error=reason, delay_s=delay)
                return
            outcome = Outcome.failure(f"failed after {task.attempts} attempts: {reason}")
        if isinstance(outcome, Pending):
            await self._await_upstream(provider, task, outcome)
            return
        await self._ingest(provider, task, outcome, t0)

    async def _await_upstream(self, provider: Provider, task: Task, pending: Pending) -> None:
        try:
            handed = await leases.await_upstream(self.db, task.id, self.owner, provider.name,
                                                pending.upstream_task_id, pending.wait_s)
        except Exception:  # the lease expires, the task is submitted again; this upstream id is lost
            log.exception("task.submitted_not_stored", upstream_task_id=pending.upstream_task_id)
            return
        if handed:
            log.info("task.submitted", upstream_task_id=pending.upstream_task_id, wait_s=pending.wait_s)
        else:  # our lease had expired and another worker holds the task now
            log.warning("task.submitted_lease_lost", upstream_task_id=pending.upstream_task_id)

    async def _ingest(self, provider: Provider, task: Task, outcome: Outcome, t0: float) -> None:
        try:
            result = await self.ingestor.ingest(task.id, outcome, provider=provider.name)
        except Exception:
            log.exception("task.ingest_failed")  # the lease expires and the task is run again
            return
        fields = {"outcome": result.outcome, "seconds": round(time.perf_counter() - t0, 3)}
        if outcome.success:
            log.info("task.finished", success=True, **fields)
        else:
            log.warning("task.finished", success=False, error=outcome.error, **fields)
        self.notifier.wake(DELIVERIES)
        self.notifier.wake(task_done_channel(task.id))

    async def _run_with_lease(self, provider: Provider, task: Task) -> Outcome | Pending:
        """Run the task on its provider while renewing the lease; a PermanentError fails it."""
        if task.attempts > 1:
            await partials.clear(self.db, task.id)  # an earlier attempt's texts
        running = _Running()
        renewer = asyncio.create_task(self._renew(task.id, running))
        job = Job(task=task, config=self.config, http=self.http, audio=lambda: self._audio(task),
                  progress=running.report, partial=running.decoded, cancelled=running.cancelled,
                  submitting=lambda: leases.mark_submitting(self.db, task.id, self.owner))
        try:
            if provider.third_party_callbacks and not provider.marks_submission:
                await job.submitting()
            return await provider.run(job)
        except PermanentError as exc:
            return Outcome.failure(str(exc), code=exc.code)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, task_id: str, running: _Running) -> None:
        """Renew the lease every lease_s/3, store progress at most every second, and the texts
        decoded since the last time (one batch a second, each waking its followers)."""
        lease_s = self.config.jobs.lease_s
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, lease_s / 3))
            if running.texts:
                await self._store_texts(task_id, running)
            due = time.monotonic() - last_renew >= lease_s / 3
            changed = running.progress != running.stored
            if not (due or changed):
                continue
            try:
                still_ours = await leases.renew_lease(self.db, task_id, self.owner, lease_s, running.progress)
            except Exception:
                log.exception("task.renew_failed")
                continue
            running.stored = running.progress
            last_renew = time.monotonic()
            if not still_ours:
                if await lifecycle.stopped(self.db, task_id):  # the run stops at its next progress report
                    log.info("task.stopping", reason="cancelled or deleted")
                    running.cancelled.set()
                else:
                    log.warning("task.lease_lost")
                return

    async def _store_texts(self, task_id: str, running: _Running) -> None:
        batch, running.texts = running.texts, []
        try:
            await partials.store(self.db, task_id, running.seq, batch)
        except Exception:
            log.exception("task.partial_store_failed")
            running.texts = batch + running.texts  # tried again next time
            return
        running.seq += len(batch)
        self.notifier.wake(partial_channel(task_id))

    @contextlib.asynccontextmanager
    async def _audio(self, task: Task):
        """The task's audio as a local file: the stored asset, or its url downloaded (then deleted)."""
        if task.asset_id:
            async with self.db.session() as s:
                asset = await s.get(Asset, task.asset_id)
            if asset is None or not Path(asset.path).exists():
                raise PermanentError(f"asset {task.asset_id} is missing from storage")
            yield Path(asset.path)
            return
        server = self.config.server
        async with streams.download(self.client_http, task.url, Path(self.config.storage.dir) / "tmp",
                                    int(server.max_upload_mb * 1048576), server.url_fetch_timeout_s,
                                    self.url_policy.check) as path:
            yield path

    @property
    def client_http(self) -> aiohttp.ClientSession:
        """The HTTP client for client-supplied URLs (url, callback_url): every connection checked."""
        if self._client_http is None:
            self._client_http = self.url_policy.session()
        return self._client_http

    # --- deliveries ----------------------------------------------------------------------

    def _lease_s(self, target: str) -> float:
        return deliveries.lease_s(target, self.config, self.plugins)

    async def delivery_loop(self, parallel: int = 8) -> None:
        sendable = deliveries.loaded_targets(self.plugins)  # with every webhook

        async def idle_s() -> float:
            due = await leases.next_due_in(self.db, sendable)
            return self.config.jobs.poll_s if due is None else min(max(due, 0.05), self.config.jobs.poll_s)

        await self._claim_loop(DELIVERIES, parallel,
                               lambda: leases.claim_delivery(self.db, self.owner, self._lease_s, sendable),
                               self._deliver, idle_s, self._sends)

    async def _deliver(self, claimed: leases.Claimed) -> None:
        structlog.contextvars.bind_contextvars(task_id=claimed.delivery.task_id)
        d = claimed.delivery
        try:
            outcome = await deliveries.deliver_one(self.db, self.config, deliveries.Clients(
                self.http, self.client_http, self.url_policy), self.plugins, self.owner, claimed)
            if outcome == deliveries.GONE and d.kind == "plugin":
                # the task was deleted while the plugin ran: what it wrote since may have come
                # after the deletion told it, so it is told again
                await lifecycle.tell_plugins(self.plugins, d.task_id, [d.target.removeprefix(deliveries.PLUGIN_PREFIX)])
        except Exception:
            log.exception("delivery.error", delivery_id=claimed.delivery.id)

    # --- retention -----------------------------------------------------------------------

    async def retention_loop(self) -> None:
        """The retention sweep (gateway/retention.py) at start and every retention.sweep_s; stop()
        lets a sweep in progress finish (its files and plugins' share come after its commits)."""
        me = asyncio.current_task()
        while not self.stopping:
            self._claiming.add(me)
            try:
                await retention.sweep(self.db, self.plugins, self.config.retention)
            except Exception:
                log.exception("retention.sweep_failed")
            finally:
                self._claiming.discard(me)
            if self.stopping:
                return
            await asyncio.sleep(self.config.retention.sweep_s)

    async def stop(self) -> None:
        """Stop claiming; cancel the running transcriptions, and let the deliveries being sent
        finish and be recorded (within their lease: a send cut off after the receiver took it
        would be sent again); then give back every task and delivery this process still holds,
        so another process takes them at once rather than after the lease."""
        self.stopping = True
        for loop in self._loops:
            if loop not in self._claiming:
                loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for run in list(self._runs):
            run.cancel()
        if self._sends:  # each send is bounded by its timeout; its lease bounds the wait in any case
            await asyncio.wait(list(self._sends), timeout=max(
                self._lease_s(c.delivery.target) for c in self._sends.values()))
        for send in list(self._sends):
            send.cancel()
        await asyncio.gather(*self._runs, *self._sends, return_exceptions=True)
        for task_id in await leases.release_owned_tasks(self.db, self.owner):
            log.info("task.released", task_id=task_id)
        if sent := await leases.release_owned_deliveries(self.db, self.owner):
            log.info("delivery.released", deliveries=sent)
        if self._client_http is not None:
            await self._client_http.close()
