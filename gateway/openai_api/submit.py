"""An OpenAI API request turned into an ordinary task and waited for: the model routed to its
provider (which must label speakers for diarized_json, and translate for translations), the file
checked to be audio and kept as an asset, the task queued with its `TaskOptions` through the same
`requests` functions as the memories API's, then answered in the asked format once it is done."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from gateway import API_BASE, api, known_speakers, requests, uploads, views
from gateway.appkeys import CONFIG, DB, NOTIFIER, PROVIDERS, STORE
from gateway.errors import ApiError, BadRequest
from gateway.models import Task, TaskStatus
from gateway.openai_api import formats, sse
from gateway.audio import AudioError
from gateway.openai_api.forms import Request, TranscriptionForm, data_url_bytes
from gateway.options import KnownSpeaker, TaskOptions
from gateway.storage import create_temp
from gateway.tenants import Caller, caller_of
from gateway.voiceprints import KnownVoice, TooLittleSpeech

log = structlog.get_logger(__name__)

FORM_FIELDS = set(TranscriptionForm.model_fields)
TASK_HEADER = "X-Task-Id"  # every answer names its task, to follow it up on the memories API


# The request's fields behind each TaskOptions field, for OpenAI's `param`.
OPTION_FIELDS = {"translate": "model", "word_timestamps": "timestamp_granularities", "details": "response_format",
                 "known_speakers": "known_speaker_names"}


def openai_error(exc: BadRequest) -> BadRequest:
    """A refusal of the shared request checks (`<field>: <reason>`) with that field as OpenAI's `param`."""
    field = exc.message.split(":", 1)[0]
    field = OPTION_FIELDS.get(field, field)
    exc.param = exc.param or (field if field in FORM_FIELDS else None)
    if exc.param == "model":
        exc.code = "model_not_translating" if exc.message.startswith("translate:") else "model_not_found"
    return exc


async def _check(app: web.Application, req: Request, translate: bool) -> TaskOptions:
    """What can be refused before the file becomes an asset; the task's options."""
    form = req.form
    providers = app[PROVIDERS]
    try:
        provider = requests.route(providers, form.model)
    except BadRequest as exc:
        raise openai_error(exc) from None
    if form.speaker and not provider.supports_speaker:
        raise BadRequest(f"response_format: diarized_json needs speaker labels, which the provider behind "
                         f"{form.model!r} ({provider.name}) cannot give", param="response_format")
    options = task_options(req, translate, await reference_voices(app, form))
    try:
        await requests.check_options(providers, provider, form.model, options)
    except BadRequest as exc:
        raise openai_error(exc) from None
    await uploads.ensure_audio(req.asset)
    return options


def task_options(req: Request, translate: bool, known: tuple[KnownVoice, ...] = ()) -> TaskOptions:
    form = req.form
    return TaskOptions(word_timestamps=form.words, prompt=form.prompt, temperature=form.temperature,
                       translate=translate, details=form.response_format == "verbose_json",
                       known_speakers=tuple(KnownSpeaker.of(v) for v in known))


async def reference_voices(app: web.Application, form) -> tuple[KnownVoice, ...]:
    """The voiceprints of known_speaker_references[] under their known_speaker_names[] (the
    reference audio itself is never kept); 400 naming the reference that holds no usable voice."""
    voices = []
    tmp, max_audio_s = Path(app[CONFIG].storage.dir) / "tmp", app[CONFIG].server.max_audio_s
    for i, (name, reference) in enumerate(zip(form.known_speaker_names, form.known_speaker_references)):
        try:
            voiceprint = await asyncio.to_thread(_reference_voiceprint, data_url_bytes(reference), tmp, max_audio_s)
        except (AudioError, TooLittleSpeech) as exc:
            raise BadRequest(f"known_speaker_references[{i}]: {exc}", param="known_speaker_references") from None
        voices.append(KnownVoice(name, voiceprint.wide, voiceprint.narrowband))
    return tuple(voices)


def _reference_voiceprint(raw: bytes, tmp: Path, max_audio_s: float):
    path, f = create_temp(tmp, ".part")
    try:
        with f:
            f.write(raw)
        return known_speakers.voiceprint_of(str(path), None, max_audio_s)
    finally:
        path.unlink(missing_ok=True)


async def queue(app: web.Application, req: Request, caller: Caller, *, translate: bool = False) -> Task:
    """The request as a queued task of `caller`'s (its file an asset); on refusal nothing is kept."""
    db, store = app[DB], app[STORE]
    try:
        options = await _check(app, req, translate)
        await uploads.add_asset(db, store, req.asset)
    except BaseException:
        store.discard(Path(req.asset.path))
        raise
    generate = requests.GenerateRequest(asset_id=req.asset.id, model=req.form.model, speaker=req.form.speaker,
                                        language=req.form.language)
    try:
        provider = await requests.validate_request(db, app[CONFIG], app[PROVIDERS], generate, caller, options)
    except BadRequest as exc:
        await uploads.remove_asset(db, store, req.asset)
        raise openai_error(exc) from None
    return await api.queue_task(app, generate, provider, options, caller=caller)


def shape(req: Request, translate: bool) -> formats.Shape:
    form = req.form
    return formats.Shape(response_format=form.response_format, task=formats.TRANSLATE if translate else formats.TRANSCRIBE,
                         language=form.language, words=form.words, segments=form.segments)


def unfinished(app: web.Application, task: Task) -> ApiError:
    """The answer for a task that failed, or is still running after server.sync_timeout_s."""
    status_url = f"{app[CONFIG].server.public_url.rstrip('/')}{API_BASE}/transcriptions/{task.id}"
    return views.unfinished_error(task, app[CONFIG].server.sync_timeout_s,
                                  f"task {task.id} goes on: GET {status_url} shows it")


async def transcribe(request: web.Request, req: Request, *, translate: bool = False) -> web.Response:
    """Queue the request's task (its caller's), wait for it (server.sync_timeout_s), answer in its
    format. A client that goes away does not stop the task."""
    app = request.app
    task = await queue(app, req, caller_of(request), translate=translate)
    with structlog.contextvars.bound_contextvars(task_id=task.id):
        task = await views.wait_for_task(app[DB], app[NOTIFIER], task.id, app[CONFIG].server.sync_timeout_s)
        if task.status != TaskStatus.COMPLETED:
            raise unfinished(app, task)
        body, media_type = await asyncio.to_thread(formats.render, views.task_view(task)["result"],
                                                   shape(req, translate))  # seconds for 100,000 segments
        return web.Response(body=body, content_type=media_type, charset="utf-8", headers={TASK_HEADER: task.id})


async def stream(request: web.Request, req: Request) -> web.StreamResponse:
    """stream=true: queue the task, then its text as server-sent events (`sse`)."""
    app = request.app
    task = await queue(app, req, caller_of(request))
    with structlog.contextvars.bound_contextvars(task_id=task.id):
        return await sse.write_events(request, sse.deltas(app, task), app[CONFIG].server.sync_timeout_s,
                                      final=lambda: views.get_task(app[DB], task.id),
                                      unfinished=lambda t: unfinished(app, t), headers={TASK_HEADER: task.id})
