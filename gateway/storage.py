"""Asset storage: uploads are streamed to disk (never whole in memory), hashed, size-limited,
and written by the storage threads: the event loop never waits for the disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AsyncIterator, BinaryIO, Callable, TypeVar

import structlog

from gateway.errors import BadRequest, InsufficientStorage, PayloadTooLarge

log = structlog.get_logger(__name__)

ASSET_ID_RE = re.compile(r"^re_\d{1,30}$")
CHUNK = 1 << 16
WRITE_BYTES = 1 << 20  # gathered before each trip to a storage thread
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DOWNLOAD_TYPE_RE = re.compile(r"(audio|video)/[a-z0-9][a-z0-9.+-]{0,126}")
_disk = ThreadPoolExecutor(max_workers=4, thread_name_prefix="storage")
T = TypeVar("T")


async def on_disk(fn: Callable[..., T], *args) -> T:
    """Run a blocking file operation on a storage thread. A cancelled caller still waits for it to
    end (a thread cannot be stopped), so that what the caller cleans up next stays cleaned up."""
    job = asyncio.get_running_loop().run_in_executor(_disk, fn, *args)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await job
        raise


def download_type(content_type: str) -> str:
    """The Content-Type a download is served with: the uploader's, without parameters, when it is
    an audio or video type, else application/octet-stream (never a type a browser renders as a page)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media if DOWNLOAD_TYPE_RE.fullmatch(media) else "application/octet-stream"


def new_asset_id() -> str:
    return f"re_{secrets.randbelow(9 * 10**17) + 10**17}"


def safe_filename(name: str | None) -> str:
    """A display name without path parts or control characters; never used as a path on disk."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:255] or "upload"


TEMP_SUFFIXES = (".part", ".url")  # an upload being received, a task's url being downloaded


def create_temp(directory: Path, suffix: str) -> tuple[Path, BinaryIO]:
    """A new file in `directory`, open for writing and locked (flock) for as long as it stays
    open, so that sweep_temp in any process sharing the directory removes it only once its
    writer is gone. If a sweep removed it between its creation and the lock, another is made."""
    while True:
        fd, name = tempfile.mkstemp(dir=directory, suffix=suffix)
        f = os.fdopen(fd, "wb")
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return Path(name), f
        f.close()


def sweep_temp(directory: Path) -> list[str]:
    """Remove the temp files no live process holds (a SIGKILL mid-upload or mid-download leaves
    them behind); the names removed."""
    removed = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in TEMP_SUFFIXES:
            continue
        try:
            with open(path, "rb+") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
        except OSError:  # BlockingIOError: a live process is writing it; or it is gone already
            continue
        removed.append(path.name)
    return removed


@dataclass
class StoredFile:
    asset_id: str
    path: Path
    size: int
    sha256: str


class AssetStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, asset_id: str) -> Path:
        if not ASSET_ID_RE.match(asset_id):
            raise BadRequest(f"invalid asset_id {asset_id!r}")
        return self.root / asset_id[-2:] / asset_id

    async def save_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredFile:
        """Write chunks to a temp file, then move it into place; nothing is left behind on error.
        A full disk is InsufficientStorage (507)."""
        asset_id = new_asset_id()
        tmp, final = None, self.path_for(asset_id)
        digest = hashlib.sha256()
        size, pending, f = 0, bytearray(), None
        try:
            tmp, f = await on_disk(create_temp, self.root / "tmp", ".part")  # locked until moved into place
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"file is larger than server.max_upload_mb "
                                          f"({max_bytes / 1048576:.4g} MB)")
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    data, pending = pending, bytearray()
                    await on_disk(_append, f, digest, data)
            if size == 0:
                raise BadRequest("file is empty")
            await on_disk(_finish, f, digest, pending, tmp, final)
        except BaseException as exc:
            await on_disk(_discard, f, *filter(None, (tmp, final)))
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                log.warning("asset.disk_full", storage_dir=str(self.root), error=str(exc))
                raise InsufficientStorage("not enough space left in storage.dir to store the file; "
                                          "nothing was kept") from None
            raise
        return StoredFile(asset_id, final, size, digest.hexdigest())

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)


def _append(f: IO[bytes], digest, data: bytearray) -> None:
    digest.update(data)  # hashlib lets go of the GIL for large buffers
    f.write(data)


def _finish(f: IO[bytes], digest, data: bytearray, tmp: Path, final: Path) -> None:
    """The last bytes, then fsync, the rename into place and close."""
    _append(f, digest, data)
    f.flush()
    os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    f.close()  # after the rename: until then its lock keeps sweep_temp away


def _discard(f: IO[bytes] | None, *paths: Path) -> None:
    if f is not None:
        with contextlib.suppress(OSError):  # a full disk refuses the flush of what close() would write
            f.close()
    for path in paths:
        path.unlink(missing_ok=True)
