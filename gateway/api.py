"""HTTP handlers: thin; parsing and answering only, the logic lives in plain modules."""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import orjson
import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from gateway import API_BASE, callbacks, decisions, deliveries, known_speakers, lifecycle, metrics, openapi, requests, \
    schemas, subtitles, uploads, views
from gateway.appkeys import CALLBACK_BODIES, CONFIG, DB, INGESTOR, LOOPS, NOTIFIER, PLUGINS, PROVIDERS, STORE, \
    UPLOAD_TURNS
from gateway.envelope import ok
from gateway.errors import ApiError, BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unavailable
from gateway.models import Task, TaskStatus
from gateway.notify import DELIVERIES, task_channel, task_done_channel
from gateway.openapi import endpoint
from gateway.options import DEFAULT as DEFAULT_OPTIONS, TaskOptions
from gateway.payloads import CallbackPayload, parse_callback, parse_valid_callback, result_of
from gateway.plugins import transcript_from_payload
from gateway.providers import LOCAL
from gateway.storage import download_type
from gateway.tenants import CALLER, Caller, caller_of

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

CALLBACK_RACE_WAIT_S = 5.0  # how long a callback may wait for its submission to be stored
UPLOAD_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the audio or video file"}}}}}


async def read_body(request: web.Request) -> bytes:
    """The whole request body, or PayloadTooLarge past server.max_json_kb (read at most one byte more)."""
    limit = request.app[CONFIG].server.max_json_kb * 1024
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    if request.content.is_eof():  # a small body usually arrives with its headers: nothing to wait for
        raw = request.content.read_nowait(limit + 1)
    else:
        async with uploads.body_deadline(request):
            raw = await _read_rest(request, limit)
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"JSON body is larger than server.max_json_kb ({limit // 1024} KB)")


async def _read_rest(request: web.Request, limit: int) -> bytes:
    raw = bytearray()
    # StreamReader.read(n) returns what has arrived so far (up to n), not n bytes: loop to the end.
    while len(raw) <= limit and (chunk := await request.content.read(limit + 1 - len(raw))):
        raw += chunk
    return bytes(raw)


async def read_json(request: web.Request) -> Any:
    return _parse_json(await read_body(request))


MAX_JSON_DEPTH = 64  # no request of ours nests deeper than 6; json.loads would recurse into 1,000
_JSON_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS = re.compile(rb"[\[\]{}]")


def _too_deep(raw: bytes) -> bool:
    """Arrays and objects nested deeper than MAX_JSON_DEPTH (brackets inside strings not counted)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRINGS.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("body is empty; send a JSON object")
    if _too_deep(raw):
        raise BadRequest(f"body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        if b"\\ud" in raw or b"\\uD" in raw:  # json.loads lets a lone surrogate through; no database stores one
            orjson.loads(raw)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


# --- assets ------------------------------------------------------------------------------


@routes.post(API_BASE + "/upload")
@endpoint("Upload an audio or video file; answers its asset_id", data=schemas.UploadData, errors=(400, 408, 413, 507),
          request_content=UPLOAD_FORM)
async def upload(request: web.Request) -> web.Response:
    max_bytes = uploads.upload_limit(request)
    async with uploads.body_deadline(request):
        return await _store_upload(request, max_bytes)


async def _store_upload(request: web.Request, max_bytes: int) -> web.Response:
    store = request.app[STORE]
    async with request.app[UPLOAD_TURNS].turn(request) as turn:  # every read of the body takes its turn
        with uploads.multipart_errors():
            async for part in uploads.parts(request, turn):
                if part.name != "file":
                    await turn.read(part.release())
                    continue
                asset = await uploads.store_file_part(store, part, max_bytes, turn, caller_of(request))
                turn.give_up()  # the body is read: the next one's turn while this one is stored
                await uploads.add_asset(request.app[DB], store, asset)
                log.info("asset.uploaded", asset_id=asset.id, size=asset.size)
                return ok(schemas.UploadData(asset_id=asset.id))
    raise BadRequest("multipart field 'file' is required")


@routes.get(API_BASE + "/{asset_id}/download")
@endpoint("Download an uploaded file (its audio or video type, else application/octet-stream)", errors=(404,),
          content={"*/*": {"schema": {"type": "string", "format": "binary"}}})
async def download(request: web.Request) -> web.StreamResponse:
    return await asset_response(request, request.match_info["asset_id"])


async def asset_response(request: web.Request, asset_id: str) -> web.StreamResponse:
    """An asset's file (Range honoured), for the API's download and the dashboard's player."""
    asset = await views.get_asset(request.app[DB], asset_id, caller_of(request))
    try:
        size = os.stat(asset.path).st_size
    except FileNotFoundError:
        log.error("asset.file_missing", asset_id=asset_id)
        raise NotFound(f"asset {asset_id!r} has no file in storage any more") from None
    if _unservable_range(request, size):
        raise ApiError(f"Range {request.headers['Range']!r} is not one byte range within the file's {size} "
                       "bytes", 416)
    disposition = "attachment; filename*=UTF-8''" + _quote(asset.filename)
    return web.FileResponse(asset.path, headers={"Content-Type": download_type(asset.content_type),
                                                 "X-Content-Type-Options": "nosniff",
                                                 "Content-Disposition": disposition})


