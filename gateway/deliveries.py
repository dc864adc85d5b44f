"""Outbound deliveries: one row per (task, target), claimed with a lease (gateway/leases.py),
retried with exponential backoff and jitter, every attempt recorded, `dead` after max_attempts.

Webhooks get the callback payload signed per Standard Webhooks: `webhook-id` is the
delivery's id (stable across its retries), `webhook-timestamp` the attempt's time, and
`webhook-signature` `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with webhooks.secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
import structlog
from sqlalchemy import func, update
from sqlmodel import col, select
from standardwebhooks.webhooks import Webhook

from gateway import API_BASE
from gateway import metrics
from gateway.config import Config, WebhooksConfig
from gateway.db import Database
from gateway.leases import Claimed
from gateway.models import Delivery, DeliveryAttempt, DeliveryStatus, Task, utcnow
from gateway.notify import DELIVERIES, publish
from gateway.plugins import Plugins, RetryAfter, TaskInfo, transcript_from_payload
from gateway.retry import retry_after_s
from gateway.urls import UrlError, UrlPolicy, redact

log = structlog.get_logger(__name__)

PLUGIN_PREFIX = "plugin:"
GONE = "gone"  # record_attempt's answer for a delivery removed meanwhile (its task was deleted)


def webhook_id(delivery_id: str) -> str:
    return f"msg_{delivery_id}"


def signed_headers(msg_id: str, body: str, secret: str, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(timezone.utc)
    headers = {"content-type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(int(now.timestamp())),
               "user-agent": "transcribe-gateway"}
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(msg_id, now, body)
    return headers


@dataclass
class Attempt:
    """What one try of a delivery gave."""

    started: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None  # the target asked for this delay (HTTP 429 Retry-After)
    final: bool = False  # no use trying again (the target is refused): dead at once


@dataclass
class Clients:
    """The HTTP clients deliveries send with: `trusted` for operator-configured targets
    (webhooks.urls), `checked` for a task's own callback_url (every connection passes `policy`)."""

    trusted: aiohttp.ClientSession
    checked: aiohttp.ClientSession
    policy: UrlPolicy


def loaded_targets(plugins: Plugins | None) -> list[str]:
    """plugin:<name> of every plugin loaded in this process: the plugin deliveries it may claim."""
    return [PLUGIN_PREFIX + name for name in plugins.configs] if plugins is not None else []


def lease_s(target: str, config: Config, plugins: Plugins | None) -> float:
    """How long a claim on a delivery to `target` holds: one send's limit (its plugin's
    timeout_s, or webhooks.timeout_s) × 1.5 + 5 s, so that a send never outlives its claim and
    no other loop sends it at the same time."""
    name = target.removeprefix(PLUGIN_PREFIX)
    if name != target and plugins is not None and name in plugins.configs:
        timeout_s = plugins.configs[name].timeout_s
    else:
        timeout_s = config.webhooks.timeout_s
    return timeout_s * 1.5 + 5


async def send_webhook(http: aiohttp.ClientSession, d: Delivery, body: str, cfg: WebhooksConfig,
                       attempt: Attempt) -> None:
    """POST the signed body and note the outcome on `attempt` (error None on 2xx)."""
    headers = signed_headers(webhook_id(d.id), body, cfg.secret)
    try:
        async with http.post(d.target, data=body.encode(), headers=headers,
                             timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                             allow_redirects=False) as resp:
            await resp.read()
            attempt.status_code = resp.status
            if not 200 <= resp.status < 300:
                attempt.error = f"HTTP {resp.status}"
                if resp.status in (429, 503):
                    if (asked := retry_after_s(resp.headers.get("Retry-After"))) is not None:
                        attempt.retry_after_s = min(asked, cfg.backoff_max_s)
    except asyncio.TimeoutError:
        attempt.error = f"timed out after {cfg.timeout_s:g}s"
    except aiohttp.ClientError as exc:
        attempt.error = f"{type(exc).__name__}: {exc}"
    except UrlError as exc:  # the checked client refused the connection (the host resolves elsewhere now)
        attempt.error, attempt.final = f"callback_url refused: {exc}", True


def client_supplied(target: str, task: Task, config: Config) -> bool:
    """The target is the task's callback_url (a client's URL, checked), not one of webhooks.urls."""
    return target == task.callback_url and target not in config.webhooks.urls


async def record_attempt(db: Database, d: Delivery, owner: str, attempt: Attempt, max_attempts: int,
                         cfg: WebhooksConfig) -> str:
    """Store the attempt and move the delivery on: delivered, retried later, or dead."""
    now = utcnow()
    async with db.session() as s:
        row = await s.get(Delivery, d.id, with_for_update=True)
        if row is None or row.lease_owner != owner or row.status != DeliveryStatus.PENDING:
            return row.status if row else GONE  # someone else took over, or the task was deleted
        row.attempts += 1
        # numbered over the delivery's whole history (redeliver restarts `attempts`, not the log)
        number = (await s.exec(select(func.count()).select_from(DeliveryAttempt)
                               .where(DeliveryAttempt.delivery_id == row.id))).one() + 1
        s.add(DeliveryAttempt(delivery_id=row.id, number=number, started_at=attempt.started,
                              duration_ms=round(attempt.duration_ms, 2), status_code=attempt.status_code,
                              error=attempt.error))
        row.last_status_code = attempt.status_code
        row.last_error = attempt.error
        row.lease_owner = None
        row.lease_expires_at = None
        row.updated_at = now
        if attempt.error is None:
            row.status = DeliveryStatus.DELIVERED
            row.delivered_at = now
        elif row.attempts >= max_attempts or attempt.final:
            row.status = DeliveryStatus.DEAD
        else:
            delay = attempt.retry_after_s if attempt.retry_after_s is not None else cfg.backoff.delay(row.attempts)
            row.next_attempt_at = now + timedelta(seconds=delay)
        s.add(row)
        return row.status


