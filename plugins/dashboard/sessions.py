"""Dashboard sessions: a signed cookie made at sign-in, and the CSRF token bound to it.

Stateless, so every gateway process sharing `session_secret` accepts the same cookies:
`<nonce>.<expiry>.<kid>.<signature>`, the signature an HMAC-SHA256 (by the secret) of the rest,
`kid` the id of the key signed in with (gateway.keys.Identity.kid: `c` + 16 hex digits of the
SHA-256 of a server.api_keys key, `n<row id>` for a database key; `-` before sign-in or when auth
is off). A cookie is valid while it is unexpired, and (web.py asks gateway.keys on every request)
while its key is: removing a key from server.api_keys, or revoking a database key, ends its
sessions. The key itself is never in the cookie, in a page or in a URL. The CSRF token is an HMAC
of the session's nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE = "tgw_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
ANONYMOUS = "-"


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    kid: str


class Sessions:
    def __init__(self, secret: str, lifetime_s: int):
        self.secret = (secret or secrets.token_hex(32)).encode()
        self.lifetime_s = lifetime_s

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def make(self, kid: str = ANONYMOUS) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_hex(16), int(time.time()) + self.lifetime_s, kid)
        body = f"{session.nonce}.{session.expires}.{session.kid}"
        return session, f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie value, or None: malformed, forged or expired."""
        if not cookie or cookie.count(".") != 3:
            return None
        nonce, expires, kid, signature = cookie.split(".")
        if not hmac.compare_digest(self._sign(f"{nonce}.{expires}.{kid}"), signature):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        return Session(nonce, int(expires), kid)

    def csrf(self, session: Session) -> str:
        return self._sign("csrf:" + session.nonce)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session), token)