@routes.delete(API_BASE + r"/{asset_id:re_\d+}")  # only asset ids: any other path stays 404 (not 405)
@endpoint("Delete an uploaded file; tasks that used it keep their transcripts", data=schemas.DeletedAsset,
          errors=(404, 409))
async def delete_asset(request: web.Request) -> web.Response:
    asset_id = await lifecycle.delete_asset(request.app[DB], request.match_info["asset_id"], caller_of(request))
    return ok(schemas.DeletedAsset(asset_id=asset_id, deleted=True))


def _unservable_range(request: web.Request, size: int) -> bool:
    """A Range that FileResponse would answer with an empty 416 outside the envelope: malformed,
    several ranges, or starting past the end. (With If-Range, FileResponse decides.)"""
    if "Range" not in request.headers or "If-Range" in request.headers:
        return False
    try:
        start = request.http_range.start
    except ValueError:
        return True
    return start is not None and start >= size


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


# --- transcriptions ----------------------------------------------------------------------


async def _submit(request: web.Request) -> Task:
    return await submit_request(request.app, requests.parse_generate_request(await read_json(request)),
                                caller_of(request))


async def submit_request(app: web.Application, req: requests.GenerateRequest, caller: Caller) -> Task:
    """A parsed request checked (its known speakers resolved to their voiceprints) and queued as
    `caller`'s: async-generate-audio's, and the dashboard's upload form's."""
    options = req.options(await known_speakers.resolve(app[DB], caller, req.known_speakers))
    provider = await requests.validate_request(app[DB], app[CONFIG], app[PROVIDERS], req, caller, options)
    return await queue_task(app, req, provider, options, caller=caller)


async def queue_task(app: web.Application, req: requests.GenerateRequest, provider: str,
                     options: TaskOptions = DEFAULT_OPTIONS, *, caller: Caller) -> Task:
    """A validated request stored as a queued task of `caller`'s, and its provider's loop woken."""
    task = await requests.create_task(app[DB], req, provider, options, owner=caller.name)
    app[NOTIFIER].wake(task_channel(provider))
    log.info("task.queued", task_id=task.id, model=task.model, provider=provider, owner=task.owner)
    return task


@routes.post(API_BASE + "/transcriptions/async-generate-audio")
@endpoint("Queue a transcription; answers its task_id at once", body=requests.GenerateRequest,
          data=schemas.TaskIdData)
async def async_generate(request: web.Request) -> web.Response:
    task = await _submit(request)
    return ok(schemas.TaskIdData(task_id=task.id))


