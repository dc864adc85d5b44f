"""Local stand-ins for third-party services, implementing their documented contracts:

- `FakeMemories`: the hosted memories.ai API (`/serve/api/v2/upload`,
  `/serve/api/v2/transcriptions/async-generate-audio`, raw `Authorization: <key>`, the
  {"code","msg","data","success","failed"} envelope) that later POSTs the callback payload to
  the callback_url it was given: once, twice, late, never, as a test scripts it.
- `FakeOpenAI`: an OpenAI-compatible `POST /v1/audio/transcriptions` answering verbose_json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

SEGMENTS = [
    {"start_time": 0.0, "end_time": 1.5, "text": "Hello from the hosted service.", "speaker": "SPEAKER_00"},
    {"start_time": 1.5, "end_time": 3.25, "text": "This came back by callback.", "speaker": "SPEAKER_01"},
]


def envelope(data, code: str = "0000", msg: str = "success") -> dict:
    ok = code == "0000"
    return {"code": code, "msg": msg, "data": data, "success": ok, "failed": not ok}


def callback_payload(upstream_id: str, model: str, speaker: bool, success: bool = True) -> dict:
    if not success:
        return {"code": "5001", "message": "FAILED", "task_id": upstream_id,
                "data": {"data": None, "msg": "upstream engine crashed", "success": False}}
    segs = [dict(s, speaker=s["speaker"] if speaker else None) for s in SEGMENTS]
    return {"code": "0000", "message": "SUCCESS", "task_id": upstream_id,
            "data": {"data": {"data": segs, "usage_metadata": {"duration": 4.0, "model": model,
                                                               "output_tokens": 0, "prompt_tokens": 0}},
                     "msg": "transcription completed", "success": True}}


@dataclass
class UpstreamTask:
    task_id: str
    body: dict
    callbacks: list[int] = field(default_factory=list)  # HTTP statuses our callbacks got


@dataclass
class FakeMemories:
    api_key: str = "mem-key"
    url: str = ""  # base URL, .../serve/api/v2
    mode: str = "once"  # once | twice | never | manual
    delay_s: float = 0.2  # before the (first) callback
    responses: list = field(default_factory=list)  # scripted (status, body), ("hang", s) or None (normal), then normal
    uploads: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, dict]] = field(default_factory=list)  # (path, headers)
    tasks: list[UpstreamTask] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # a step held until its event is set
    _sends: set = field(default_factory=set)

    def _scripted(self):
        return self.responses.pop(0) if self.responses else None

    async def _guard(self, request: web.Request):
        self.requests.append((request.path, dict(request.headers)))
        if (gate := self.gates.get(request.path.rsplit("/", 1)[-1])) is not None:  # upload, async-generate-audio
            await gate.wait()
        scripted = self._scripted()
        if scripted and scripted[0] == "hang":
            await asyncio.sleep(scripted[1])
        elif scripted:
            status, body = scripted
            return web.json_response(body, status=status)
        if request.headers.get("Authorization") != self.api_key:
            return web.json_response(envelope(None, "401", "invalid api key"), status=401)
        return None

    async def upload(self, request: web.Request) -> web.Response:
        if (early := await self._guard(request)) is not None:
            return early
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file" and part.filename:
                asset_id = f"re_{random.randrange(10**17, 10**18)}"
                self.uploads[asset_id] = await part.read()
                return web.json_response(envelope({"asset_id": asset_id}))
        return web.json_response(envelope(None, "400", "file is required"), status=400)

    async def generate(self, request: web.Request) -> web.Response:
        if (early := await self._guard(request)) is not None:
            return early
        body = await request.json()
        if body.get("asset_id") not in self.uploads and not body.get("url"):
            return web.json_response(envelope(None, "400", f"asset {body.get('asset_id')} not found"), status=400)
        if not isinstance(body.get("speaker", False), bool) or not body.get("model"):
            return web.json_response(envelope(None, "400", "invalid parameters"), status=400)
        task = UpstreamTask(uuid.uuid4().hex, body)
        self.tasks.append(task)
        if self.mode in ("once", "twice"):
            self._spawn(self._send_later(task, self.delay_s, 2 if self.mode == "twice" else 1))
        return web.json_response(envelope({"task_id": task.task_id}))

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._sends.add(t)
        t.add_done_callback(self._sends.discard)

    async def _send_later(self, task: UpstreamTask, delay_s: float, times: int) -> None:
        await asyncio.sleep(delay_s)
        for _ in range(times):
            await self.send_callback(task)

    async def send_callback(self, task: UpstreamTask, success: bool = True, upstream_id: str | None = None) -> tuple[int, dict]:
        """POST the callback payload to the callback_url the task was submitted with."""
        payload = callback_payload(upstream_id or task.task_id, task.body["model"], task.body.get("speaker", False), success)
        async with self.http.post(task.body["callback_url"], data=json.dumps(payload),
                                  headers={"Content-Type": "application/json"}) as resp:
            task.callbacks.append(resp.status)
            return resp.status, await resp.json()

    async def wait_tasks(self, n: int, timeout: float = 30) -> list[UpstreamTask]:
        for _ in range(int(timeout / 0.05)):
            if len(self.tasks) >= n:
                return self.tasks
            await asyncio.sleep(0.05)
        raise AssertionError(f"memories.ai got {len(self.tasks)} of {n} tasks")


@dataclass
class FakeOpenAI:
    api_key: str = "sk-test"
    url: str = ""  # base URL, .../v1
    responses: list = field(default_factory=list)  # scripted (status, body), then normal
    requests: list[dict] = field(default_factory=list)  # form fields (file as its size) + auth header

    async def transcriptions(self, request: web.Request) -> web.Response:
        fields: dict = {"authorization": request.headers.get("Authorization")}
        reader = await request.multipart()
        async for part in reader:
            value = len(await part.read()) if part.filename else (await part.text())
            if part.name in fields:  # a field sent more than once (timestamp_granularities[]): its values
                value = [*(fields[part.name] if isinstance(fields[part.name], list) else [fields[part.name]]), value]
            fields[part.name] = value
        self.requests.append(fields)
        if self.responses:
            status, body = self.responses.pop(0)
            return web.json_response(body, status=status)
        if fields["authorization"] != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        if "file" not in fields or fields.get("response_format") != "verbose_json":
            return web.json_response({"error": {"message": "file and response_format=verbose_json expected",
                                                "type": "invalid_request_error"}}, status=400)
        answer = {
            "task": "transcribe", "language": "english", "duration": 4.0,
            "text": "Hello from the hosted service. This came back by callback.",
            "segments": [{"id": i, "seek": 0, "start": s["start_time"], "end": s["end_time"], "text": " " + s["text"],
                          "tokens": [], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.0,
                          "no_speech_prob": 0.01} for i, s in enumerate(SEGMENTS)],
        }
        if "word" in fields.get("timestamp_granularities[]", ()):  # as OpenAI: all words, apart from the segments
            answer["words"] = [w for s in SEGMENTS for w in words_of(s)]
        return web.json_response(answer)


def words_of(segment: dict) -> list[dict]:
    """A segment's words as verbose_json gives them, sharing its time equally."""
    words = segment["text"].split()
    step = (segment["end_time"] - segment["start_time"]) / len(words)
    return [{"word": w, "start": round(segment["start_time"] + i * step, 3),
             "end": round(segment["start_time"] + (i + 1) * step, 3)} for i, w in enumerate(words)]


async def start_fake(app: web.Application, prefix: str) -> tuple[TestServer, str]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url(prefix)).rstrip("/")


@contextlib.asynccontextmanager
async def one_route_server(handler, path: str = "/{tail:.*}", url_path: str | None = None, method: str = "POST"):
    """A real HTTP server on 127.0.0.1 answering `method` `path` with `handler` while the
    `async with` lasts; yields its URL (of `url_path`, by default `path`)."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    server, url = await start_fake(app, url_path or path)
    try:
        yield url
    finally:
        await server.close()


async def memories_server() -> tuple[TestServer, FakeMemories]:
    fake = FakeMemories(http=aiohttp.ClientSession())
    app = web.Application()
    app.router.add_post("/serve/api/v2/upload", fake.upload)
    app.router.add_post("/serve/api/v2/transcriptions/async-generate-audio", fake.generate)
    server, fake.url = await start_fake(app, "/serve/api/v2")
    return server, fake


