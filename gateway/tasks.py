"""Tasks: validating a transcription request, creating the task, claiming it with a lease,
and the views the status and list endpoints return."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from sqlalchemy import and_, or_, update
from sqlmodel import col, select

from gateway.config import Config
from gateway.db import Database
from gateway.errors import BadRequest, NotFound
from gateway.models import Asset, Task, TaskStatus, time_ordered_id, utcnow
from gateway.notify import publish, task_channel, task_done_channel
from gateway.providers import LOCAL, Provider, Providers
from gateway.payloads import no_nul, result_of
from gateway.urls import UrlError, UrlPolicy, redact


StrictText = Annotated[StrictStr, AfterValidator(no_nul)]


class GenerateRequest(BaseModel):
    """Body of async-generate-audio and sync-generate-audio."""

    model_config = ConfigDict(extra="forbid")

    asset_id: Optional[StrictText] = None
    url: Optional[StrictText] = None
    model: StrictText = "whisper-1"
    speaker: StrictBool = False
    callback_url: Optional[StrictText] = None
    language: Optional[StrictText] = None
    num_speakers: Optional[int] = Field(default=None, ge=1, le=32, strict=True)
    min_speakers: Optional[int] = Field(default=None, ge=1, le=32, strict=True)
    max_speakers: Optional[int] = Field(default=None, ge=1, le=32, strict=True)


def parse_generate_request(body: Any) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return GenerateRequest.model_validate(body)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "body"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        raise BadRequest(f"{field}: {msg}") from None


def whisper_languages() -> set[str]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return set(_LANGUAGE_CODES)


def route(providers: Providers, model: str) -> Provider:
    """The provider that serves model alias `model`; BadRequest listing the valid ones."""
    name = providers.provider_for(model)
    if name is None:
        valid = ", ".join(sorted(providers.routes))
        raise BadRequest(f"model: unknown model {model!r}; valid models: {valid}")
    return providers.get(name)


SPEAKER_HINTS = ("num_speakers", "min_speakers", "max_speakers")


def check_speaker_hints(req: GenerateRequest) -> None:
    """num_speakers (exact) and min_speakers/max_speakers (bounds) need speaker=true and must agree."""
    for name in SPEAKER_HINTS:
        if getattr(req, name) is not None and not req.speaker:
            raise BadRequest(f"{name}: only meaningful with speaker=true")
    low, high, exact = req.min_speakers, req.max_speakers, req.num_speakers
    if low is not None and high is not None and low > high:
        raise BadRequest(f"min_speakers: {low} is greater than max_speakers ({high})")
    if exact is not None and not (low or 1) <= exact <= (high or exact):
        raise BadRequest(f"num_speakers: {exact} is outside min_speakers..max_speakers "
                         f"({low or 1}..{high if high is not None else 32})")


async def validate_request(db: Database, config: Config, providers: Providers, req: GenerateRequest) -> str:
    """Check everything about a request before anything is stored; returns the provider name."""
    if (req.asset_id is None) == (req.url is None):
        raise BadRequest("give exactly one of asset_id or url" if req.asset_id else
                         "asset_id or url is required")
    chosen = route(providers, req.model)
    provider = chosen.name
    if req.speaker and not chosen.supports_speaker:
        why = "; engine.speaker_labels is false" if provider == LOCAL else ""
        raise BadRequest(f"speaker: the provider behind {req.model!r} ({provider}) cannot label speakers{why}")
    check_speaker_hints(req)
    if req.language is not None:
        lang = req.language.lower()
        if lang not in whisper_languages():
            raise BadRequest(f"language: unknown language code {req.language!r} (use an ISO 639-1 code such as 'en')")
        if provider == LOCAL and lang != "en" and not await chosen.engine.multilingual():
            raise BadRequest(f"language: the model behind {req.model!r} is English-only; "
                             f"{req.language!r} is not supported")
    policy = UrlPolicy.of(config.server)
    for name in ("url", "callback_url"):
        if (value := getattr(req, name)) is not None:
            try:
                await policy.check(value)
            except UrlError as exc:
                raise BadRequest(f"{name}: {exc}") from None
    if req.asset_id is not None:
        async with db.session() as s:
            if await s.get(Asset, req.asset_id) is None:
                raise BadRequest(f"asset_id: no asset {req.asset_id!r}; upload the file first")
    return provider


async def create_task(db: Database, req: GenerateRequest, provider: str) -> Task:
    task = Task(id=time_ordered_id(), asset_id=req.asset_id, url=req.url, model=req.model,
                speaker=req.speaker, language=req.language.lower() if req.language else None,
                num_speakers=req.num_speakers, min_speakers=req.min_speakers,
                max_speakers=req.max_speakers, provider=provider, callback_url=req.callback_url)
    async with db.session() as s:
        s.add(task)
        await publish(s, task_channel(provider))
    return task


# --- leases ------------------------------------------------------------------------------


async def claim_task(db: Database, owner: str, lease_s: float, providers: list[str]) -> Task | None:
    """Atomically take the oldest runnable task: queued (and not waiting out a retry delay), or
    processing with an expired lease (its worker died, or its provider never called back)."""
    now = utcnow()
    async with db.session() as s:
        stmt = (select(Task)
                .where(col(Task.provider).in_(providers))
                .where(or_(and_(Task.status == TaskStatus.QUEUED,
                                or_(col(Task.lease_expires_at).is_(None), col(Task.lease_expires_at) < now)),
                           and_(Task.status == TaskStatus.PROCESSING, col(Task.lease_expires_at) < now)))
                .order_by(col(Task.created_at), col(Task.id))
                .limit(1)
                .with_for_update(skip_locked=True))
        task = (await s.exec(stmt)).first()
        if task is None:
            return None
        task.status = TaskStatus.PROCESSING
        task.lease_owner = owner
        task.lease_expires_at = now + timedelta(seconds=lease_s)
        task.attempts += 1
        task.submitting_at = None
        task.started_at = task.started_at or now
        task.updated_at = now
        s.add(task)
    return task


async def renew_lease(db: Database, task_id: str, owner: str, lease_s: float,
                      progress: float | None = None) -> bool:
    """Extend our lease (and store progress); False if the lease is no longer ours."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_s), "updated_at": now}
    if progress is not None:
        values["progress"] = round(progress, 4)
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                              Task.status == TaskStatus.PROCESSING).values(**values))
        return res.rowcount == 1