@routes.post(API_BASE + "/transcriptions/sync-generate-audio")
@endpoint("Transcribe and wait for the result (up to server.sync_timeout_s)", body=requests.GenerateRequest,
          data=schemas.SyncData, errors=(500, 504))
async def sync_generate(request: web.Request) -> web.Response:
    task = await _submit(request)
    app = request.app
    task = await views.wait_for_task(app[DB], app[NOTIFIER], task.id, app[CONFIG].server.sync_timeout_s)
    if task.status == TaskStatus.COMPLETED:
        result = views.task_view(task)["result"]
        items = [{"text": x["text"], "start_time": x["start_time"], "end_time": x["end_time"],
                  "speaker": x["speaker"], "words": x.get("words")} for x in result["data"]]
        return ok(schemas.SyncData(model=task.model, items=items, task_id=task.id, note=task.note,
                                   turns=result.get("turns")))
    raise views.unfinished_error(task, app[CONFIG].server.sync_timeout_s,
                                 f"poll GET {API_BASE}/transcriptions/{task.id}")


@routes.get(API_BASE + "/transcriptions/{task_id}")
@endpoint("A task: status, progress, error, result once completed, and its deliveries", data=schemas.TaskView,
          errors=(404,))
async def get_transcription(request: web.Request) -> web.Response:
    db = request.app[DB]
    task = await views.get_task(db, request.match_info["task_id"], caller_of(request))
    return ok(await full_view(db, task))


async def full_view(db, task: Task) -> schemas.TaskView:
    view = views.task_view(task)
    view["deliveries"] = await deliveries.delivery_summary(db, task.id)
    return schemas.TaskView(**view)


@routes.delete(API_BASE + "/transcriptions/{task_id}")
@endpoint("Delete a task: its transcript, search rows, subtitle files, deliveries, and its audio unless another "
          "task uses it", data=schemas.DeletedTask, errors=(404,))
async def delete_transcription(request: web.Request) -> web.Response:
    app = request.app
    task_id = await lifecycle.delete_task(app[DB], app[PLUGINS], request.match_info["task_id"], caller_of(request))
    return ok(schemas.DeletedTask(task_id=task_id, deleted=True))


@routes.post(API_BASE + "/transcriptions/{task_id}/cancel")
@endpoint("Cancel a queued or processing task (status cancelled; its callback in the failure shape, data.msg "
          '"cancelled"); answers the task', data=schemas.TaskView, errors=(404, 409))
async def cancel_transcription(request: web.Request) -> web.Response:
    app = request.app
    task = await lifecycle.cancel_task(app[DB], app[INGESTOR], app[NOTIFIER], request.match_info["task_id"],
                                       caller_of(request))
    return ok(await full_view(app[DB], task))


@routes.get(API_BASE + "/transcriptions/{task_id}/transcript.{fmt}")
@endpoint("The completed transcript as SRT, WebVTT, plain text or JSON", errors=(404, 409),
          content={media: {"schema": {"type": "string"}} for media in subtitles.MEDIA_TYPES.values()},
          path_params={"fmt": {"type": "string", "enum": list(subtitles.FORMATS)}})
async def transcript(request: web.Request) -> web.Response:
    """The completed transcript as SRT, WebVTT, plain text or JSON (the same renderings as the srt plugin)."""
    return await transcript_response(request.app[DB], request.match_info["task_id"], request.match_info["fmt"],
                                     caller_of(request))


async def transcript_response(db, task_id: str, fmt: str, caller: Caller) -> web.Response:
    """A completed task's transcript in `fmt` (404 unknown format or task, 409 not completed);
    the API's and the dashboard's downloads alike."""
    if fmt not in subtitles.FORMATS:
        raise NotFound(f"no transcript format {fmt!r}; use one of {', '.join(subtitles.FORMATS)}")
    task = await views.get_task(db, task_id, caller)
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(f"task {task.id} is {task.status}; a transcript exists once it is completed", 409)
    body = await asyncio.to_thread(_render, fmt, task.result_json)  # seconds for 100,000 segments
    return web.Response(body=body, charset="utf-8", content_type=subtitles.MEDIA_TYPES[fmt])


