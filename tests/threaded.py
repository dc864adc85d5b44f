"""A gateway served from a thread of its own (its own event loop), for tests and scripts that are
synchronous themselves: the browser tests (Playwright's sync API owns the main thread) and
docs/screenshots/make.py. Also a webhook receiver on the same loop that counts what it gets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine

from aiohttp import web

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.config import Config
from gateway.server import GatewayRunner


class ThreadedGateway:
    def __init__(self, config: Config):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.runners: list[web.AppRunner] = []
        self.hooks: list[dict] = []  # the bodies the webhook receiver got
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "ThreadedGateway":
        self.url = self.run(self._serve(create_app(self.config), GatewayRunner))
        self.run(self.api(lambda c: c.wait_ready()))
        return self

    async def _serve(self, app: web.Application, runner_type=web.AppRunner, port: int = 0) -> str:
        runner = runner_type(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def api(self, call, key: str | None = None):
        """`call(client)` with the API's client (gateway.client), keyed by the first configured key."""
        keys = self.config.server.api_keys
        async with GatewayClient(self.url, key or (keys[0] if keys else "")) as client:
            return await call(client)

    def receiver(self, port: int) -> str:
        """A webhook receiver on 127.0.0.1:`port` answering 200 to every POST, keeping its body."""
        async def hook(request: web.Request) -> web.Response:
            self.hooks.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        return self.run(self._serve(app, port=port)) + "/hook"

    def stop(self) -> None:
        async def cleanup():
            for runner in reversed(self.runners):
                await runner.cleanup()

        self.run(cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
