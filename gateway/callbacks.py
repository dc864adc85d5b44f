"""What POST /callbacks/{provider} checks before it trusts a caller, so that an unauthenticated
request costs little: the signature headers before the body is read, a bound on the bodies being
received from callers nobody has authenticated yet, and refusals counted (tgw_callbacks_refused_total)
and logged rather than stored."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from typing import Iterator, Mapping

import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway import metrics
from gateway.errors import ApiError, Unauthorized, Unavailable

log = structlog.get_logger(__name__)

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
TOLERANCE_S = 300  # as the standardwebhooks package: a timestamp more than 5 minutes off is refused
BAD_SIGNATURE = "bad_signature"
INVALID = "invalid"
BUSY = "busy"


def _bad_signature(reason: str) -> Unauthorized:
    return Unauthorized(f"invalid webhook signature: {reason}")


def check_signature_headers(headers: Mapping[str, str], now: float | None = None) -> None:
    """The Standard Webhooks headers are there, well formed, and the timestamp is within 5
    minutes: all a forger can get wrong without the body, checked before it is read."""
    missing = [h for h in SIGNATURE_HEADERS if not headers.get(h)]
    if missing:
        raise _bad_signature(f"missing header {', '.join(missing)}")
    try:
        timestamp = float(headers["webhook-timestamp"])
    except ValueError:
        raise _bad_signature("webhook-timestamp must be the seconds since 1970 (an integer)") from None
    skew = timestamp - (time.time() if now is None else now)
    if not -TOLERANCE_S <= skew <= TOLERANCE_S:  # NaN too
        raise _bad_signature(f"webhook-timestamp is more than {TOLERANCE_S // 60} minutes "
                             f"{'ahead' if skew > 0 else 'old'}")
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if not version or "," in signature or not _base64(signature):
            raise _bad_signature("webhook-signature must be space-separated 'v1,<base64 signature>' entries")


def _base64(text: str) -> bool:
    try:
        return bool(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return False


def verify_signature(secret: str, raw: bytes, headers: Mapping[str, str]) -> None:
    """The body's signature, once check_signature_headers has passed: Unauthorized if no v1
    signature matches (a body that is not UTF-8 cannot match what the sender signed)."""
    try:
        Webhook(secret).verify(raw, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise _bad_signature(str(exc)) from None
    except UnicodeDecodeError:
        raise _bad_signature("No matching signature found") from None


class BodyGate:
    """At most `limit` callback bodies from unauthenticated callers being received at once (each
    may hold up to server.max_json_kb); one more is refused with a 503 before its body is read.
    A body that arrived with its headers is already in memory and needs no place."""

    def __init__(self, limit: int):
        self.limit = limit
        self.receiving = 0

    @contextlib.contextmanager
    def place(self, request: web.Request, authenticated: bool) -> Iterator[None]:
        if authenticated or request.content.is_eof():
            yield
            return
        if self.receiving >= self.limit:
            raise Unavailable(f"too many callback bodies being received at once "
                              f"(server.max_unauthenticated_bodies = {self.limit}); try again")
        self.receiving += 1
        try:
            yield
        finally:
            self.receiving -= 1


def refused(provider: str, reason: str, exc: ApiError) -> ApiError:
    """Count and log a callback refused without storing anything; returns `exc` to raise."""
    metrics.observe_refused_callback(provider, reason)
    log.warning("callback.refused", provider=provider, reason=reason, status=exc.status, error=exc.message)
    return exc