def _render(fmt: str, result_json: str) -> bytes:
    payload = json.loads(result_json)
    return subtitles.render(fmt, transcript_from_payload(payload).segments, result_of(payload)).encode()


@routes.post(API_BASE + "/transcriptions/{task_id}/redeliver")
@endpoint("Run a finished task's deliveries again (all, or one target), with a fresh attempt budget",
          query=schemas.RedeliverQuery, data=schemas.RedeliverData, errors=(404,))
async def redeliver(request: web.Request) -> web.Response:
    target = schemas.parse_query(schemas.RedeliverQuery, request.query).target
    task_id, count = await redeliver_task(request.app, request.match_info["task_id"], target, caller_of(request))
    return ok(schemas.RedeliverData(task_id=task_id, redelivering=count))


async def redeliver_task(app: web.Application, task_id: str, target: str | None, caller: Caller) -> tuple[str, int]:
    """A task's deliveries (all, or to `target`) queued again and this process's loop woken: the
    task's id and how many; 404 for an unknown task, or a target it has no delivery to. The
    API's redeliver and the dashboard's button alike."""
    db = app[DB]
    task = await views.get_task(db, task_id, caller)
    count = await deliveries.redeliver(db, task.id, target)
    if target and count == 0:
        raise NotFound(f"task {task.id} has no delivery to {target!r}")
    app[NOTIFIER].wake(DELIVERIES)
    return task.id, count


@routes.get(API_BASE + "/transcriptions")
@endpoint("A page of tasks, newest first", query=schemas.ListQuery, data=schemas.TaskPage)
async def list_transcriptions(request: web.Request) -> web.Response:
    q = schemas.parse_query(schemas.ListQuery, request.query)
    page = await views.list_tasks(request.app[DB], q.status, q.limit, q.cursor, caller_of(request), q.owner)
    return ok(schemas.TaskPage(**page))


# --- callbacks ---------------------------------------------------------------------------


@routes.post(API_BASE + "/callbacks/{provider}")
@endpoint("A provider's result for a task: stored once, repeats acknowledged, conflicts refused",
          body=CallbackPayload, data=schemas.CallbackAck, errors=(401, 404, 409, 503))
async def callback(request: web.Request) -> web.Response:
    app = request.app
    name = request.match_info["provider"]
    provider = app[PROVIDERS].active.get(name)
    if provider is None:
        raise NotFound(f"unknown provider {name!r}")
    raw = await _callback_body(request, name, provider)
    raw_sha256 = callbacks.body_sha256(raw)
    result = await app[INGESTOR].repeat(name, raw_sha256) or await _ingest_new(request, name, raw, raw_sha256)
    if result.outcome == decisions.CONFLICT:
        raise ApiError(f"task {result.task_id} already has a different result; nothing changed", 409)
    if result.outcome == decisions.ACCEPTED:
        app[NOTIFIER].wake(DELIVERIES)
        app[NOTIFIER].wake(task_done_channel(result.task_id))
    return ok(schemas.CallbackAck(task_id=result.task_id, outcome=result.outcome))


async def _callback_body(request: web.Request, name: str, provider) -> bytes:
    """The body, read once its sender may send it: signature headers (and their timestamp)
    checked first, a place among the unauthenticated bodies, then the signature itself."""
    secret = provider.settings.secret
    by_key = CALLER in request  # the auth middleware took its key
    try:
        if secret:
            callbacks.check_signature_headers(request.headers)
        with request.app[CALLBACK_BODIES].place(request, authenticated=by_key):
            raw = await read_body(request)
        if secret:
            callbacks.verify_signature(secret, raw, request.headers)
        return raw
    except Unauthorized as exc:
        raise callbacks.refused(name, callbacks.BAD_SIGNATURE, exc) from None
    except Unavailable as exc:
        raise callbacks.refused(name, callbacks.BUSY, exc) from None


