"""API keys: the keys of server.api_keys (admin keys, named "admin") and those made by
`transcribe-gateway keys create` (kept in the database as digests only), and who a presented key
is (`Keyring.authenticate`).

A database key is `tgw_` + 32 random bytes (url-safe base64): far too many to guess, so its
digest is an HMAC-SHA256 keyed with server.key_secret (fast: a slow hash would only make every
request a lever for denial of service; nothing is gained by slowing down the guessing of 256
random bits). The key is looked up by its digest (a unique index) and the digests compared in
constant time; server.api_keys are compared in constant time too. Every request reads the key's
row, so a revocation takes effect on the next request in every process sharing the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from gateway.db import Database
from gateway.models import OWNER_MAX, ApiKey, utcnow
from gateway.tenants import ADMIN, ADMIN_NAME, Caller

log = structlog.get_logger(__name__)

PREFIX = "tgw_"
# With server.key_secret empty, the HMAC's key is this label: a digest is then a plain SHA-256
# of 256 random bits, which no one can invert. A secret generated and kept in the same database
# as the digests would protect nothing more; server.key_secret, kept apart from the database
# (config or environment), makes a stolen copy of the database useless even for guessing.
DEFAULT_SECRET = "transcribe-gateway api key"
LAST_USED_EVERY_S = 60  # last_used_at is written at most this often per key: not on every request
NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{OWNER_MAX - 1}}}$")


class KeyRefused(Exception):
    """A key cannot be made or revoked; the message says why."""


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str, key: str) -> str:
    return hmac.new((secret or DEFAULT_SECRET).encode(), key.encode(), hashlib.sha256).hexdigest()


def config_key_ok(presented: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key of server.api_keys."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(presented.encode(), k.encode())
    return found


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise KeyRefused(f"key name {name!r}: use 1-{OWNER_MAX} letters, digits, '-' or '_', starting with a letter "
                        "or digit")
    if name == ADMIN_NAME:
        raise KeyRefused(f"key name {name!r} is reserved: it is the owner of what server.api_keys' keys create")
    return name


async def create(db: Database, secret: str, name: str, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key named `name`: its row (digest only) and the key itself, which nothing keeps."""
    check_name(name)
    key = new_key()
    try:
        async with db.session() as s:
            existing = (await s.exec(select(ApiKey).where(ApiKey.name == name))).first()
            if existing is not None:
                why = " (revoked; a name is never reused, so no new key inherits its data)"
                raise KeyRefused(f"a key named {name!r} exists{why if existing.revoked_at else ''}")
            row = ApiKey(name=name, digest=digest(secret, key), admin=admin)
            s.add(row)
    except IntegrityError:  # made by another process meanwhile
        raise KeyRefused(f"a key named {name!r} exists") from None
    log.info("key.created", key_name=name, admin=admin)
    return row, key


async def list_keys(db: Database) -> list[ApiKey]:
    async with db.session() as s:
        return list((await s.exec(select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.id)))).all())


async def revoke(db: Database, name: str) -> ApiKey:
    """The key named `name` revoked (its row stays, with revoked_at)."""
    async with db.session() as s:
        row = (await s.exec(select(ApiKey).where(ApiKey.name == name))).first()
        if row is None:
            raise KeyRefused(f"no key named {name!r}")
        if row.revoked_at is not None:
            raise KeyRefused(f"key {name!r} is already revoked (at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC)")
        row.revoked_at = utcnow()
        s.add(row)
    log.info("key.revoked", key_name=name)
    return row


@dataclass(frozen=True)
class Identity:
    """Who a key is, and the id a dashboard session remembers it by (`Keyring.session_caller`)."""

    caller: Caller
    kid: str


def config_kid(key: str) -> str:
    return "c" + hashlib.sha256(key.encode()).hexdigest()[:16]


def row_kid(row: ApiKey) -> str:
    return f"n{row.id}"


class Keyring:
    """The keys one process accepts: server.api_keys and the database's."""

    def __init__(self, db: Database, config_keys: list[str], secret: str):
        self.db = db
        self.config_keys = config_keys
        self.secret = secret
        self._on = bool(config_keys)

    async def enabled(self) -> bool:
        """Whether requests need a key: server.api_keys is set, or a key was ever made (a revoked
        one counts: revoking the last key never turns authentication off)."""
        if not self._on:
            async with self.db.session() as s:
                self._on = (await s.exec(select(ApiKey.id).limit(1))).first() is not None
        return self._on

    async def identify(self, presented: str) -> Identity | None:
        if config_key_ok(presented, self.config_keys):
            return Identity(ADMIN, config_kid(presented))
        if not presented.startswith(PREFIX):
            return None
        wanted = digest(self.secret, presented)
        async with self.db.session() as s:
            row = (await s.exec(select(ApiKey).where(ApiKey.digest == wanted))).first()
        if row is None or not hmac.compare_digest(row.digest, wanted) or row.revoked_at is not None:
            return None
        await self._used(row)
        return Identity(Caller(row.name, row.admin), row_kid(row))

    async def authenticate(self, presented: str) -> Caller | None:
        """The caller a presented key is, or None: unknown, or revoked."""
        found = await self.identify(presented)
        return found.caller if found else None

    async def session_caller(self, kid: str) -> Caller | None:
        """The caller a dashboard session signed in as (`Identity.kid`), while its key is valid:
        a config key still in server.api_keys, a database key not revoked."""
        if any(hmac.compare_digest(kid, config_kid(k)) for k in self.config_keys):
            return ADMIN
        if kid[:1] != "n" or not kid[1:].isdigit():
            return None
        async with self.db.session() as s:
            row = await s.get(ApiKey, int(kid[1:]))
        if row is None or row.revoked_at is not None:
            return None
        return Caller(row.name, row.admin)

    async def _used(self, row: ApiKey) -> None:
        now = utcnow()
        last = row.last_used_at
        if last is not None and last.tzinfo is None:  # SQLite hands timestamps back naive
            last = last.replace(tzinfo=now.tzinfo)
        if last is not None and now - last < timedelta(seconds=LAST_USED_EVERY_S):
            return
        cutoff = now - timedelta(seconds=LAST_USED_EVERY_S)
        async with self.db.session() as s:  # one process writes it, the others see it done
            await s.exec(update(ApiKey).where(ApiKey.id == row.id)
                         .where(or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) < cutoff))
                         .values(last_used_at=now))
