"""Any OpenAI-compatible transcription server as a provider, run as a job:

    POST {base_url}/audio/transcriptions   multipart file, model, response_format=verbose_json,
                                           timestamp_granularities[]=segment (and =word when the
                                           task asks for word timestamps), language, prompt,
                                           temperature
    -> {"text", "duration", "language", "segments": [{"start", "end", "text", ...}],
        "words": [{"word", "start", "end"}] (with timestamp_granularities[]=word)}

with `Authorization: Bearer <api_key>`. Errors come as {"error": {"message", ...}}.
"""

from __future__ import annotations

from pydantic import Field

from gateway.languages import WHISPER_LANGUAGES
from gateway.payloads import Outcome, Segment, Word
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


def _figures(s: dict) -> dict:
    """The decoder's figures a verbose_json segment has (payloads.DETAILS), as Segment's fields."""
    figures = {k: float(s[k]) for k in ("avg_logprob", "compression_ratio", "no_speech_prob", "temperature")
               if isinstance(s.get(k), (int, float))}
    if isinstance(s.get("seek"), int):
        figures["seek"] = s["seek"]
    if isinstance(s.get("tokens"), list):
        figures["tokens"] = tuple(int(t) for t in s["tokens"])
    return figures


def _words_of(words: list[Word], start: float, end: float) -> tuple[Word, ...]:
    """The words whose middle lies in [start, end): verbose_json gives them apart from the segments."""
    return tuple(w for w in words if start <= (w.start_time + w.end_time) / 2 < end)


def parse_verbose_json(body) -> Outcome:
    """verbose_json -> Outcome (each segment with the words of `words` that fall in it, and the
    decoder's figures it has); PermanentError if it is not that shape."""
    try:
        words = [Word(str(w["word"]), float(w["start"]), float(w["end"])) for w in body.get("words") or ()]
        raw = body["segments"]
        bounds = [float(s["start"]) for s in raw[1:]] + [float("inf")]  # each segment's words end where the next begins
        segments = tuple(Segment(float(s["start"]), float(s["end"]), str(s["text"]),
                                 words=_words_of(words, float(s["start"]) if i else float("-inf"), bounds[i]),
                                 **_figures(s)) for i, s in enumerate(raw))
        duration = float(body.get("duration") or max((s.end_time for s in segments), default=0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"{SERVICE}: the answer is not verbose_json with segments "
                             f"({type(exc).__name__}: {exc})", code="5000") from None
    # the result carries a language code, as the engine's does; OpenAI's own servers name it
    # ("english"), which is left out rather than guessed
    language = body.get("language")
    return Outcome(success=True, segments=segments, duration=duration,
                   language=language if language in WHISPER_LANGUAGES else None)


class OpenAIProvider(Provider):
    Settings = OpenAISettings
    honours = frozenset({"word_timestamps", "prompt", "temperature", "details"})

    async def run(self, job: Job) -> Outcome:
        s = self.settings
        headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
        options = job.options
        granularities = ["segment", "word"] if options.word_timestamps else ["segment"]
        async with job.audio() as path:
            with open(path, "rb") as f:
                form = file_form(f, path.name, model=self.models()[job.task.model], response_format="verbose_json",
                                 language=job.task.language, prompt=options.prompt, temperature=options.temperature,
                                 **{"timestamp_granularities[]": granularities})
                status, body = await request(job.http, SERVICE, "transcription", s.base_url + "/audio/transcriptions",
                                             timeout_s=s.request_timeout_s, headers=headers, data=form)
        raise_for_status(SERVICE, "transcription", status, _error_message(body))
        job.progress(1.0)
        return parse_verbose_json(body)
