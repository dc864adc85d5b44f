"""Multipart uploads, for the memories API's POST /upload and the OpenAI API's requests alike:
the request's own checks (size announced, multipart at all, the body's deadline), its parts, and
a file part streamed into storage as a new asset (`streams.save_stream`)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import audio, streams
from gateway.appkeys import CONFIG
from gateway.db import Database
from gateway.errors import ApiError, BadRequest, PayloadTooLarge
from gateway.models import Asset
from gateway.storage import AssetStore, on_disk, safe_filename
from gateway.tenants import Caller
from gateway.turns import Turn

FORM_ROOM = 65536  # bytes of a multipart body beyond its file (boundaries, headers, other fields)


@contextlib.asynccontextmanager
async def body_deadline(request: web.Request):
    """Receiving the request body may take at most server.body_timeout_s: then 408."""
    limit = request.app[CONFIG].server.body_timeout_s
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError:
        raise ApiError(f"request body not received within server.body_timeout_s ({limit:g} s)", 408) from None


def upload_limit(request: web.Request, room: int = FORM_ROOM) -> int:
    """server.max_upload_mb in bytes. A Content-Length beyond it (and `room` for the rest of the
    form) is 413 before anything is read; a body that is not multipart is 400."""
    mb = request.app[CONFIG].server.max_upload_mb
    max_bytes = int(mb * 1048576)
    if request.content_length is not None and request.content_length > max_bytes + room:
        raise PayloadTooLarge(f"file is larger than server.max_upload_mb ({mb:g} MB)", param="file")
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the file as multipart/form-data in a field named 'file'", param="file")
    return max_bytes


@contextlib.contextmanager
def multipart_errors():
    """aiohttp's multipart parser's complaints about a malformed body, as 400s."""
    try:
        yield
    except ValueError as exc:
        raise BadRequest(f"malformed multipart/form-data body: {exc}") from None
    except HttpProcessingError as exc:  # a part's headers are not valid HTTP headers
        raise BadRequest(f"malformed multipart/form-data body: {exc.message}") from None


async def parts(request: web.Request, turn: Turn) -> AsyncIterator[BodyPartReader]:
    """The body's parts, in order (read each, or release it, before the next, through `turn`)."""
    reader = await request.multipart()
    while (part := await turn.read(reader.next())) is not None:
        if isinstance(part, MultipartReader):  # a part that is itself multipart (multipart/mixed)
            raise BadRequest("malformed multipart/form-data body: a part is itself multipart; "
                             "send the file as one part named 'file'")
        yield part


async def store_file_part(store: AssetStore, part: BodyPartReader, max_bytes: int, turn: Turn,
                          caller: Caller) -> Asset:
    """The file part streamed into storage (413 past `max_bytes`, nothing kept); its Asset row,
    `caller`'s, not yet added to the database (`add_asset`; or `store.discard` its file)."""
    if part.filename is None:
        raise BadRequest("multipart field 'file' must be a file upload (with a filename)", param="file")

    async def chunks():
        while chunk := await turn.read(part.read_chunk(streams.CHUNK)):
            yield chunk

    stored = await streams.save_stream(store, chunks(), max_bytes)
    return Asset(id=stored.asset_id, filename=safe_filename(part.filename),
                 content_type=(part.headers.get("Content-Type") or "application/octet-stream")[:255],
                 size=stored.size, sha256=stored.sha256, path=str(stored.path), owner=caller.name)


AUDIO_TYPES = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav or webm"  # as OpenAI's API lists them


async def ensure_audio(asset: Asset) -> None:
    """The stored file of `asset` is audio (or video with audio) the engine can decode, else 400."""
    try:
        await on_disk(audio.check_audio, asset.path)
    except audio.AudioError as exc:
        raise BadRequest(f"file: is not audio: {exc}; send {AUDIO_TYPES}", param="file",
                         code="invalid_file_format") from None


async def add_asset(db: Database, store: AssetStore, asset: Asset) -> None:
    """The asset's row stored; if that fails, its file goes too."""
    try:
        async with db.session() as s:
            s.add(asset)
    except BaseException:
        store.discard(Path(asset.path))
        raise


async def remove_asset(db: Database, store: AssetStore, asset: Asset) -> None:
    """An asset no task uses (its request was refused after it was stored): row and file go."""
    async with db.session() as s:
        row = await s.get(Asset, asset.id)
        if row is not None:
            await s.delete(row)
    store.discard(Path(asset.path))