async def release_task(db: Database, task_id: str, owner: str, error: str | None = None,
                       delay_s: float = 0.0) -> None:
    """Give a claimed task back to the queue after a retryable error, claimable again after
    `delay_s` (queued tasks keep their not-before time in lease_expires_at)."""
    await _release(db, owner, Task.id == task_id, error=error, delay_s=delay_s)


async def release_owned_tasks(db: Database, owner: str) -> list[str]:
    """Shutdown: give back every task `owner` still holds, claimable at once; their ids."""
    return await _release(db, owner)


async def _release(db: Database, owner: str, *where, error: str | None = None,
                   delay_s: float = 0.0) -> list[str]:
    now = utcnow()
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.lease_owner == owner, Task.status == TaskStatus.PROCESSING,
                                              *where)
                           .values(status=TaskStatus.QUEUED, lease_owner=None, submitting_at=None,
                                   lease_expires_at=now + timedelta(seconds=delay_s) if delay_s > 0 else None,
                                   error=error, updated_at=now)
                           .returning(Task.id))
        return list(res.scalars())


async def mark_submitting(db: Database, task_id: str, owner: str) -> None:
    """The request creating the task's upstream job is being sent (Job.submitting): from now until
    its upstream id is stored, a callback for an unknown id of that provider may be its own."""
    async with db.session() as s:
        await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                        Task.status == TaskStatus.PROCESSING).values(submitting_at=utcnow()))


def upstream_owner(provider: str) -> str:
    return f"upstream:{provider}"


async def await_upstream(db: Database, task_id: str, owner: str, provider: str, upstream_id: str,
                         wait_s: float) -> bool:
    """Store the provider's task id and hand the lease to the provider for `wait_s`: its callback
    completes the task; if none comes, the lease expires and a worker fails the task."""
    now = utcnow()
    async with db.session() as s:
        res = await s.exec(update(Task).where(Task.id == task_id, Task.lease_owner == owner,
                                              Task.status == TaskStatus.PROCESSING)
                           .values(upstream_task_id=upstream_id, submitting_at=None,
                                   lease_owner=upstream_owner(provider),
                                   lease_expires_at=now + timedelta(seconds=wait_s), updated_at=now))
        return res.rowcount == 1


# --- views -------------------------------------------------------------------------------


def iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def task_view(task: Task, *, with_result: bool = True) -> dict[str, Any]:
    view = {
        "task_id": task.id,
        "status": task.status,
        "progress": round(task.progress, 4),
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "error": task.error,
        "model": task.model,
        "provider": task.provider,
        "speaker": task.speaker,
        "speaker_note": task.speaker_note,
        "note": task.note,
        "asset_id": task.asset_id,
        "url": redact(task.url),
        "attempts": task.attempts,
    }
    if with_result:
        view["result"] = result_of(json.loads(task.result_json)) if task.result_json else None
    return view


async def get_task(db: Database, task_id: str) -> Task:
    async with db.session() as s:
        task = await s.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} not found")
    return task


def _encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor of ours: an aware timestamp (what every timestamp column holds) and a task id."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|", 1)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at.astimezone(timezone.utc), task_id
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise BadRequest("cursor: invalid cursor; use next_cursor from the previous page") from None


async def list_tasks(db: Database, status: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of tasks, newest first, with an opaque cursor for the next page."""
    if status is not None and status not in TaskStatus.ALL:
        raise BadRequest(f"status: must be one of {', '.join(TaskStatus.ALL)}")
    stmt = select(Task).order_by(col(Task.created_at).desc(), col(Task.id).desc()).limit(limit + 1)
    if status:
        stmt = stmt.where(Task.status == status)
    if cursor:
        created, task_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(col(Task.created_at) < created,
                              and_(Task.created_at == created, col(Task.id) < task_id)))
    async with db.session() as s:
        rows = list((await s.exec(stmt)).all())
    page = rows[:limit]
    return {"items": [task_view(t, with_result=False) for t in page],
            "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None}


async def wait_for_task(db: Database, notifier, task_id: str, timeout_s: float) -> Task:
    """Wait until the task is completed or failed (or the timeout passes); returns its latest state."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    with notifier.subscribed(task_done_channel(task_id)):
        while True:
            task = await get_task(db, task_id)
            remaining = deadline - asyncio.get_running_loop().time()
            if task.status in TaskStatus.TERMINAL or remaining <= 0:
                return task
            await notifier.wait(task_done_channel(task_id), min(0.5, remaining))
