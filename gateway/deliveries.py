"""Outbound deliveries: one row per (task, target), claimed with a lease, retried with
exponential backoff and jitter, every attempt recorded, `dead` after max_attempts.

Webhooks get the callback payload signed per Standard Webhooks: `webhook-id` is the
delivery's id (stable across its retries), `webhook-timestamp` the attempt's time, and
`webhook-signature` `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with webhooks.secret.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
import structlog
from sqlalchemy import or_
from sqlmodel import col, select
from standardwebhooks.webhooks import Webhook

from gateway.config import Config, WebhooksConfig
from gateway.db import Database
from gateway.models import Delivery, DeliveryAttempt, DeliveryStatus, Task, utcnow

log = structlog.get_logger(__name__)


def backoff_s(attempt: int, cfg: WebhooksConfig, rng: random.Random = random.Random()) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with equal jitter."""
    ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
    return ceiling / 2 + rng.random() * ceiling / 2


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
class Claimed:
    delivery: Delivery
    body: str


async def claim_delivery(db: Database, owner: str, lease_s: float) -> Claimed | None:
    now = utcnow()
    async with db.session() as s:
        stmt = (select(Delivery)
                .where(Delivery.status == DeliveryStatus.PENDING, col(Delivery.next_attempt_at) <= now)
                .where(or_(col(Delivery.lease_expires_at).is_(None), col(Delivery.lease_expires_at) < now))
                .order_by(col(Delivery.next_attempt_at))
                .limit(1)
                .with_for_update(skip_locked=True))
        d = (await s.exec(stmt)).first()
        if d is None:
            return None
        d.lease_owner = owner
        d.lease_expires_at = now + timedelta(seconds=lease_s)
        s.add(d)
        body = (await s.exec(select(Task.result_json).where(Task.id == d.task_id))).one()
    return Claimed(d, body)


async def next_due_in(db: Database) -> float | None:
    """Seconds until the earliest pending delivery is due (None if there is none)."""
    async with db.session() as s:
        row = (await s.exec(select(Delivery.next_attempt_at)
                            .where(Delivery.status == DeliveryStatus.PENDING)
                            .order_by(col(Delivery.next_attempt_at)).limit(1))).first()
    if row is None:
        return None
    return max(0.0, (row - utcnow()).total_seconds())


async def send_webhook(http: aiohttp.ClientSession, d: Delivery, body: str,
                       cfg: WebhooksConfig) -> tuple[int | None, str | None]:
    """POST the signed body; (status code, error) where error is None on 2xx."""
    headers = signed_headers(webhook_id(d.id), body, cfg.secret)
    try:
        async with http.post(d.target, data=body.encode(), headers=headers,
                             timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                             allow_redirects=False) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return resp.status, None
            return resp.status, f"HTTP {resp.status}"
    except asyncio.TimeoutError:
        return None, f"timed out after {cfg.timeout_s:g}s"
    except aiohttp.ClientError as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def record_attempt(db: Database, d: Delivery, owner: str, started: datetime, duration_ms: float,
                         status_code: int | None, error: str | None, cfg: WebhooksConfig) -> str:
    """Store the attempt and move the delivery on: delivered, retried later, or dead."""
    now = utcnow()
    async with db.session() as s:
        row = await s.get(Delivery, d.id, with_for_update=True)
        if row is None or row.lease_owner != owner or row.status != DeliveryStatus.PENDING:
            return row.status if row else "gone"  # someone else took over; their outcome stands
        row.attempts += 1
        s.add(DeliveryAttempt(delivery_id=row.id, number=row.attempts, started_at=started,
                              duration_ms=round(duration_ms, 2), status_code=status_code, error=error))
        row.last_status_code = status_code
        row.last_error = error
        row.lease_owner = None
        row.lease_expires_at = None
        row.updated_at = now
        if error is None:
            row.status = DeliveryStatus.DELIVERED
            row.delivered_at = now
        elif row.attempts >= cfg.max_attempts:
            row.status = DeliveryStatus.DEAD
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff_s(row.attempts, cfg))
        s.add(row)
        return row.status


async def deliver_one(db: Database, config: Config, http: aiohttp.ClientSession, owner: str,
                      claimed: Claimed) -> str:
    d = claimed.delivery
    bound = log.bind(task_id=d.task_id, delivery_id=d.id, target=d.target)
    started = utcnow()
    t0 = time.perf_counter()
    status_code, error = await send_webhook(http, d, claimed.body, config.webhooks)
    outcome = await record_attempt(db, d, owner, started, (time.perf_counter() - t0) * 1000,
                                   status_code, error, config.webhooks)
    bound.info("delivery.attempt", status_code=status_code, error=error, outcome=outcome,
               attempt=d.attempts + 1)
    return outcome


async def delivery_summary(db: Database, task_id: str) -> list[dict]:
    async with db.session() as s:
        rows = (await s.exec(select(Delivery).where(Delivery.task_id == task_id)
                             .order_by(col(Delivery.created_at)))).all()
    return [{"target": d.target, "kind": d.kind, "status": d.status, "attempts": d.attempts,
             "last_status_code": d.last_status_code, "last_error": d.last_error} for d in rows]
