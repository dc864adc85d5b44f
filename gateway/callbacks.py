"""The callback door up to ingest: what POST /callbacks/{provider} checks before it trusts a
caller, so that an unauthenticated request costs little (the signature headers before the body is
read, a bound on the bodies being received from callers nobody has authenticated yet, refusals
counted (tgw_callbacks_refused_total) and logged rather than stored), and which of our tasks a
callback is for."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import time
from typing import Iterator, Mapping

import structlog
from aiohttp import web
from sqlmodel import col, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway import metrics
from gateway.db import Database
from gateway.errors import ApiError, Unauthorized, Unavailable
from gateway.models import Task, TaskStatus, utcnow

log = structlog.get_logger(__name__)

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
TOLERANCE_S = 300  # as the standardwebhooks package: a timestamp more than 5 minutes off is refused
BAD_SIGNATURE = "bad_signature"
INVALID = "invalid"
BUSY = "busy"


def _bad_signature(reason: str) -> Unauthorized:
    return Unauthorized(f"invalid webhook signature: {reason}")


def check_signature_headers(headers: Mapping[str, str], now: float | None = None) -> None:
    """The Standard Webhooks headers are there, well formed, and the timestamp is within 5
    minutes: all a forger can get wrong without the body, checked before it is read."""
    missing = [h for h in SIGNATURE_HEADERS if not headers.get(h)]
    if missing:
        raise _bad_signature(f"missing header {', '.join(missing)}")
    try:
        timestamp = float(headers["webhook-timestamp"])
    except ValueError:
        raise _bad_signature("webhook-timestamp must be the seconds since 1970 (an integer)") from None
    skew = timestamp - (time.time() if now is None else now)
    if not -TOLERANCE_S <= skew <= TOLERANCE_S:  # NaN too
        raise _bad_signature(f"webhook-timestamp is more than {TOLERANCE_S // 60} minutes "
                             f"{'ahead' if skew > 0 else 'old'}")
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if not version or "," in signature or not _base64(signature):
            raise _bad_signature("webhook-signature must be space-separated 'v1,<base64 signature>' entries")


def _base64(text: str) -> bool:
    try:
        return bool(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return False


def verify_signature(secret: str, raw: bytes, headers: Mapping[str, str]) -> None:
    """The body's signature, once check_signature_headers has passed: Unauthorized if no v1
    signature matches (a body that is not UTF-8 cannot match what the sender signed)."""
    try:
        Webhook(secret).verify(raw, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise _bad_signature(str(exc)) from None
    except UnicodeDecodeError:
        raise _bad_signature("No matching signature found") from None


class BodyGate:
    """At most `limit` callback bodies from unauthenticated callers being received at once (each
    may hold up to server.max_json_kb); one more is refused with a 503 before its body is read.
    A body that arrived with its headers is already in memory and needs no place."""

    def __init__(self, limit: int):
        self.limit = limit
        self.receiving = 0

    @contextlib.contextmanager
    def place(self, request: web.Request, authenticated: bool) -> Iterator[None]:
        if authenticated or request.content.is_eof():
            yield
            return
        if self.receiving >= self.limit:
            raise Unavailable(f"too many callback bodies being received at once "
                              f"(server.max_unauthenticated_bodies = {self.limit}); try again")
        self.receiving += 1
        try:
            yield
        finally:
            self.receiving -= 1


def refused(provider: str, reason: str, exc: ApiError) -> ApiError:
    """Count and log a callback refused without storing anything; returns `exc` to raise."""
    metrics.observe_refused_callback(provider, reason)
    log.warning("callback.refused", provider=provider, reason=reason, status=exc.status, error=exc.message)
    return exc


# --- which task a callback is for ------------------------------------------------------


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
