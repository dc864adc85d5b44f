"""The dashboard's handlers: thin, each calling the same plain functions as the JSON API's
(views, requests, deliveries, the search index), through the guards of web.py."""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web
from sqlalchemy import func
from sqlmodel import col, select

from gateway import API_BASE, api, deliveries, lifecycle, requests, speaker_routes, uploads, views
from gateway.appkeys import CONFIG, DB, INGESTOR, KEYS, LOOPS, NOTIFIER, PLUGINS, PROVIDERS, STORE
from gateway.errors import BadRequest, NotFound
from gateway.models import DeliveryStatus, Task, TaskStatus, Transcript
from gateway.openai_api.forms import read_form
from gateway.providers import LOCAL
from gateway.tenants import caller_of, owner_filter, owners
from gateway_plugins.dashboard import view
from gateway_plugins.dashboard.web import (AUTH_ON, action, data, error_page, fragment, local_target, page, render,
                                           session_of, sign_in_page, sign_in_response, sign_out_response)

log = structlog.get_logger(__name__)
PAGE_SIZE = 25


def model_aliases(app: web.Application) -> list[str]:
    return sorted({alias for p in app[PROVIDERS].active.values() for alias in p.models()})


# --- sign-in -------------------------------------------------------------------------------


async def home(request: web.Request) -> web.StreamResponse:
    if await session_of(request) is None and request[AUTH_ON]:
        return await sign_in_page(request, target=local_target(request.query.get("next")))
    return await _home(request)


@page
async def _home(request: web.Request) -> web.Response:
    return _upload_form(request)


def _upload_form(request: web.Request, status: int = 200, message: str = "", fields: dict | None = None):
    cfg = request.app[CONFIG]
    aliases = model_aliases(request.app)
    default = cfg.engine.model_alias if cfg.engine.model_alias in aliases else (aliases[0] if aliases else "")
    return render(request, "home.html", http_status=status, message=message, aliases=aliases, fields=fields or {},
                  default_model=default, max_upload_mb=cfg.server.max_upload_mb)


async def _sign_in(request: web.Request, fields: dict) -> web.StreamResponse:
    key = fields.get("api_key", "").strip()
    keyring = request.app[KEYS]
    target = local_target(fields.get("next"))
    if not await keyring.enabled():
        raise web.HTTPSeeOther(target)
    found = await keyring.identify(key) if key else None
    if found is None:
        log.warning("dashboard.sign_in_refused")
        return await sign_in_page(request, 401, "That API key is not valid.", target)
    log.info("dashboard.signed_in", key_name=found.caller.name, admin=found.caller.admin)
    return sign_in_response(request, found.kid, target)


async def _sign_out(request: web.Request, fields: dict) -> web.StreamResponse:
    return sign_out_response()


sign_in = action(_sign_in, sign_in=True)
sign_out = action(_sign_out)


# --- upload --------------------------------------------------------------------------------


async def _read_upload(request: web.Request) -> dict:
    """The form's fields, its file stored as an asset row (checked to be audio) under `asset`."""
    fields, asset = await read_form(request)
    fields["asset"] = asset
    return fields


async def _submit(request: web.Request, fields: dict) -> web.StreamResponse:
    app = request.app
    asset = fields.pop("asset")
    try:
        await uploads.ensure_audio(asset)
    except BadRequest as exc:
        app[STORE].discard(Path(asset.path))
        return _upload_form(request, 400, exc.message, fields)
    await uploads.add_asset(app[DB], app[STORE], asset)
    try:
        task = await api.submit_request(app, requests.parse_generate_request(_generate_body(asset.id, fields)),
                                        caller_of(request))
    except BadRequest as exc:
        await uploads.remove_asset(app[DB], app[STORE], asset)
        return _upload_form(request, 400, exc.message, fields)
    raise web.HTTPSeeOther(f"/tasks/{task.id}")


