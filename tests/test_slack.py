"""The Slack plugin against a local server that implements Slack's incoming-webhook contract:
JSON with `text` and/or `blocks`; `invalid_blocks` (400) past the Block Kit limits; 429 with
Retry-After when rate limited."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Callable

import pytest
from aiohttp import web

from conftest import ECHO
from fakes import one_route_server

LONG_WORDS = ("The committee reviewed every line item of the budget & asked for <clarification> on the "
              "travel expenses, the servers, the licences and the consultants. ") * 12


def slack_problems(payload: dict) -> list[str]:
    """What Slack would reject (https://api.slack.com/reference/block-kit/blocks limits)."""
    problems = []
    blocks = payload.get("blocks", [])
    if not payload.get("text") and not blocks:
        problems.append("no_text")
    if len(blocks) > 50:
        problems.append("too many blocks")
    for b in blocks:
        if b["type"] == "section":
            t = b["text"]["text"]
            if not 1 <= len(t) <= 3000:
                problems.append(f"section text of {len(t)} chars")
        elif b["type"] == "header":
            if b["text"]["type"] != "plain_text" or len(b["text"]["text"]) > 150:
                problems.append("bad header")
        elif b["type"] == "context":
            if not 1 <= len(b["elements"]) <= 10:
                problems.append("bad context")
        else:
            problems.append(f"unexpected block {b['type']}")
    return problems


@dataclass
class FakeSlack:
    url: str = ""
    messages: list[dict] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    rate_limit_first: int = 0
    retry_after: Callable[[], str] = lambda: "1"  # the Retry-After of a 429, made when it is sent

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        if self.rate_limit_first:
            self.rate_limit_first -= 1
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": self.retry_after()})
        payload = await request.json()
        problems = slack_problems(payload)
        if problems:
            return web.Response(status=400, text="invalid_blocks: " + "; ".join(problems))
        self.messages.append(payload)
        return web.Response(text="ok")


@pytest.fixture
async def slack():
    fake = FakeSlack()
    async with one_route_server(fake.handle, "/services/T000/B000/XXXX") as fake.url:
        yield fake


async def slack_delivery(gw, task_id, status="delivered", timeout=30):
    deadline = time.monotonic() + timeout
    found = []
    while time.monotonic() < deadline:
        found = [d for d in (await gw.status(task_id))["deliveries"] if d["target"] == "plugin:slack"]
        if found and found[0]["status"] == status:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(found)


def segments(n: int, text: str) -> list[dict]:
    return [{"start_time": i * 10.0, "end_time": i * 10.0 + 9.5, "text": text, "speaker": None} for i in range(n)]


async def complete_by_callback(gw, task_id, segs, duration):
    payload = {"code": "0000", "message": "SUCCESS", "task_id": task_id,
               "data": {"msg": "transcription completed", "success": True,
                        "data": {"data": segs, "usage_metadata": {"duration": duration, "model": "whisper-1",
                                                                  "output_tokens": 0, "prompt_tokens": 0}}}}
    status, body = await gw.call("POST", "/callbacks/local", data=json.dumps(payload))
    assert status == 200, body


async def test_completed_message_is_within_slack_limits(start_gateway, slack, speech_wav):
    sections = {"plugins": {"slack": {"webhook_url": slack.url}},
                "server": {"public_url": "https://asr.example.com"}}
    api = await start_gateway(worker=False, **sections)
    task_id = await api.submit(asset_id=await api.upload(speech_wav, filename="board meeting.wav"))
    await complete_by_callback(api, task_id, segments(80, LONG_WORDS), 800.0)
    gw = await start_gateway(config=api.config)  # a worker on the same database delivers

    await slack_delivery(gw, task_id)
    [msg] = slack.messages
    blocks = msg["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Transcript ready: board meeting.wav"}}
    assert "*Duration* 13:20" in blocks[1]["elements"][0]["text"]
    sections_text = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert sum(len(t) for t in sections_text) <= 2800 + 1
    assert sections_text[-1].endswith("…")
    assert "&amp;" in sections_text[0] and "&lt;clarification&gt;" in sections_text[0] and "<clar" not in sections_text[0]
    assert blocks[-1]["elements"][0]["text"] == (
        f"<https://asr.example.com/serve/api/v2/transcriptions/{task_id}|Open task {task_id}>")


async def test_rate_limit_is_retried_after_retry_after(start_gateway, slack, speech_wav):
    slack.rate_limit_first = 1
    gw = await start_gateway(plugins={"slack": {"webhook_url": slack.url}})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
    d = await slack_delivery(gw, task_id)
    assert d["attempts"] == 2 and len(slack.messages) == 1
    assert slack.times[1] - slack.times[0] >= 0.95  # Retry-After: 1, not the fast test backoff


async def test_rate_limit_is_retried_after_a_retry_after_date(start_gateway, slack, speech_wav):
    slack.rate_limit_first = 1
    slack.retry_after = lambda: format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
    gw = await start_gateway(plugins={"slack": {"webhook_url": slack.url}})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav))
    d = await slack_delivery(gw, task_id)
    assert d["attempts"] == 2 and len(slack.messages) == 1
    assert 1.9 <= slack.times[1] - slack.times[0] < 10  # until that date (2-3 s ahead), not 30 s


async def test_failure_notice(start_gateway, slack, tmp_path):
    gw = await start_gateway(plugins={"slack": {"webhook_url": slack.url}})
    junk = tmp_path / "notes.mp3"
    junk.write_bytes(b"definitely not audio" * 10)
    task_id = await gw.submit(asset_id=await gw.upload(junk))
    await slack_delivery(gw, task_id)
    [msg] = slack.messages
    [block] = msg["blocks"]
    assert block["text"]["text"].startswith(":warning: *Transcription failed:* notes.mp3\nthe file could not be decoded")
    assert msg["text"].startswith("Transcription failed: notes.mp3")


async def test_rejected_payload_is_a_failed_attempt(start_gateway, speech_wav):
    async def reject(request):
        return web.Response(status=400, text="invalid_payload")

    async with one_route_server(reject, "/hook") as url:
        gw = await start_gateway(plugins={"slack": {"webhook_url": url, "max_attempts": 2}})
        task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
        d = await slack_delivery(gw, task_id, status="dead")
        assert d["attempts"] == 2 and d["last_error"] == "RuntimeError: Slack answered HTTP 400: invalid_payload"


def test_blocks_for_extreme_transcripts():
    from gateway.payloads import Segment
    from gateway.plugins import TranscriptInfo
    from gateway_plugins.slack import SlackConfig, completed_blocks

    class Task:
        task_id, filename, url, speaker, link = "t" * 32, "x" * 400 + ".wav", None, True, None

    many = TranscriptInfo(
        segments=tuple(Segment(i, i + 1, ("w" * 5000) if i % 2 else "&" * 4000, f"SPEAKER_{i % 3:02d}")
                       for i in range(300)), duration=300, model="whisper-1", speakers=("SPEAKER_00",))
    for cfg in (SlackConfig(webhook_url="x"), SlackConfig(webhook_url="x", max_chars=40000, max_turns=45)):
        blocks = completed_blocks(Task, many, cfg)
        assert slack_problems({"text": "t", "blocks": blocks}) == []
        assert not any(b["text"]["text"].rstrip("…").endswith("&am") for b in blocks if b["type"] == "section")
    empty = TranscriptInfo(segments=(), duration=1.0, model="whisper-1")
    assert slack_problems({"text": "t", "blocks": completed_blocks(Task, empty, SlackConfig(webhook_url="x"))}) == []
