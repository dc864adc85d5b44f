"""The application factory: `create_app(config)` wires state, middlewares and cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from sqlalchemy.exc import DBAPIError

from gateway import API_BASE, metrics
from gateway import api as api_routes
from gateway import speaker_routes
from gateway.appkeys import CALLBACK_BODIES, CONFIG, DB, HTTP, INGESTOR, KEYS, LOOPS, NOTIFIER, PLUGINS, PROVIDERS, \
    STORE, UPLOAD_TURNS
from gateway.callbacks import BodyGate
from gateway.config import Config
from gateway.db import Database, unavailable, upgrade_async
from gateway.envelope import error_for
from gateway.errors import ApiError
from gateway.ingest import Ingestor
from gateway.keys import Keyring
from gateway.loops import Loops
from gateway.notify import Notifier, PgListener
from gateway.openai_api import V1
from gateway.openai_api import routes as openai_routes
from gateway.plugins import GatewayContext, Plugins
from gateway.storage import AssetStore, sweep_temp
from gateway.tenants import CALLER
from gateway.turns import Turns
from gateway.providers import LOCAL, Providers

log = structlog.get_logger(__name__)


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return "request body is too large"
    return exc.reason


def _payload_message(exc: web.RequestPayloadError, request: web.Request) -> str:
    if isinstance(exc.__cause__, ContentEncodingError):
        return f"request body is not valid {request.headers.get('Content-Encoding', '')} data (its Content-Encoding)"
    return f"request body is malformed: {exc.__cause__ or exc}"


@web.middleware
async def metrics_middleware(request: web.Request, handler):
    """Count and time every answer by its route pattern (not its path: ids would explode the labels)."""
    t0 = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.observe_http(request.method, route, status, time.perf_counter() - t0)


@web.middleware
async def envelope_middleware(request: web.Request, handler):
    """Every error is answered in one shape, chosen by path (`envelope.error_for`: the envelope, or
    OpenAI's error body under /v1): ApiError and HTTP errors mapped, never a stack trace."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_for(request.path, exc.status, exc.message, param=exc.param, code=exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # required on a 405
        return error_for(request.path, exc.status, _http_message(exc, request), headers=allow)
    except web.RequestPayloadError as exc:  # the body's chunking or Content-Encoding is broken
        msg = _payload_message(exc, request)
        log.warning("http.malformed_body", method=request.method, path=request.path, error=msg)
        return error_for(request.path, 400, msg)
    except asyncio.CancelledError:
        raise
    except DBAPIError as exc:
        if not unavailable(exc):
            log.exception("http.unhandled", method=request.method, path=request.path)
            return error_for(request.path, 500, "internal error; see the gateway's log")
        log.warning("http.database_unavailable", method=request.method, path=request.path,
                    error=type(exc.orig).__name__)
        return error_for(request.path, 503, "database unavailable; try again later")
    except Exception:
        log.exception("http.unhandled", method=request.method, path=request.path)
        return error_for(request.path, 500, "internal error; see the gateway's log")


def _presented_key(header: str) -> str:
    return header[7:].strip() if header[:7].lower() == "bearer " else header.strip()


def _utf8(header: str) -> bool:
    """aiohttp decodes header bytes that are not UTF-8 to lone surrogates, which no key holds."""
    try:
        header.encode()
    except UnicodeEncodeError:
        return False
    return True


KEYED_PREFIXES = (API_BASE, V1)  # the memories API and the OpenAI-compatible one


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """`Authorization: <key>` or `Bearer <key>` against server.api_keys and the database's keys
    (gateway/keys.py), under both APIs: the request's caller (gateway/tenants.py) is its key's."""
    if request.path in api_routes.PUBLIC_PATHS or not request.path.startswith(KEYED_PREFIXES):
        return await handler(request)
    keyring = request.app[KEYS]
    if not await keyring.enabled():
        return await handler(request)
    if request.path.startswith(API_BASE + "/callbacks/"):
        provider = request.app[PROVIDERS].active.get(request.path.rsplit("/", 1)[-1])
        if provider is not None and provider.callbacks_skip_api_key:
            return await handler(request)  # authenticated by its signature, or by the upstream id
    header = request.headers.get("Authorization", "")
    if not header:
        return error_for(request.path, 401,
                         "missing Authorization header; send 'Authorization: <api key>' or 'Bearer <api key>'")
    if not header.isascii() and not _utf8(header):
        return error_for(request.path, 400, "Authorization header is not valid UTF-8")
    caller = await keyring.authenticate(_presented_key(header))
    if caller is None:
        return error_for(request.path, 401, "invalid API key")
    request[CALLER] = caller
    with structlog.contextvars.bound_contextvars(key_name=caller.name):
        return await handler(request)


async def _storage(app: web.Application):
    """Temp files left behind by a process killed mid-upload or mid-download go at start-up;
    those a live process (sharing storage.dir) is writing are locked and stay."""
    removed = await asyncio.to_thread(sweep_temp, app[STORE].root / "tmp")
    if removed:
        log.warning("storage.temp_files_removed", count=len(removed), files=removed[:20])
    yield


async def _database(app: web.Application):
    url = app[CONFIG].database.url
    await upgrade_async(url, app[PLUGINS])
    app[DB] = Database(url, writers=app[CONFIG].database.writers)
    app[KEYS] = Keyring(app[DB], app[CONFIG].server.api_keys, app[CONFIG].server.key_secret)
    app[INGESTOR] = Ingestor(app[DB], app[CONFIG], app[PLUGINS])
    yield
    await app[INGESTOR].close()  # results already acknowledged to no one yet are stored first
    await app[DB].close()


def _providers_context(load_model: bool):
    async def ctx(app: web.Application):
        """The local engine (and its speaker encoder, unless engine.speaker_labels is false) loads
        in the background (reported by /readyz) where work runs; an API-only process loads the
        model only if a request needs it."""
        engine = app[PROVIDERS].get(LOCAL).engine
        loading = []
        if load_model:
            loading.append(asyncio.create_task(engine.load()))
            if engine.cfg.speaker_labels:
                loading.append(asyncio.create_task(engine.load_speakers()))
        for task in loading:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        yield
        for task in loading:
            task.cancel()
        for provider in app[PROVIDERS].active.values():
            provider.close()
    return ctx


async def _listener(app: web.Application):
    """On PostgreSQL, wake-ups from other processes arrive by LISTEN/NOTIFY."""
    if app[DB].sqlite:
        yield
        return
    listener = PgListener(app[CONFIG].database.url, app[NOTIFIER])
    task = asyncio.create_task(listener.run())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(listener.listening.wait(), 5)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _http(app: web.Application):
    app[HTTP] = aiohttp.ClientSession()
    yield
    await app[HTTP].close()


def _worker_context(app: web.Application):
    async def ctx(app: web.Application):
        loops = Loops(app[DB], app[CONFIG], app[PROVIDERS], app[NOTIFIER], app[HTTP], app[PLUGINS],
                      app[INGESTOR])
        app[LOOPS] = loops
        loops.start()
        yield
        await loops.stop()
    return ctx


async def _startup_hooks(app: web.Application):
    app[PLUGINS].context = GatewayContext(app[CONFIG], app[DB], app)
    await app[PLUGINS].call_all("startup")
    yield


def create_app(config: Config, *, worker: bool = True, api: bool = True,
               plugins: Plugins | None = None) -> web.Application:
    """The gateway application: `worker=False` serves the API only (`serve --no-worker`),
    `api=False` runs only the loops (`transcribe-gateway worker`, no routes).

    Raises PluginError or ProviderError when a plugin or provider cannot be loaded or its
    section is invalid."""
    app = web.Application(middlewares=[metrics_middleware, envelope_middleware, auth_middleware],
                          client_max_size=config.server.max_json_kb * 1024)
    app[CONFIG] = config
    app[NOTIFIER] = Notifier()
    app[CALLBACK_BODIES] = BodyGate(config.server.max_unauthenticated_bodies)
    app[STORE] = AssetStore(config.storage.dir)
    app[UPLOAD_TURNS] = Turns(config.server.max_concurrent_uploads)
    app[PLUGINS] = plugins or Plugins(config.plugins.load, config.plugins.sections())
    app[PROVIDERS] = Providers(config, app[PLUGINS])
    app.cleanup_ctx.extend([_storage, _database, _listener, _providers_context(load_model=worker), _http,
                            _startup_hooks])
    if worker:
        app.cleanup_ctx.append(_worker_context(app))
    if api:
        app.add_routes(api_routes.routes)
        app.add_routes(openai_routes.routes)
        app.add_routes(speaker_routes.routes)
        app[PLUGINS].call_all_sync("register_routes", app=app)
    return app
