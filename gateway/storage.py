"""Asset storage on disk: asset ids and their paths, temp files that a live writer holds locked
(and the sweep of those nobody holds), safe display names, the type a download is served with,
and the storage threads that every file operation runs on (`on_disk`)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

from gateway.errors import BadRequest

ASSET_ID_RE = re.compile(r"^re_\d{1,30}$")
DOWNLOAD_TYPE_RE = re.compile(r"(audio|video)/[a-z0-9][a-z0-9.+-]{0,126}")
_disk = ThreadPoolExecutor(max_workers=4, thread_name_prefix="storage")
T = TypeVar("T")


async def on_disk(fn: Callable[..., T], *args) -> T:
    """Run a blocking file operation on a storage thread. A cancelled caller still waits for it to
    end (a thread cannot be stopped), so that what the caller cleans up next stays cleaned up."""
    work = asyncio.get_running_loop().run_in_executor(_disk, fn, *args)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await work
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


class AssetStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, asset_id: str) -> Path:
        if not ASSET_ID_RE.match(asset_id):
            raise BadRequest(f"invalid asset_id {asset_id!r}")
        return self.root / asset_id[-2:] / asset_id

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
