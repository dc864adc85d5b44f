"""A small client for the gateway's API (used by the CLI's commands, plugins' commands too)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway import API_BASE


class ClientError(Exception):
    """The gateway answered with an error envelope, or could not be reached."""


def api_base(url: str) -> str:
    """The API's base URL from what a user gives as --url: `host:port` means http://host:port, and
    the API's own path (/serve/api/v2) may be given or not; any other path is kept (a proxy's prefix)."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parsed = urlsplit(url)
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        raise ClientError(f"--url {url!r}: give the gateway's address as http(s)://host[:port], "
                          "e.g. http://127.0.0.1:8000")
    return url.rstrip("/").removesuffix(API_BASE) + API_BASE


FINISHED = ("completed", "failed", "cancelled")


class GatewayClient:
    """`async with GatewayClient(url, api_key) as client:` opens its own HTTP session; or give it
    an open `http` session (its headers are used, and it stays open) and use it without `with`."""

    def __init__(self, base_url: str, api_key: str = "", http: aiohttp.ClientSession | None = None):
        self.base = api_base(base_url)
        self.headers = {"Authorization": api_key} if api_key else {}
        self._http = http
        self._own_http = http is None

    async def __aenter__(self) -> "GatewayClient":
        if self._own_http:
            self._http = aiohttp.ClientSession(headers=self.headers)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_http:
            await self._http.close()

    async def _call(self, method: str, path: str, **kw) -> Any:
        try:
            async with self._http.request(method, self.base + path, **kw) as resp:
                text = await resp.text()
        except aiohttp.ClientConnectorError as exc:
            raise ClientError(f"cannot reach the gateway at {self.base}: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise ClientError(f"request to {self.base}{path} failed: {exc}") from None
        try:
            body = json.loads(text)
        except ValueError:
            raise ClientError(f"{method} {path}: HTTP {resp.status}, not a gateway answer") from None
        if not body.get("success"):
            raise ClientError(f"{method} {path}: {body.get('code')} {body.get('msg')}")
        return body["data"]

    async def upload(self, path: Path, filename: str | None = None) -> str:
        """Upload a file (under `filename`, by default its own name); returns its asset_id."""
        with open(path, "rb") as f:
            form = aiohttp.FormData(quote_fields=False)  # the name as it is, as curl and requests send it
            form.add_field("file", f, filename=filename or path.name, content_type="application/octet-stream")
            data = await self._call("POST", "/upload", data=form)
        return data["asset_id"]

    async def submit(self, **body: Any) -> str:
        data = await self._call("POST", "/transcriptions/async-generate-audio",
                                json={k: v for k, v in body.items() if v is not None})
        return data["task_id"]

    async def get(self, path: str, **params: Any) -> Any:
        """GET `path` (under the API's base) with these query parameters, those that are None left
        out: the answer's data, or ClientError. The generic call, e.g. for plugins' routes."""
        return await self._call("GET", path, params={k: str(v) for k, v in params.items() if v is not None})

    async def status(self, task_id: str) -> dict[str, Any]:
        return await self.get(f"/transcriptions/{task_id}")

    async def wait(self, task_id: str, timeout: float = 60, until: tuple[str, ...] = FINISHED,
                   poll_s: float = 0.1) -> dict[str, Any]:
        """Poll the task until its status is one of `until` (by default: finished); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            task = await self.status(task_id)
            if task["status"] in until:
                return task
            if time.monotonic() >= deadline:
                raise ClientError(f"task {task_id} is still {task['status']} after {timeout:g}s")
            await asyncio.sleep(poll_s)

    async def wait_ready(self, timeout: float = 120, poll_s: float = 0.1) -> dict[str, Any]:
        """Wait until GET /readyz answers ready (database reachable, engine and speaker encoder
        loaded where work runs); returns its answer."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self._call("GET", "/readyz")
            except ClientError as exc:
                if time.monotonic() >= deadline:
                    raise ClientError(f"the gateway at {self.base} is not ready after {timeout:g}s: {exc}") from None
            await asyncio.sleep(poll_s)

    async def tasks(self, status: str | None = None, limit: int = 20, owner: str | None = None) -> list[dict[str, Any]]:
        """Up to `limit` tasks, newest first (following the pages' cursors); only `owner`'s, when given."""
        items: list[dict[str, Any]] = []
        cursor = None
        while len(items) < limit:
            page = await self.get("/transcriptions", limit=min(100, limit - len(items)), status=status or None,
                                  cursor=cursor, owner=owner)
            items += page["items"]
            if not (cursor := page["next_cursor"]):
                break
        return items

    async def delete(self, task_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/transcriptions/{task_id}")

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/transcriptions/{task_id}/cancel")

    async def redeliver(self, task_id: str, target: str | None = None) -> dict[str, Any]:
        params = {"target": target} if target else {}
        return await self._call("POST", f"/transcriptions/{task_id}/redeliver", params=params)