def _generate_body(asset_id: str, fields: dict) -> dict:
    """The form as the body of async-generate-audio (so it is checked exactly as the API's);
    speaker turns and known speakers (every one the key enrolled) label the speakers too."""
    turns, known = fields.get("speaker_turns") == "on", fields.get("known_speakers") == "on"
    body: dict = {"asset_id": asset_id, "model": fields.get("model") or "whisper-1",
                  "speaker": fields.get("speaker") == "on" or turns or known}
    if turns:
        body["speaker_turns"] = True
    if known:
        body["known_speakers"] = True
    if fields.get("language", "").strip():
        body["language"] = fields["language"].strip()
    if fields.get("num_speakers", "").strip():
        try:
            body["num_speakers"] = int(fields["num_speakers"])
        except ValueError:
            raise BadRequest("num_speakers: must be a whole number from 1 to 32") from None
    return body


def _discard_upload(request: web.Request, fields: dict) -> None:
    """A refused form's file (its CSRF token wrong) goes: it is not an asset yet."""
    request.app[STORE].discard(Path(fields["asset"].path))


upload = action(_submit, form=_read_upload, discard=_discard_upload,
                on_error=lambda request, exc: _upload_form(request, exc.status, exc.message))


# --- tasks ---------------------------------------------------------------------------------


async def _task_page_data(request: web.Request) -> dict:
    status = request.query.get("status") or None
    cursor = request.query.get("cursor") or None
    listing = await views.list_tasks(request.app[DB], status, PAGE_SIZE, cursor, caller_of(request))
    ids = [t["task_id"] for t in listing["items"]]
    async with request.app[DB].session() as s:
        rows = (await s.exec(select(Transcript.task_id, Transcript.duration)
                             .where(col(Transcript.task_id).in_(ids)))).all() if ids else []
    durations = dict(rows)
    return {"tasks": listing["items"], "next_cursor": listing["next_cursor"], "status": status or "",
            "cursor": cursor or "", "durations": durations, "statuses": TaskStatus.ALL}


@page
async def tasks_page(request: web.Request) -> web.Response:
    return render(request, "tasks.html", **await _task_page_data(request))


@fragment
async def task_rows(request: web.Request) -> web.Response:
    return render(request, "_task_rows.html", **await _task_page_data(request))


async def _task(request: web.Request) -> Task:
    """The page's task (404 for an unknown one)."""
    return await views.get_task(request.app[DB], request.match_info["task_id"], caller_of(request))


def _task_data(task: Task) -> dict:
    shown = views.task_view(task)
    result = shown["result"] or {}
    data, turns = result.get("data") or [], result.get("turns") or []
    segments, colours = view.lines(data, turns)
    duration = (result.get("usage_metadata") or {}).get("duration")
    return {"task": shown, "lines": segments, "colours": colours, "duration": duration,
            "bars": view.timeline(turns, colours, duration), "talk": view.speaking_times(data, turns),
            "done": task.status in TaskStatus.TERMINAL, "formats": ("srt", "vtt", "txt", "json")}


async def _deliveries_data(request: web.Request, task: Task) -> dict:
    rows = await deliveries.task_deliveries(request.app[DB], task.id)
    shown = [dict(d, next_attempt_at=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None)
             for d, row in zip(deliveries.summarise(rows), rows)]
    live = task.status not in TaskStatus.TERMINAL or any(d["status"] == DeliveryStatus.PENDING for d in shown)
    return {"task_id": task.id, "deliveries": shown, "deliveries_live": live}


@page
async def task_page(request: web.Request) -> web.Response:
    start = request.query.get("t", "")
    try:
        start_at = max(float(start), 0.0) if start else 0.0
    except ValueError:
        start_at = 0.0
    task = await _task(request)  # one read of the task for the whole page
    return render(request, "task.html", start_at=start_at, **_task_data(task), **await _deliveries_data(request, task))


@fragment
async def task_live(request: web.Request) -> web.Response:
    return render(request, "_task_live.html", start_at=0.0, **_task_data(await _task(request)))


@fragment
async def deliveries_fragment(request: web.Request) -> web.Response:
    return render(request, "_deliveries.html", **await _deliveries_data(request, await _task(request)))


async def _redeliver(request: web.Request, fields: dict) -> web.StreamResponse:
    task_id, _ = await api.redeliver_task(request.app, request.match_info["task_id"], fields.get("target") or None,
                                          caller_of(request))
    raise web.HTTPSeeOther(f"/tasks/{task_id}#deliveries")


