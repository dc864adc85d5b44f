"""The dashboard's plumbing: templates, security headers, who may see a page (the session
cookie), who may change something (session, same origin, CSRF token), and errors as pages."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlsplit

import jinja2
import structlog
from aiohttp import web

from gateway.appkeys import KEYS
from gateway.errors import ApiError
from gateway.tenants import CALLER, caller_of
from gateway_plugins.dashboard import sessions as S
from gateway_plugins.dashboard.view import clock, when

HERE = Path(__file__).resolve().parent
SESSIONS = web.AppKey("dashboard_sessions", S.Sessions)
TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)
SESSION = web.RequestKey("dashboard_session", S.Session)  # the request's Session, found or made by a guard
AUTH_ON = web.RequestKey("dashboard_auth_on", bool)  # whether the gateway asks for keys (session_of)

# No inline script or style, nothing from another origin, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(clock=clock, when=when)
    return env


def render(request: web.Request, name: str, http_status: int = 200, **context: Any) -> web.Response:
    session = request.get(SESSION)
    auth_on = request.get(AUTH_ON, True)
    context.update(csrf=request.app[SESSIONS].csrf(session) if session else "", auth_on=auth_on,
                   signed_in=session is not None and (not auth_on or session.kid != S.ANONYMOUS),
                   path=request.path)
    html = request.app[TEMPLATES].get_template(name).render(**context)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=http_status)


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _cookie(response: web.StreamResponse, value: str, max_age: int) -> None:
    response.set_cookie(S.COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="Strict")


async def session_of(request: web.Request, *, anonymous: bool = False) -> S.Session | None:
    """The request's valid session, its key's caller made the request's (tenants.caller_of): a
    signed-in one while its key is valid (gateway.keys, asked on every request), an anonymous
    one while auth is off; with `anonymous`, also a pre-sign-in one (kid `-`). Sets AUTH_ON."""
    keyring = request.app[KEYS]
    request[AUTH_ON] = auth_on = await keyring.enabled()
    found = request.app[SESSIONS].read(request.cookies.get(S.COOKIE))
    if found is None or found.kid == S.ANONYMOUS:
        return found if found is None or not auth_on or anonymous else None
    caller = await keyring.session_caller(found.kid) if auth_on else None
    if caller is None:
        return None
    request[CALLER] = caller
    return found


async def _ensure_session(request: web.Request, *, anonymous: bool) -> str | None:
    """Find the session, or make an anonymous one (auth off, or a sign-in form); its new cookie."""
    session = await session_of(request, anonymous=anonymous)
    if session is not None:
        request[SESSION] = session
        return None
    session, cookie = request.app[SESSIONS].make()
    request[SESSION] = session
    return cookie


def _finish(request: web.Request, response: web.StreamResponse, new_cookie: str | None) -> web.StreamResponse:
    if new_cookie:
        _cookie(response, new_cookie, request.app[SESSIONS].lifetime_s)
    return _secure(response)


def logged_as(request: web.Request):
    """Every log line of the request names its caller's key (`key_name`; never the key itself)."""
    return structlog.contextvars.bound_contextvars(key_name=caller_of(request).name)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", http_status=status, status_code=status, message=message)


def page(handler: Handler) -> Handler:
    """A page for people: signed in (or auth off), else the sign-in form; errors as a page."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        new_cookie = await _ensure_session(request, anonymous=False)
        if new_cookie and request[AUTH_ON]:  # no valid session: sign in first
            target = request.path_qs
            raise web.HTTPSeeOther("/" if target == "/" else "/?next=" + quote(target, safe=""))
        try:
            with logged_as(request):
                response = await handler(request)
        except ApiError as exc:
            response = error_page(request, exc.status, exc.message)
        return _finish(request, response, new_cookie)
    return wrapped


def same_origin(request: web.Request) -> bool:
    """A browser's POST names its Origin: it must be this host. Without one (not a browser's
    form), a browser's Sec-Fetch-Site must not say another site."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == request.host
    return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")


def refused(request: web.Request, why: str) -> web.Response:
    return _secure(error_page(request, 403, why))


def data(handler: Handler) -> Handler:
    """A route the dashboard's script or player reads: the session cookie, nothing else; with
    fragments, also the CSRF header (so a page of another origin cannot read them even if it
    could send the cookie). Never an API route: the API keeps requiring Authorization."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = await session_of(request)
        if session is None:
            return _secure(web.Response(status=401, text="sign in first"))
        request[SESSION] = session
        try:
            with logged_as(request):
                return _secure(await handler(request))
        except ApiError as exc:
            return _secure(web.Response(status=exc.status, text=exc.message))
    return wrapped


def fragment(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        if not request.app[SESSIONS].csrf_ok(request[SESSION], request.headers.get(S.CSRF_HEADER)):
            return web.Response(status=403, text="missing or wrong X-CSRF-Token")
        return await handler(request)
    return data(checked)


def action(handler: Callable[[web.Request, dict], Awaitable[web.StreamResponse]], *, sign_in: bool = False,
           form: Callable[[web.Request], Awaitable[dict]] | None = None,
           discard: Callable[[web.Request, dict], None] | None = None,
           on_error: Callable[[web.Request, ApiError], web.Response] | None = None) -> Handler:
    """A form's POST: same origin, a session (for sign-in, the form's pre-sign-in one), and the
    form's CSRF token bound to it; `form` reads the body (default: a urlencoded form), `discard`
    undoes what it kept when the token is refused; an error is `on_error`'s page (default: the
    error page) showing the gateway's message."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return refused(request, "refused: this form was sent from another site")
        session = await session_of(request, anonymous=sign_in)
        if session is None:
            raise web.HTTPSeeOther("/")
        request[SESSION] = session
        try:
            fields = await (form or _urlencoded)(request)
            if not request.app[SESSIONS].csrf_ok(session, fields.get(S.CSRF_FIELD)):
                if discard is not None:
                    discard(request, fields)
                return refused(request, "refused: the form's CSRF token is missing or stale; reload the page")
            with logged_as(request):
                return _secure(await handler(request, fields))
        except ApiError as exc:
            return _secure((on_error or _error)(request, exc))
    return wrapped


def _error(request: web.Request, exc: ApiError) -> web.Response:
    return error_page(request, exc.status, exc.message)


async def _urlencoded(request: web.Request) -> dict:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


def see_other(target: str) -> web.Response:
    return web.Response(status=303, headers={"Location": target})


def sign_in_response(request: web.Request, kid: str, target: str) -> web.StreamResponse:
    _, cookie = request.app[SESSIONS].make(kid)
    response = see_other(target)
    _cookie(response, cookie, request.app[SESSIONS].lifetime_s)
    return response


def sign_out_response() -> web.StreamResponse:
    response = see_other("/")
    response.del_cookie(S.COOKIE, path="/")
    return response


async def sign_in_page(request: web.Request, status: int = 200, message: str = "",
                       target: str = "/") -> web.Response:
    new_cookie = await _ensure_session(request, anonymous=True)
    response = render(request, "sign_in.html", http_status=status, message=message, next=target)
    return _finish(request, response, new_cookie)


def local_target(value: str | None) -> str:
    """Where to go after sign-in: a path of this site only (never another origin)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
