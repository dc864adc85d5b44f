"""HTTP handlers of known speakers: enrol (POST /speakers), list, delete, and name a task's speakers
(POST /transcriptions/{task_id}/speakers). Thin: the logic is in known_speakers and renames."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway import API_BASE, known_speakers, renames, schemas, views
from gateway.api import read_json
from gateway.appkeys import CONFIG, DB, PLUGINS, STORE
from gateway.envelope import ok
from gateway.errors import BadRequest
from gateway.models import Speaker
from gateway.openai_api.forms import read_form
from gateway.openapi import endpoint
from gateway.tenants import caller_of
from gateway.views import iso

routes = web.RouteTableDef()

ENROL_FORM = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["name", "file"],
    "properties": {"name": {"type": "string", "maxLength": known_speakers.MAX_NAME},
                   "file": {"type": "string", "format": "binary",
                            "description": f"audio of the voice alone (at most {known_speakers.MAX_ENROL_S:g} s)"}}}}}


def speaker_data(row: Speaker) -> schemas.SpeakerData:
    return schemas.SpeakerData(speaker_id=row.id, name=row.name)


@routes.post(API_BASE + "/speakers")
@endpoint("Enrol a voice by name: from a file (multipart name + file), part of an asset, or a label of a task",
          body=known_speakers.EnrolRequest, request_content=ENROL_FORM, data=schemas.SpeakerData,
          errors=(404, 409, 413, 507))
async def enrol(request: web.Request) -> web.Response:
    app = request.app
    max_audio_s = app[CONFIG].server.max_audio_s
    if request.content_type.startswith("multipart/"):
        fields, stored = await read_form(request)
        try:
            name = known_speakers.parse(known_speakers.FileEnrolment, fields).name
            voiceprint = await known_speakers.voiceprint_or_400(stored.path, None, max_audio_s, "file")
        finally:
            app[STORE].discard(Path(stored.path))  # the voiceprint is kept, never the audio
    else:
        req = known_speakers.parse(known_speakers.EnrolRequest, await read_json(request))
        name = req.name
        voiceprint = await (_of_asset(request, req) if req.asset_id else _of_label(request, req))
    row = await known_speakers.enrol(app[DB], caller_of(request), name, voiceprint)
    return ok(speaker_data(row))


async def _of_asset(request: web.Request, req: known_speakers.EnrolRequest):
    asset = await views.find_asset(request.app[DB], req.asset_id, caller_of(request))
    if asset is None or not Path(asset.path).exists():
        raise BadRequest(f"asset_id: no asset {req.asset_id!r}; upload the file first")
    span = None if req.start_time is None and req.end_time is None else \
        [(req.start_time or 0.0, req.end_time if req.end_time is not None else float("inf"))]
    return await known_speakers.voiceprint_or_400(asset.path, span, request.app[CONFIG].server.max_audio_s,
                                                  "asset_id")


async def _of_label(request: web.Request, req: known_speakers.EnrolRequest):
    db = request.app[DB]
    source = await known_speakers.task_audio(db, await views.get_task(db, req.task_id, caller_of(request)))
    known_speakers.check_labels(source.result, [req.speaker], source.task.id)
    return await known_speakers.voiceprint_or_400(source.path, known_speakers.label_spans(source.result, req.speaker),
                                                  float("inf"), "speaker")


@routes.get(API_BASE + "/speakers")
@endpoint("The enrolled speakers the caller may see", data=schemas.SpeakerList)
async def list_speakers(request: web.Request) -> web.Response:
    rows = await known_speakers.list_speakers(request.app[DB], caller_of(request))
    return ok(schemas.SpeakerList(items=[schemas.SpeakerView(speaker_id=r.id, name=r.name, created_at=iso(r.created_at),
                                                             encoder=r.encoder) for r in rows]))


@routes.delete(API_BASE + "/speakers/{speaker_id}")
@endpoint("Remove an enrolled speaker (its voiceprint): later tasks no longer name it", data=schemas.SpeakerDeleted,
          errors=(404,))
async def delete_speaker(request: web.Request) -> web.Response:
    speaker_id = request.match_info["speaker_id"]
    await known_speakers.delete_speaker(request.app[DB], caller_of(request), speaker_id)
    return ok(schemas.SpeakerDeleted(speaker_id=speaker_id, deleted=True))


@routes.post(API_BASE + "/transcriptions/{task_id}/speakers")
@endpoint("Name a completed task's speakers: {\"SPEAKER_01\": \"Alice\", ...} renames the labels in its result, "
          "search index and subtitles, and enrols those voices", data=schemas.RenameData,
          errors=(400, 404, 408, 409, 413),
          request_content={"application/json": {"schema": {
              "type": "object", "additionalProperties": {"type": "string", "maxLength": known_speakers.MAX_NAME},
              "examples": [{"SPEAKER_01": "Alice"}]}}})
async def rename(request: web.Request) -> web.Response:
    done = await rename_task_speakers(request, request.match_info["task_id"], await read_json(request))
    return ok(rename_data(done))


async def rename_task_speakers(request: web.Request, task_id: str, body) -> renames.Renamed:
    """The API's rename and the dashboard's form alike."""
    app = request.app
    return await renames.rename_speakers(app[DB], app.get(PLUGINS), app[CONFIG].server.public_url,
                                         caller_of(request), task_id, body)


def rename_data(done: renames.Renamed) -> schemas.RenameData:
    return schemas.RenameData(task_id=done.task_id, renamed=done.renamed,
                              enrolled=[speaker_data(r) for r in done.enrolled], not_enrolled=done.not_enrolled,
                              plugins_failed=done.plugins_failed)
