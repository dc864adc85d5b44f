"""Streamed bodies on their way to disk, never whole in memory: an upload saved as a new asset
(`save_stream`), and a task's `url` fetched, redirects checked against the URL policy
(`download`). Both are written by `write_stream` on the storage threads (`storage.on_disk`):
the event loop never waits for the disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AsyncIterator, Awaitable, BinaryIO, Callable

import aiohttp
import structlog
import yarl

from gateway.errors import BadRequest, InsufficientStorage, PayloadTooLarge
from gateway.providers import PermanentError, RetryableError
from gateway.storage import AssetStore, create_temp, new_asset_id, on_disk
from gateway.urls import UrlError, redact

log = structlog.get_logger(__name__)

CHUNK = 1 << 16  # read from a socket at a time
WRITE_BYTES = 1 << 20  # gathered before each trip to a storage thread
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10


async def write_stream(chunks: AsyncIterator[bytes], f: IO[bytes], max_bytes: int, *, too_large: Exception,
                       empty: Exception, finish: Callable[[IO[bytes]], None], digest=None) -> int:
    """Write `chunks` into the open file `f` on the storage threads, WRITE_BYTES at a time (hashed
    into `digest` on the way when one is given), the last bytes followed by `finish(f)` on the same
    trip; `too_large` is raised once more than `max_bytes` have arrived, `empty` if none did. The
    number of bytes written."""
    size, pending = 0, bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        pending += chunk
        if len(pending) >= WRITE_BYTES:
            data, pending = pending, bytearray()
            await on_disk(_append, f, digest, data)
    if size == 0:
        raise empty
    await on_disk(_last, f, digest, pending, finish)
    return size


def _append(f: IO[bytes], digest, data: bytearray) -> None:
    if digest is not None:
        digest.update(data)  # hashlib lets go of the GIL for large buffers
    f.write(data)


def _last(f: IO[bytes], digest, data: bytearray, finish: Callable[[IO[bytes]], None]) -> None:
    _append(f, digest, data)
    finish(f)


def _discard(f: IO[bytes] | None, *paths: Path) -> None:
    if f is not None:
        with contextlib.suppress(OSError):  # a full disk refuses the flush of what close() would write
            f.close()
    for path in paths:
        path.unlink(missing_ok=True)


# --- uploads -----------------------------------------------------------------------------


@dataclass
class StoredFile:
    asset_id: str
    path: Path
    size: int
    sha256: str


async def save_stream(store: AssetStore, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredFile:
    """Write chunks to a temp file, then move it into place as a new asset; nothing is left behind
    on error. A full disk is InsufficientStorage (507)."""
    asset_id = new_asset_id()
    tmp, final = None, store.path_for(asset_id)
    digest = hashlib.sha256()
    f = None
    try:
        tmp, f = await on_disk(create_temp, store.root / "tmp", ".part")  # locked until moved into place
        size = await write_stream(
            chunks, f, max_bytes, digest=digest, finish=functools.partial(_into_place, tmp=tmp, final=final),
            too_large=PayloadTooLarge(f"file is larger than server.max_upload_mb ({max_bytes / 1048576:.4g} MB)",
                                      param="file"),
            empty=BadRequest("file is empty", param="file"))
    except BaseException as exc:
        await on_disk(_discard, f, *filter(None, (tmp, final)))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            log.warning("asset.disk_full", storage_dir=str(store.root), error=str(exc))
            raise InsufficientStorage("not enough space left in storage.dir to store the file; "
                                      "nothing was kept") from None
        raise
    return StoredFile(asset_id, final, size, digest.hexdigest())


def _into_place(f: IO[bytes], tmp: Path, final: Path) -> None:
    """fsync, the rename into place and close."""
    f.flush()
    os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    f.close()  # after the rename: until then its lock keeps sweep_temp away


# --- downloads ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def download(http: aiohttp.ClientSession, url: str, tmp_dir: Path, max_bytes: int, timeout_s: float,
                   check: Callable[[str], Awaitable[object]]) -> AsyncIterator[Path]:
    """A task's `url` fetched into a new temp file in `tmp_dir`, its path yielded, the file removed
    afterwards. It stays open, so locked, for as long as it exists: sweep_temp (another process
    starting) leaves it."""
    path, f = await on_disk(_download_file, tmp_dir)
    try:
        try:
            await fetch_url(http, url, f, max_bytes, timeout_s, check)
        except UrlError as exc:  # refused at connect time: the name now resolves elsewhere
            raise PermanentError(f"could not fetch url: {exc}") from None
        yield path
    finally:
        await on_disk(_discard, f, path)


def _download_file(tmp_dir: Path) -> tuple[Path, BinaryIO]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return create_temp(tmp_dir, ".url")


async def fetch_url(http: aiohttp.ClientSession, url: str, dest: IO[bytes], max_bytes: int,
                    timeout_s: float, check: Callable[[str], Awaitable[object]]) -> None:
    """Download `url` into the file `dest`, within the upload size limit. Redirects are
    followed here, each target passed through `check` first (aiohttp would connect to an IP
    literal without asking the resolver, so a redirect could otherwise reach a private host)."""
    async with asyncio.timeout(timeout_s):
        resp = await _follow(http, url, check)
        async with resp:
            if 400 <= resp.status < 500:
                raise PermanentError(f"could not fetch url: HTTP {resp.status}")
            if resp.status >= 500:  # not raise_for_status: its message holds the URL, credentials and all
                raise RetryableError(f"could not fetch url: HTTP {resp.status}")
            await write_stream(
                resp.content.iter_chunked(CHUNK), dest, max_bytes, finish=_flush,
                too_large=PermanentError(f"url content is larger than server.max_upload_mb "
                                         f"({max_bytes / 1048576:.4g} MB)"),
                empty=PermanentError("url returned an empty body"))


def _flush(f: IO[bytes]) -> None:
    f.flush()


async def _follow(http: aiohttp.ClientSession, url: str, check) -> aiohttp.ClientResponse:
    for _ in range(MAX_REDIRECTS + 1):
        resp = await http.get(url, allow_redirects=False)
        location = resp.headers.get("Location")
        if resp.status not in REDIRECTS or not location:
            return resp
        resp.release()
        url = str(resp.url.join(yarl.URL(location)))
        try:
            await check(url)
        except UrlError as exc:
            raise PermanentError(f"could not fetch url: redirect to {redact(url)} refused: {exc}") from None
    raise PermanentError(f"could not fetch url: more than {MAX_REDIRECTS} redirects")
