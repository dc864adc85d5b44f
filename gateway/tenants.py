"""Who is calling: the authenticated key's name and whether it is an admin key.

A minimal stand-in (branch lifecycle): every caller is ADMIN until keys and tenants land; the
lifecycle functions already take a `caller` and pass it down to the lookups."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool


ADMIN = Caller("admin", True)


def caller_of(request) -> Caller:
    """The authenticated caller of `request` (ADMIN when auth is off)."""
    return request.get("caller", ADMIN)
