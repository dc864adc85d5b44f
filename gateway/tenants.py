"""Who is calling: the key behind a request (a stub of the tenants work; the real module keeps
these names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool


ADMIN = Caller("admin", True)


def caller_of(request) -> Caller:
    """The caller of `request`: set by the auth middleware; the admin when none is."""
    return request.get("caller", ADMIN)
