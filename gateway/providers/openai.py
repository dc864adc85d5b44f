"""Any OpenAI-compatible transcription server as a provider, run as a job:

    POST {base_url}/audio/transcriptions   multipart file, model, response_format=verbose_json,
                                           timestamp_granularities[]=segment, language
    -> {"text", "duration", "language", "segments": [{"start", "end", "text", ...}]}

with `Authorization: Bearer <api_key>`. Errors come as {"error": {"message", ...}}.
"""

from __future__ import annotations

from pydantic import Field

from gateway.payloads import Outcome, Segment
from gateway.providers import Job, PermanentError, Provider, RemoteSettings
from gateway.providers.remote import file_form, raise_for_status, request

SERVICE = "openai"


class OpenAISettings(RemoteSettings):
    base_url: str = "https://api.openai.com/v1"
    models: dict[str, str] = {"openai-whisper": "whisper-1"}
    request_timeout_s: float = Field(600, gt=0)  # the whole transcription happens in one request


def _error_message(body) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"])
    return str(body)[:500]


def parse_verbose_json(body) -> Outcome:
    """verbose_json -> Outcome; PermanentError if it is not that shape."""
    try:
        segments = tuple(Segment(float(s["start"]), float(s["end"]), str(s["text"])) for s in body["segments"])
        duration = float(body.get("duration") or max((s.end_time for s in segments), default=0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"{SERVICE}: the answer is not verbose_json with segments "
                             f"({type(exc).__name__}: {exc})", code="5000") from None
    return Outcome(success=True, segments=segments, duration=duration)


class OpenAIProvider(Provider):
    Settings = OpenAISettings

    async def run(self, job: Job) -> Outcome:
        s = self.settings
        headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
        async with job.audio() as path:
            with open(path, "rb") as f:
                form = file_form(f, path.name, model=self.models()[job.task.model], response_format="verbose_json",
                                 language=job.task.language, **{"timestamp_granularities[]": "segment"})
                status, body = await request(job.http, SERVICE, "transcription", s.base_url + "/audio/transcriptions",
                                             timeout_s=s.request_timeout_s, headers=headers, data=form)
        raise_for_status(SERVICE, "transcription", status, _error_message(body))
        job.progress(1.0)
        return parse_verbose_json(body)
