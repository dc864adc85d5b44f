"""Tenants: who is asking (`Caller`, set on each request by the auth middleware) and the owner
rule, in one place: a caller sees what it owns; an admin caller sees everything. What a caller
may not see does not exist for it (404, never 403, so ids do not leak)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import and_, true


@dataclass(frozen=True)
class Caller:
    name: str  # the key's name: what its tasks, assets and speakers are owned by
    admin: bool


ADMIN_NAME = "admin"
ADMIN = Caller(ADMIN_NAME, True)  # server.api_keys' keys, and every caller while auth is off
CALLER = web.RequestKey("caller", Caller)  # request[CALLER], set by the auth middleware (and the dashboard's)


def caller_of(request: web.Request) -> Caller:
    """The request's caller (ADMIN where no key was asked for: auth off, or a signed callback)."""
    return request.get(CALLER, ADMIN)


def visible(caller: Caller, owner: str) -> bool:
    """Whether `caller` may see a row owned by `owner`."""
    return caller.admin or caller.name == owner


def owners(caller: Caller, owner: str | None = None) -> list[str]:
    """The names a row's owner must equal (every one of them) for `caller` to be shown it, narrowed
    to `owner` when one is asked for: [] = every row (an admin), [name] = its own, and a
    non-admin asking for another's gets two names no owner equals at once: nothing."""
    names = [] if caller.admin else [caller.name]
    if owner is not None:
        names.append(owner)
    return names


def owner_filter(caller: Caller, column: Any, owner: str | None = None) -> Any:
    """`owners` as a SQL condition on an owner column (`true()` when every row may be seen)."""
    return and_(true(), *(column == name for name in owners(caller, owner)))
