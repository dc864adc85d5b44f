"""The /v1 handlers, thin: read the request (`forms`), hand it to `submit` (or `sse` for
stream=true, `catalogue` for the model list), answer."""

from __future__ import annotations

from aiohttp import web

from gateway import subtitles
from gateway.appkeys import PROVIDERS
from gateway.envelope import dumps
from gateway.openai_api import V1, answers, catalogue, forms, submit
from gateway.openapi import endpoint

routes = web.RouteTableDef()

ERRORS = (400, 404, 408, 413, 500, 503, 504, 507)
TEXT = {"schema": {"type": "string"}}
AUDIO_ANSWERS = (answers.Transcription, answers.TranscriptionVerbose, answers.TranscriptionDiarized)


def _json(model) -> web.Response:
    return web.Response(body=dumps(model.model_dump(mode="json")), content_type="application/json", charset="utf-8")


@routes.post(V1 + "/audio/transcriptions")
@endpoint("OpenAI: transcribe a file (a task like any other, waited for); stream=true answers server-sent events",
          request_content=forms.form_schema(forms.TranscriptionForm), answers=AUDIO_ANSWERS,
          content={"text/plain": TEXT, subtitles.MEDIA_TYPES["srt"]: TEXT, subtitles.MEDIA_TYPES["vtt"]: TEXT,
                   "text/event-stream": TEXT},
          error_model=answers.ErrorBody, errors=ERRORS)
async def transcriptions(request: web.Request) -> web.StreamResponse:
    req = await forms.read_request(request, forms.TranscriptionForm)
    if req.form.stream:
        return await submit.stream(request, req)
    return await submit.transcribe(request, req)


@routes.post(V1 + "/audio/translations")
@endpoint("OpenAI: translate a file's speech into English (needs a model that can translate)",
          request_content=forms.form_schema(forms.TranslationForm), answers=AUDIO_ANSWERS[:2],
          content={"text/plain": TEXT, subtitles.MEDIA_TYPES["srt"]: TEXT, subtitles.MEDIA_TYPES["vtt"]: TEXT},
          error_model=answers.ErrorBody, errors=ERRORS)
async def translations(request: web.Request) -> web.Response:
    req = await forms.read_request(request, forms.TranslationForm)
    return await submit.transcribe(request, req, translate=True)


@routes.get(V1 + "/models")
@endpoint("OpenAI: every model alias this gateway serves", answers=(answers.ModelList,), error_model=answers.ErrorBody)
async def models(request: web.Request) -> web.Response:
    return _json(catalogue.model_list(request.app[PROVIDERS]))


@routes.get(V1 + "/models/{model_id:.+}")
@endpoint("OpenAI: one model alias", answers=(answers.Model,), error_model=answers.ErrorBody, errors=(404,))
async def model(request: web.Request) -> web.Response:
    return _json(catalogue.find_model(request.app[PROVIDERS], request.match_info["model_id"]))
