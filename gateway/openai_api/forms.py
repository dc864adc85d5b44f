"""The OpenAI API's multipart requests, parsed and validated: the file streamed into storage as an
asset (as POST /upload stores one), every other field gathered (`name[]` fields as lists,
`name[key]` fields as an object, as the `openai` client sends them) and validated by the request's
model (`TranscriptionForm`, `TranslationForm`), whose errors name the field (OpenAI's `param`)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from aiohttp import BodyPartReader, web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from gateway import streams, uploads
from gateway.known_speakers import SpeakerName
from gateway.appkeys import STORE, UPLOAD_TURNS
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.models import Asset
from gateway.tenants import caller_of
from gateway.payloads import no_nul
from gateway.turns import Turn
from gateway.validation import describe_validation_error

Text = Annotated[StrictStr, AfterValidator(no_nul)]

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
TRANSLATION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
STREAM_FORMATS = ("json", "text")
MAX_KNOWN_SPEAKERS = 4  # as OpenAI
MAX_REFERENCE_BYTES = 1 << 20  # a known speaker's reference audio, decoded: 2-10 s of audio is what it needs
MAX_FIELD_BYTES = 64 * 1024  # any other field
MAX_REFERENCE_FIELD = MAX_REFERENCE_BYTES * 4 // 3 + 1024  # its data URL: base64 and the header
MAX_FIELDS_BYTES = MAX_KNOWN_SPEAKERS * MAX_REFERENCE_FIELD + 16 * MAX_FIELD_BYTES  # all fields but the file

_DATA_URL = re.compile(r"data:audio/[A-Za-z0-9][A-Za-z0-9.+-]*(?:;[^;,]*)*?;base64,(.*)", re.S)


def data_url_bytes(value: str) -> bytes:
    """The data of a data URL of audio (`data:audio/<type>;base64,<data>`); ValueError if it is none."""
    match = _DATA_URL.fullmatch(value)
    if match is None:
        raise ValueError("must be a data URL of audio: data:audio/<type>;base64,<data>")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 after 'base64,'") from None


def audio_data_url(value: str) -> str:
    """A data URL of audio, its data valid base64 of at most MAX_REFERENCE_BYTES."""
    raw = data_url_bytes(value)
    if not raw:
        raise ValueError("holds no audio")
    if len(raw) > MAX_REFERENCE_BYTES:
        raise ValueError(f"holds {len(raw)} bytes of audio; at most {MAX_REFERENCE_BYTES} "
                         "(a reference needs 2 to 10 s of audio)")
    return value


DataUrl = Annotated[StrictStr, AfterValidator(audio_data_url)]


class ServerVad(BaseModel):
    """chunking_strategy as an object: accepted; the engine always splits audio by voice activity."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"]
    prefix_padding_ms: Optional[int] = Field(None, ge=0)
    silence_duration_ms: Optional[int] = Field(None, ge=0)
    threshold: Optional[float] = Field(None, ge=0, le=1, allow_inf_nan=False)


class _AudioForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text
    prompt: Optional[Text] = Field(None, max_length=4000)
    temperature: Optional[float] = Field(None, ge=0, le=1, allow_inf_nan=False)


class TranslationForm(_AudioForm):
    """POST /v1/audio/translations, every field but `file`."""

    response_format: Literal[TRANSLATION_FORMATS] = "json"  # type: ignore[valid-type]

    # what a translation never asks for (the same questions as of a TranscriptionForm)
    language: ClassVar[None] = None
    stream: ClassVar[bool] = False
    speaker: ClassVar[bool] = False
    words: ClassVar[bool] = False
    segments: ClassVar[bool] = True
    known_speaker_names: ClassVar[tuple[str, ...]] = ()
    known_speaker_references: ClassVar[tuple[str, ...]] = ()


class TranscriptionForm(_AudioForm):
    """POST /v1/audio/transcriptions, every field but `file`."""

    response_format: Literal[TRANSCRIPTION_FORMATS] = "json"  # type: ignore[valid-type]
    language: Optional[Text] = Field(None, max_length=8)
    timestamp_granularities: tuple[Literal["segment", "word"], ...] = ()
    stream: bool = False
    known_speaker_names: tuple[SpeakerName, ...] = Field((), max_length=MAX_KNOWN_SPEAKERS)
    known_speaker_references: tuple[DataUrl, ...] = Field((), max_length=MAX_KNOWN_SPEAKERS)
    chunking_strategy: Union[Literal["auto"], ServerVad, None] = None

    @model_validator(mode="after")
    def _together(self):
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise _FieldError("timestamp_granularities", "only with response_format verbose_json")
        if self.stream and self.response_format not in STREAM_FORMATS:
            raise _FieldError("stream", f"only with response_format {' or '.join(STREAM_FORMATS)}, "
                                        f"not {self.response_format}")
        if len(self.known_speaker_names) != len(self.known_speaker_references):
            raise _FieldError("known_speaker_names", f"{len(self.known_speaker_names)} names for "
                              f"{len(self.known_speaker_references)} known_speaker_references; "
                              "give one of each per speaker")
        if self.known_speaker_names and self.response_format != "diarized_json":
            raise _FieldError("known_speaker_names", "only with response_format diarized_json")
        return self

    @property
    def speaker(self) -> bool:
        """Speaker labels are what diarized_json is for."""
        return self.response_format == "diarized_json"

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def segments(self) -> bool:
        """verbose_json's segments: asked for, or no granularity asked for (OpenAI's default)."""
        return "segment" in self.timestamp_granularities or not self.timestamp_granularities


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