redeliver = action(_redeliver)


async def _cancel(request: web.Request, fields: dict) -> web.StreamResponse:
    app = request.app
    task = await lifecycle.cancel_task(app[DB], app[INGESTOR], app[NOTIFIER], request.match_info["task_id"],
                                       caller_of(request))
    raise web.HTTPSeeOther(f"/tasks/{task.id}")


cancel = action(_cancel)


async def _delete(request: web.Request, fields: dict) -> web.StreamResponse:
    await lifecycle.delete_task(request.app[DB], request.app[PLUGINS], request.match_info["task_id"],
                                caller_of(request))
    raise web.HTTPSeeOther("/tasks")


delete = action(_delete)


async def _rename_speaker(request: web.Request, fields: dict) -> web.StreamResponse:
    """A speaker label named: the same function as POST /transcriptions/{task_id}/speakers."""
    done = await speaker_routes.rename_task_speakers(request, request.match_info["task_id"],
                                                     {fields.get("label", ""): fields.get("name", "")})
    raise web.HTTPSeeOther(f"/tasks/{done.task_id}")


rename_speaker = action(_rename_speaker)


@data
async def task_audio(request: web.Request) -> web.StreamResponse:
    task = await _task(request)
    if task.asset_id is None:
        raise NotFound(f"task {task.id} has no uploaded audio (it names a URL)")
    return await api.asset_response(request, task.asset_id)


@data
async def task_transcript(request: web.Request) -> web.StreamResponse:
    response = await api.transcript_response(request.app[DB], request.match_info["task_id"],
                                             request.match_info["fmt"], caller_of(request))
    response.headers["Content-Disposition"] = \
        f"attachment; filename=\"{request.match_info['task_id']}.{request.match_info['fmt']}\""
    return response


# --- search and status ---------------------------------------------------------------------


@page
async def search_page(request: web.Request) -> web.Response:
    q = request.query.get("q", "").strip()
    if "search" not in request.app[PLUGINS].names():
        return error_page(request, 404, "search is not enabled on this gateway (the search plugin is not loaded)")
    hits: list = []
    if q:
        from gateway_plugins.search import index

        found = await index.search(request.app[DB], q, index.Filters(owners=owners(caller_of(request))), 50, 0)
        hits = [dict(hit, pieces=view.snippet_pieces(hit["snippet"])) for hit in found["items"]]
    return render(request, "search.html", q=q, hits=hits)


async def _engine_state(app: web.Application) -> str:
    if app.get(LOOPS) is None:
        return "not used (no worker in this process)"
    engine = app[PROVIDERS].get(LOCAL).engine
    if engine.load_error:
        return f"failed to load: {engine.load_error}"
    return "loaded" if engine.loaded else "loading"


def _local_models(app: web.Application) -> list[dict]:
    """The local engine's models (engine.model_alias and [engine.models]): source, loaded or not."""
    if app.get(LOOPS) is None:
        return []
    models = app[PROVIDERS].get(LOCAL).engine.models
    return [{"alias": alias, "source": src.source, "loaded": models.loaded(alias)} for alias, src in models.sources.items()]


@page
async def status_page(request: web.Request) -> web.Response:
    app = request.app
    try:
        await app[DB].ping()
        database = "ok"
    except Exception as exc:  # shown, not raised: this page reports what is wrong
        database = f"unreachable: {type(exc).__name__}"
    counts: dict = {}
    if database == "ok":
        async with app[DB].session() as s:
            counts = dict((await s.exec(select(Task.status, func.count())
                                        .where(owner_filter(caller_of(request), Task.owner))
                                        .group_by(Task.status))).all())
    providers = [{"name": name, "models": sorted(p.models())} for name, p in sorted(app[PROVIDERS].active.items())]
    return render(request, "status.html", database=database, engine=await _engine_state(app),
                  local_models=_local_models(app),
                  counts={s: counts.get(s, 0) for s in TaskStatus.ALL}, providers=providers,
                  plugins=app[PLUGINS].describe(), api_base=API_BASE)