def task_info(claimed: Claimed, public_url: str) -> TaskInfo:
    return task_info_of(claimed.task, claimed.filename, public_url)


def task_info_of(t: Task, filename: str | None, public_url: str) -> TaskInfo:
    """What a plugin learns about task `t` (its asset's `filename`)."""
    link = f"{public_url.rstrip('/')}{API_BASE}/transcriptions/{t.id}" if public_url else None
    return TaskInfo(task_id=t.id, status=t.status, model=t.model, provider=t.provider, speaker=t.speaker,
                    language=t.language, asset_id=t.asset_id, filename=filename, url=t.url,
                    created_at=t.created_at, finished_at=t.finished_at, link=link)


async def run_plugin(plugins: Plugins, name: str, claimed: Claimed, public_url: str) -> None:
    """Call one plugin's transcript_completed or transcript_failed for the claimed task."""
    payload = json.loads(claimed.body)
    info = task_info(claimed, public_url)
    cfg = plugins.configs[name]
    if payload["data"]["success"]:
        call = plugins.call_one("transcript_completed", name, task=info,
                                transcript=transcript_from_payload(payload), config=cfg)
    else:
        call = plugins.call_one("transcript_failed", name, task=info, error=payload["data"]["msg"], config=cfg)
    await asyncio.wait_for(call, cfg.timeout_s)


async def attempt_delivery(config: Config, clients: Clients, plugins: Plugins | None,
                           claimed: Claimed) -> tuple[Attempt, int]:
    """Try the delivery once: (what happened, the target's max attempts)."""
    d = claimed.delivery
    attempt = Attempt(started=utcnow(), duration_ms=0)
    t0 = time.perf_counter()
    if d.kind == "webhook":
        max_attempts = config.webhooks.max_attempts
        if not client_supplied(d.target, claimed.task, config):
            await send_webhook(clients.trusted, d, claimed.body, config.webhooks, attempt)
        else:
            try:
                await clients.policy.check(d.target)
            except UrlError as exc:
                attempt.error, attempt.final = f"callback_url refused: {exc}", True
            else:
                await send_webhook(clients.checked, d, claimed.body, config.webhooks, attempt)
    else:
        name = d.target.removeprefix(PLUGIN_PREFIX)  # loaded here: only those are claimed (leases.sendable)
        max_attempts = plugins.configs[name].max_attempts
        try:
            await run_plugin(plugins, name, claimed, config.server.public_url)
        except RetryAfter as exc:
            attempt.error, attempt.retry_after_s = str(exc), exc.seconds
        except asyncio.TimeoutError:
            attempt.error = f"timed out after {plugins.configs[name].timeout_s:g}s"
        except Exception as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
    attempt.duration_ms = (time.perf_counter() - t0) * 1000
    return attempt, max_attempts


async def deliver_one(db: Database, config: Config, clients: Clients, plugins: Plugins | None,
                      owner: str, claimed: Claimed) -> str:
    d = claimed.delivery
    attempt, max_attempts = await attempt_delivery(config, clients, plugins, claimed)
    outcome = await record_attempt(db, d, owner, attempt, max_attempts, config.webhooks)
    metrics.DELIVERY_ATTEMPTS.labels(d.kind, "retry" if outcome == DeliveryStatus.PENDING else outcome).inc()
    level = logging.INFO if attempt.error is None else logging.ERROR if outcome == DeliveryStatus.DEAD \
        else logging.WARNING  # a retry, or another process took over
    log.log(level, "delivery.attempt", task_id=d.task_id, delivery_id=d.id,
            target=redact(d.target), status_code=attempt.status_code, error=attempt.error, outcome=outcome,
            attempt=d.attempts + 1)
    return outcome


async def redeliver(db: Database, task_id: str, target: str | None = None) -> int:
    """Queue a task's deliveries (all, or one target: as stored, or as views show it, credentials
    redacted) to run again now, with a fresh attempt budget."""
    now = utcnow()
    async with db.session() as s:
        stmt = update(Delivery).where(Delivery.task_id == task_id)
        if target:
            stored = (await s.exec(select(Delivery.target).where(Delivery.task_id == task_id))).all()
            stmt = stmt.where(col(Delivery.target).in_([t for t in stored if target in (t, redact(t))]))
        res = await s.exec(stmt.values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now,
                                       lease_owner=None, lease_expires_at=None, updated_at=now))
        if res.rowcount:
            await publish(s, DELIVERIES)  # worker processes elsewhere wake now, not at their next poll
        return res.rowcount


async def task_deliveries(db: Database, task_id: str) -> list[Delivery]:
    """A task's deliveries, oldest first (webhooks before plugins of the same moment)."""
    async with db.session() as s:
        return list((await s.exec(select(Delivery).where(Delivery.task_id == task_id)
                                  .order_by(col(Delivery.created_at), col(Delivery.kind).desc(),
                                            col(Delivery.target)))).all())


async def delivery_summary(db: Database, task_id: str) -> list[dict]:
    return summarise(await task_deliveries(db, task_id))


def summarise(rows: list[Delivery]) -> list[dict]:
    """Deliveries as the API's task view shows them (targets' credentials redacted)."""
    return [{"target": redact(d.target), "kind": d.kind, "status": d.status, "attempts": d.attempts,
             "last_status_code": d.last_status_code, "last_error": d.last_error} for d in rows]