Form = Union[TranscriptionForm, TranslationForm]


@dataclass
class Request:
    """A request's validated fields and its file, stored but not yet an asset row."""

    form: Form
    asset: Asset


async def read_request(request: web.Request, model: type[Form]) -> Request:
    """The multipart body read (the file into storage, within server.max_upload_mb and
    server.body_timeout_s) and its fields validated; on any error nothing is kept."""
    fields, asset = await read_form(request)
    try:
        return Request(validate(model, fields), asset)
    except BaseException:
        request.app[STORE].discard(Path(asset.path))
        raise


async def read_form(request: web.Request) -> tuple[dict[str, Any], Asset]:
    """A multipart form's text fields and its file part `file` (stored, not yet an asset row),
    within server.max_upload_mb and server.body_timeout_s; on any error nothing is kept. Also
    the dashboard's upload form."""
    max_bytes = uploads.upload_limit(request, room=MAX_FIELDS_BYTES)
    store = request.app[STORE]
    fields: dict[str, Any] = {}
    asset: Asset | None = None
    try:
        async with uploads.body_deadline(request), request.app[UPLOAD_TURNS].turn(request) as turn:
            with uploads.multipart_errors():
                asset = await _read_parts(request, turn, fields, max_bytes)
        return fields, asset
    except BaseException:
        if asset is not None:
            store.discard(Path(asset.path))
        raise


async def _read_parts(request: web.Request, turn: Turn, fields: dict[str, Any], max_bytes: int) -> Asset:
    asset, budget = None, MAX_FIELDS_BYTES
    try:
        async for part in uploads.parts(request, turn):
            name = part.name or ""
            if name == "file":
                if asset is not None:
                    raise BadRequest("file: given twice; send one file", param="file")
                asset = await uploads.store_file_part(request.app[STORE], part, max_bytes, turn, caller_of(request))
                continue
            value = await _field_text(part, turn, name, min(budget, _field_limit(name)))
            budget -= len(value)
            _put(fields, name, value)
    except BaseException:
        if asset is not None:
            request.app[STORE].discard(Path(asset.path))
        raise
    if asset is None:
        raise BadRequest("file: is required; send the audio as a multipart file part named 'file'", param="file")
    return asset


def _field_limit(name: str) -> int:
    return MAX_REFERENCE_FIELD if name == "known_speaker_references[]" else MAX_FIELD_BYTES


async def _field_text(part: BodyPartReader, turn: Turn, name: str, limit: int) -> str:
    raw = bytearray()
    while chunk := await turn.read(part.read_chunk(streams.CHUNK)):
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"{_param(name)}: the field is larger than this request allows "
                                  f"({limit} bytes)", param=_param(name))
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise BadRequest(f"{_param(name)}: is not UTF-8 text", param=_param(name)) from None


_KEYED = re.compile(r"([^\[\]]+)\[([^\[\]]+)\]")


def _param(name: str) -> str:
    """The field a multipart name is part of: `a[]` and `a[key]` are parts of `a`."""
    return name.split("[", 1)[0] or name


def _put(fields: dict[str, Any], name: str, value: str) -> None:
    """A multipart field into the form: `name[]` appended to a list, `name[key]` into an object."""
    if not name:
        raise BadRequest("a multipart part has no name; name each field")
    if name.endswith("[]") and "[" not in name[:-2]:
        target = fields.setdefault(name[:-2], [])
        if not isinstance(target, list):
            raise BadRequest(f"{name[:-2]}: given both as a list and as a single value", param=name[:-2])
        target.append(value)
    elif (keyed := _KEYED.fullmatch(name)) is not None:
        target = fields.setdefault(keyed.group(1), {})
        if not isinstance(target, dict) or keyed.group(2) in target:
            raise BadRequest(f"{keyed.group(1)}: {name} given twice, or with {keyed.group(1)} itself",
                             param=keyed.group(1))
        target[keyed.group(2)] = value
    elif name in fields:
        raise BadRequest(f"{name}: given twice; send it once", param=name)
    else:
        fields[name] = value


def validate(model: type[Form], fields: dict[str, Any]) -> Form:
    """The fields as `model`, or a 400 naming the first field at fault."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            raise BadRequest(f"{cause.field}: {cause}", param=cause.field) from None
        param = str(first["loc"][0]) if first["loc"] else None
        message = describe_validation_error(exc, empty="form", strip_value_error=True,
                                            messages={"extra_forbidden": "unknown field", "missing": "is required"})
        if first["type"] == "literal_error" and param == "response_format":
            message = f"response_format: must be one of {', '.join(model.model_fields[param].annotation.__args__)}"
        raise BadRequest(message, param=param) from None


def form_schema(model: type[Form]) -> dict[str, Any]:
    """The multipart body's JSON schema for the OpenAPI document: the model's fields (lists as
    `name[]`) and the file."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": "the audio"}}
    for name, prop in schema["properties"].items():
        if name in ("known_speaker_names", "known_speaker_references", "timestamp_granularities"):
            props[name + "[]"] = {"type": "array", "items": prop.get("items", {"type": "string"})}
        elif name == "chunking_strategy":
            props[name] = {"type": "string", "description": "\"auto\" (or an object as chunking_strategy[type], ...)"}
        else:
            props[name] = prop
    return {"multipart/form-data": {"schema": {"type": "object", "required": ["file", "model"], "properties": props}}}
