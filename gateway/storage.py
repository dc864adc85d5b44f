"""Asset storage: uploads are streamed to disk (never whole in memory), hashed, size-limited."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from gateway.errors import BadRequest, PayloadTooLarge

ASSET_ID_RE = re.compile(r"^re_\d{1,30}$")
CHUNK = 1 << 16


def new_asset_id() -> str:
    return f"re_{secrets.randbelow(9 * 10**17) + 10**17}"


def safe_filename(name: str | None) -> str:
    """A display name without path parts or control characters; never used as a path on disk."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:255] or "upload"


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
        """Write chunks to a temp file, then move it into place; nothing is left behind on error."""
        asset_id = new_asset_id()
        tmp = self.root / "tmp" / f"{asset_id}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"file is larger than server.max_upload_mb "
                                              f"({max_bytes / 1048576:.4g} MB)")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size == 0:
                raise BadRequest("file is empty")
            final = self.path_for(asset_id)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(asset_id, final, size, digest.hexdigest())

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