async def _ingest_new(request: web.Request, provider: str, raw: bytes, raw_sha256: str) -> decisions.IngestResult:
    """A body not seen before: parse it, find its task, and hand it to the door."""
    app = request.app
    try:
        external_id, outcome = parse_valid_callback(raw) or parse_callback(_parse_json(raw))
    except BadRequest as exc:
        raise callbacks.refused(provider, callbacks.INVALID, exc) from None
    # Our own task ids need no lookup: ingest finds (and locks) the task in its one transaction.
    task_id = external_id if provider == LOCAL else \
        await callbacks.find_task_id_waiting(app[DB], provider, external_id, CALLBACK_RACE_WAIT_S)
    if task_id is not None and not caller_of(request).admin and not await _owns(request, task_id):
        task_id = None  # a key that is not an admin's reports results of its own tasks only
    result = await app[INGESTOR].ingest(task_id, outcome, provider=provider, external_task_id=external_id,
                                        raw_sha256=raw_sha256) if task_id is not None else None
    if result is None or result.outcome == decisions.UNKNOWN_TASK:
        raise callbacks.refused(provider, decisions.UNKNOWN_TASK,
                                NotFound(f"no task {external_id!r} for provider {provider!r}"))
    return result


async def _owns(request: web.Request, task_id: str) -> bool:
    try:
        await views.get_task(request.app[DB], task_id, caller_of(request))
    except NotFound:
        return False
    return True


# --- health ------------------------------------------------------------------------------


@endpoint("Liveness: the process serves HTTP", data=schemas.Health, auth=False)
async def healthz(request: web.Request) -> web.Response:
    return ok(schemas.Health(status="ok"))


NOT_YET = "not loaded yet"


@endpoint("Readiness: the database answers, the engine and its speaker encoder are loaded",
          data=schemas.Ready, errors=(503,), auth=False)
async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[DB].ping(), 5)
    except (SQLAlchemyError, OSError, asyncio.TimeoutError) as exc:
        raise Unavailable(f"database unreachable: {type(exc).__name__}") from None
    if request.app.get(LOOPS) is None:
        unused = "not used (no worker in this process)"
        return ok(schemas.Ready(database="ok", engine=unused, speakers=unused, models={}))
    engine = request.app[PROVIDERS].get(LOCAL).engine
    for what, failure in (("engine", engine.load_error), ("speaker encoder", engine.speakers_error)):
        if failure:
            raise Unavailable(f"{what} failed to load: {failure}")
    model = "loaded" if engine.loaded else NOT_YET
    speakers = ("disabled (engine.speaker_labels = false)" if not engine.cfg.speaker_labels
                else "loaded" if engine.speakers_loaded else NOT_YET)
    if NOT_YET in (model, speakers):
        raise Unavailable(f"engine {model}; speaker encoder {speakers}")
    models = {alias: "loaded" if engine.models.loaded(alias) else "not loaded" for alias in engine.models.sources}
    return ok(schemas.Ready(database="ok", engine="loaded", speakers=speakers, models=models))


@routes.get("/metrics")
@endpoint("Prometheus metrics (text exposition format)", auth=False,
          content={"text/plain": {"schema": {"type": "string"}}})
async def prometheus_metrics(request: web.Request) -> web.Response:
    body = await metrics.exposition(request.app[DB])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


@routes.get("/openapi.json")
@endpoint("This description of the API (OpenAPI 3.1)", auth=False,
          content={"application/json": {"schema": {"type": "object"}}})
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec(request.app))


for prefix in ("", API_BASE):
    routes.get(prefix + "/healthz")(healthz)
    routes.get(prefix + "/readyz")(readyz)

PUBLIC_PATHS = {"/healthz", "/readyz", API_BASE + "/healthz", API_BASE + "/readyz"}
