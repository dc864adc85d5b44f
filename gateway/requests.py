"""A generate request (async- and sync-generate-audio): parsed, validated against the
providers and the URL policy, and queued as a task."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from gateway.config import Config
from gateway.db import Database
from gateway.errors import BadRequest, Unavailable
from gateway.languages import WHISPER_LANGUAGES
from gateway.local_models import ModelUnavailable
from gateway.models import Task, time_ordered_id
from gateway.notify import publish, task_channel
from gateway.known_speakers import KnownSpeakers
from gateway.options import DEFAULT, KnownSpeaker, TaskOptions
from gateway.providers import LOCAL, Provider, Providers
from gateway.tenants import ADMIN_NAME, Caller
from gateway.payloads import strict_text
from gateway.urls import UrlError, UrlPolicy
from gateway.validation import describe_validation_error
from gateway.views import find_asset
from gateway.voiceprints import KnownVoice


StrictText = strict_text()


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
    word_timestamps: StrictBool = Field(False, description="each segment of the result gets its `words`")
    speaker_turns: StrictBool = Field(False, description="the result gets its `turns`: who spoke when, from the "
                                                         "voices, also where nothing was transcribed; "
                                                         "needs speaker=true")
    prompt: Optional[strict_text(4000)] = Field(None, description="text the decoder starts from (names, spellings, style)")
    hotwords: Optional[strict_text(1000)] = Field(None, description="words to favour")
    known_speakers: Optional[KnownSpeakers] = Field(
        None, description="names of enrolled speakers (POST /speakers), or true for every one the caller may see: "
                          "a voice that matches one is labelled with its name instead of SPEAKER_NN; needs speaker=true")

    def options(self, known: Sequence[KnownVoice] = ()) -> TaskOptions:
        """The engine options this request asks for (the defaults when it names none), with the
        voiceprints of its `known_speakers` (known_speakers.resolve)."""
        return TaskOptions(word_timestamps=self.word_timestamps, speaker_turns=self.speaker_turns,
                           prompt=self.prompt, hotwords=self.hotwords,
                           known_speakers=tuple(KnownSpeaker.of(v) for v in known))


def parse_generate_request(body: Any) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    try:
        return GenerateRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, empty="body",
                                                   messages={"extra_forbidden": "unknown field"})) from None


def route(providers: Providers, model: str) -> Provider:
    """The provider that serves model alias `model`; BadRequest listing the valid ones."""
    name = providers.provider_for(model)
    if name is None:
        valid = ", ".join(sorted(providers.routes))
        raise BadRequest(f"model: unknown model {model!r}; valid models: {valid}")
    return providers.get(name)


async def multilingual(local: Provider, model: str) -> bool:
    """Whether the local engine's model `model` transcribes other languages than English (it loads,
    the first time); 503 saying why when it cannot be loaded."""
    try:
        return await local.engine.multilingual(model)
    except ModelUnavailable as exc:
        raise Unavailable(str(exc), param="model") from None


SPEAKER_HINTS = ("num_speakers", "min_speakers", "max_speakers", "known_speakers", "speaker_turns")


def check_speaker_hints(req: GenerateRequest) -> None:
    """num_speakers (exact) and min_speakers/max_speakers (bounds) need speaker=true and must agree;
    known_speakers and speaker_turns need it too."""
    for name in SPEAKER_HINTS:
        if getattr(req, name) not in (None, False) and not req.speaker:
            raise BadRequest(f"{name}: only meaningful with speaker=true")
    low, high, exact = req.min_speakers, req.max_speakers, req.num_speakers
    if low is not None and high is not None and low > high:
        raise BadRequest(f"min_speakers: {low} is greater than max_speakers ({high})")
    if exact is not None and not (low or 1) <= exact <= (high or exact):
        raise BadRequest(f"num_speakers: {exact} is outside min_speakers..max_speakers "
                         f"({low or 1}..{high if high is not None else 32})")


async def validate_request(db: Database, config: Config, providers: Providers, req: GenerateRequest,
                           caller: Caller, options: TaskOptions | None = None) -> str:
    """Check everything about `caller`'s request before anything is stored (its asset must be one
    `caller` may see; its engine options: `options`, else `req.options()`); returns the provider
    name."""
    if (req.asset_id is None) == (req.url is None):
        raise BadRequest("give exactly one of asset_id or url" if req.asset_id else
                         "asset_id or url is required")
    chosen = route(providers, req.model)
    provider = chosen.name
    if req.speaker and not chosen.supports_speaker:
        why = "; engine.speaker_labels is false" if provider == LOCAL else ""
        raise BadRequest(f"speaker: the provider behind {req.model!r} ({provider}) cannot label speakers{why}")
    check_speaker_hints(req)
    await check_options(providers, chosen, req.model, options or req.options())
    if req.language is not None:
        lang = req.language.lower()
        if lang not in WHISPER_LANGUAGES:
            raise BadRequest(f"language: unknown language code {req.language!r} (use an ISO 639-1 code such as 'en')")
        if provider == LOCAL and lang != "en" and not await multilingual(chosen, req.model):
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
        if await find_asset(db, req.asset_id, caller) is None:
            raise BadRequest(f"asset_id: no asset {req.asset_id!r}; upload the file first")
    return provider


BEST_EFFORT = frozenset({"details"})  # a provider without the decoder's figures leaves them out


async def check_options(providers: Providers, provider: Provider, model: str, options: TaskOptions) -> None:
    """BadRequest naming the first option `provider` cannot honour (Provider.honours; `details`
    are given where a provider has them), or a translation asked of an English-only local model;
    nothing when it can do all of them."""
    asked = options.model_dump(exclude_defaults=True)
    if provider.honours is not None:
        for name in asked:
            if name not in provider.honours and name not in BEST_EFFORT:
                raise BadRequest(f"{name}: the provider behind {model!r} ({provider.name}) does not support it")
    if options.translate and provider.name == LOCAL and not await multilingual(provider, model):
        elsewhere = sorted(alias for alias, name in providers.routes.items() if name != LOCAL)
        hint = (f", or use a model alias of a remote provider that translates ({', '.join(elsewhere)})"
                if elsewhere else "")
        fix = ("(the bundled tiny.en unless engine.model_path says otherwise); set engine.model_path to a multilingual "
               "CTranslate2 Whisper model folder" if model == provider.config.engine.model_alias else
               f"(engine.models.{model}); give that alias a multilingual model")
        raise BadRequest(f"translate: the model behind {model!r} is English-only, so it cannot translate {fix} "
                         f"(e.g. faster-whisper's small){hint}")


async def create_task(db: Database, req: GenerateRequest, provider: str, options: TaskOptions = DEFAULT, *,
                      owner: str = ADMIN_NAME) -> Task:
    task = Task(options=options.dump(), id=time_ordered_id(), owner=owner, asset_id=req.asset_id, url=req.url,
                model=req.model, speaker=req.speaker, language=req.language.lower() if req.language else None,
                num_speakers=req.num_speakers, min_speakers=req.min_speakers,
                max_speakers=req.max_speakers, provider=provider, callback_url=req.callback_url)
    async with db.session() as s:
        s.add(task)
        await publish(s, task_channel(provider))
    return task
