"""The job loops: claim tasks and run them on their provider; claim deliveries and send them.

Both loops take work from the database with a lease, so a process that dies loses nothing:
its leases expire and another loop (or the restarted process) claims the work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import structlog

from gateway import deliveries, ingest, speakers, tasks
from gateway.config import Config
from gateway.db import Database
from gateway.engine import AudioError, LocalEngine, TranscribeRequest
from gateway.models import Asset, Task
from gateway.notify import Notifier
from gateway.payloads import Outcome
from gateway.plugins import Plugins
from gateway.urls import PublicOnlyResolver

log = structlog.get_logger(__name__)

TASKS = "tasks"
DELIVERIES = "deliveries"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PermanentError(Exception):
    """The task cannot succeed however often it is tried; it fails with this reason."""

    code = "4000"


async def fetch_url(http: aiohttp.ClientSession, url: str, dest_dir: Path, max_bytes: int,
                    timeout_s: float) -> Path:
    """Download a task's `url` to a temp file, within the upload size limit."""
    fd, name = tempfile.mkstemp(dir=dest_dir, suffix=".url")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if 400 <= resp.status < 500:
                    raise PermanentError(f"could not fetch url: HTTP {resp.status}")
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PermanentError(f"url content is larger than server.max_upload_mb "
                                             f"({max_bytes / 1048576:.4g} MB)")
                    f.write(chunk)
        if size == 0:
            raise PermanentError("url returned an empty body")
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class Workers:
    """The task loop and the delivery loop of one process."""

    def __init__(self, db: Database, config: Config, engine: LocalEngine, notifier: Notifier,
                 http: aiohttp.ClientSession, plugins: Plugins | None):
        self.db = db
        self.plugins = plugins
        self.config = config
        self.engine = engine
        self.notifier = notifier
        self.http = http
        self.owner = worker_id()
        self.stopping = False
        self._fetch_http: aiohttp.ClientSession | None = None
        self._jobs: set[asyncio.Task] = set()

    # --- tasks ---------------------------------------------------------------------------

    async def _claim_loop(self, name: str, parallel: int, claim, run, idle_s) -> None:
        """Claim work while a slot is free and run each claimed item in its own asyncio task."""
        slots = asyncio.Semaphore(parallel)
        while not self.stopping:
            await slots.acquire()
            try:
                item = await claim()
            except Exception:
                slots.release()
                log.exception(f"{name}.claim_failed")
                await asyncio.sleep(self.config.jobs.poll_s)
                continue
            if item is None:
                slots.release()
                await self.notifier.wait(name, await idle_s())
                continue
            job = asyncio.create_task(run(item))
            self._jobs.add(job)
            job.add_done_callback(lambda j: (self._jobs.discard(j), slots.release()))

    async def task_loop(self) -> None:
        async def idle_s() -> float:
            return self.config.jobs.poll_s

        await self._claim_loop(
            TASKS, self.config.engine.concurrency,
            lambda: tasks.claim_task(self.db, self.owner, self.config.jobs.lease_s, ["local"]),
            self._run_task, idle_s)

    async def _run_task(self, task: Task) -> None:
        structlog.contextvars.bind_contextvars(task_id=task.id)
        log.info("task.claimed", attempt=task.attempts, provider=task.provider)
        t0 = time.perf_counter()
        try:
            if task.attempts > self.config.jobs.max_attempts:
                outcome = Outcome.failure(f"gave up after {task.attempts - 1} interrupted attempts")
            else:
                outcome = await self._transcribe_with_lease(task)
        except asyncio.CancelledError:
            await asyncio.shield(tasks.release_task(self.db, task.id, self.owner))
            log.info("task.released")
            raise
        except Exception as exc:
            log.exception("task.error", attempt=task.attempts)
            reason = f"{type(exc).__name__}: {exc}"
            if task.attempts < self.config.jobs.max_attempts:
                await tasks.release_task(self.db, task.id, self.owner, error=reason)
                self.notifier.wake(TASKS)
                return
            outcome = Outcome.failure(f"failed after {task.attempts} attempts: {reason}")
        try:
            result = await ingest.ingest(self.db, self.config, task.id, outcome, provider="local",
                                         plugins=self.plugins, external_task_id=task.id)
        except Exception:
            log.exception("task.ingest_failed")  # the lease expires and the task is run again
            return
        log.info("task.finished", outcome=result.outcome, success=outcome.success,
                 seconds=round(time.perf_counter() - t0, 3))
        self.notifier.wake(DELIVERIES)
        self.notifier.wake(f"task:{task.id}")

    async def _transcribe_with_lease(self, task: Task) -> Outcome:
        progress = {"value": 0.0, "stored": 0.0}
        renewer = asyncio.create_task(self._renew(task.id, progress))
        path = None
        try:
            path, temporary = await self._input_path(task)
            hints = speakers.Hints(task.num_speakers, task.min_speakers, task.max_speakers)
            req = TranscribeRequest(path=str(path), language=task.language, speaker=task.speaker, hints=hints)
            return await self.engine.transcribe(req, lambda f: progress.__setitem__("value", f))
        except AudioError as exc:
            return Outcome.failure(str(exc), code="4000")
        except PermanentError as exc:
            return Outcome.failure(str(exc), code=exc.code)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if path is not None and temporary:
                path.unlink(missing_ok=True)

    async def _renew(self, task_id: str, progress: dict) -> None:
        """Renew the lease every lease_s/3 and store progress at most every second."""
        lease_s = self.config.jobs.lease_s
        last_renew = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, lease_s / 3))
            due = time.monotonic() - last_renew >= lease_s / 3
            changed = progress["value"] != progress["stored"]
            if not (due or changed):
                continue
            try:
                still_ours = await tasks.renew_lease(self.db, task_id, self.owner, lease_s, progress["value"])
            except Exception:
                log.exception("task.renew_failed")
                continue
            progress["stored"] = progress["value"]
            last_renew = time.monotonic()
            if not still_ours:
                log.warning("task.lease_lost")
                return

    async def _input_path(self, task: Task) -> tuple[Path, bool]:
        if task.asset_id:
            async with self.db.session() as s:
                asset = await s.get(Asset, task.asset_id)
            if asset is None or not Path(asset.path).exists():
                raise PermanentError(f"asset {task.asset_id} is missing from storage")
            return Path(asset.path), False
        tmp_dir = Path(self.config.storage.dir) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        try:
            path = await fetch_url(self._fetcher(), task.url, tmp_dir,
                                   int(self.config.server.max_upload_mb * 1048576),
                                   self.config.server.url_fetch_timeout_s)
        except aiohttp.ClientConnectorError as exc:
            if "non-public address" in str(exc):
                raise PermanentError(f"could not fetch url: {exc.os_error}") from None
            raise
        return path, True

    def _fetcher(self) -> aiohttp.ClientSession:
        if self._fetch_http is None:
            if self.config.server.allow_private_urls:
                self._fetch_http = self.http
            else:
                connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
                self._fetch_http = aiohttp.ClientSession(connector=connector)
        return self._fetch_http

    # --- deliveries ----------------------------------------------------------------------

    async def delivery_loop(self, parallel: int = 8) -> None:
        lease_s = self.config.webhooks.timeout_s * 1.5 + 5  # a send never outlives its lease

        async def idle_s() -> float:
            due = await deliveries.next_due_in(self.db)
            return self.config.jobs.poll_s if due is None else min(max(due, 0.05), self.config.jobs.poll_s)

        await self._claim_loop(DELIVERIES, parallel,
                               lambda: deliveries.claim_delivery(self.db, self.owner, lease_s),
                               self._deliver, idle_s)

    async def _deliver(self, claimed: deliveries.Claimed) -> None:
        structlog.contextvars.bind_contextvars(task_id=claimed.delivery.task_id)
        try:
            await deliveries.deliver_one(self.db, self.config, self.http, self.plugins, self.owner, claimed)
        except Exception:
            log.exception("delivery.error", delivery_id=claimed.delivery.id)

    async def stop(self) -> None:
        """Stop claiming; cancel running jobs (which release their leases)."""
        self.stopping = True
        for job in list(self._jobs):
            job.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._fetch_http is not None and self._fetch_http is not self.http:
            await self._fetch_http.close()
