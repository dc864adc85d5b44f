"""The happy path through the real daemon: upload, async and sync transcription, status,
list, download, and the signed callback verified with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import ECHO, ECHO_SEGMENTS, WEBHOOK_SECRET


async def test_async_transcription_delivers_signed_callback(start_gateway, webhook, speech_script):
    gw = await start_gateway()
    asset_id = await gw.upload(speech_script)
    assert asset_id.startswith("re_") and asset_id[3:].isdigit()

    task_id = await gw.submit(asset_id=asset_id, model=ECHO, callback_url=webhook.url)
    assert len(task_id) == 32 and int(task_id, 16) >= 0

    task = await gw.wait(task_id)
    assert task["status"] == "completed", task
    assert task["progress"] == 1.0
    result = task["result"]
    assert result["data"] == ECHO_SEGMENTS
    assert result["usage_metadata"] == {"duration": 4.0, "model": ECHO, "output_tokens": 0, "prompt_tokens": 0}

    [call] = await webhook.wait_for(1)
    # The receiver verifies the signature with the standardwebhooks package, unchanged.
    payload = Webhook(WEBHOOK_SECRET).verify(call.body, call.headers)
    assert payload == {
        "code": "0000",
        "message": "SUCCESS",
        "data": {"data": result, "msg": "transcription completed", "success": True},
        "task_id": task_id,
    }
    assert call.headers["webhook-id"].startswith("msg_")

    deliveries = (await gw.status(task_id))["deliveries"]
    for _ in range(50):
        if all(d["status"] == "delivered" for d in deliveries):
            break
        await asyncio.sleep(0.1)
        deliveries = (await gw.status(task_id))["deliveries"]
    assert deliveries == [
        {"target": webhook.url, "kind": "webhook", "status": "delivered", "attempts": 1,
         "last_status_code": 200, "last_error": None},
        {"target": "plugin:search", "kind": "plugin", "status": "delivered", "attempts": 1,
         "last_status_code": None, "last_error": None},
        {"target": "plugin:srt", "kind": "plugin", "status": "delivered", "attempts": 1,
         "last_status_code": None, "last_error": None},
    ]


async def test_sync_transcription_returns_items(gateway, speech_script):
    asset_id = await gateway.upload(speech_script)
    status, body = await gateway.call("POST", "/transcriptions/sync-generate-audio",
                                      json={"asset_id": asset_id, "model": ECHO})
    assert status == 200, body
    assert body["code"] == "0000" and body["msg"] == "success" and body["success"] and not body["failed"]
    data = body["data"]
    assert data["model"] == ECHO
    assert data["items"] == ECHO_SEGMENTS


async def test_configured_webhooks_and_callback_url_each_get_one_delivery(start_gateway, webhook, speech_wav):
    gw = await start_gateway(webhooks={"urls": [webhook.url + "/a", webhook.url + "/b"]})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url + "/a")
    await gw.wait(task_id)
    calls = await webhook.wait_for(2)
    await asyncio.sleep(0.5)
    assert len(webhook.received) == 2  # callback_url equal to a configured URL is delivered once
    assert len({c.headers["webhook-id"] for c in calls}) == 2


async def test_download_returns_the_uploaded_bytes(gateway, speech_wav):
    asset_id = await gateway.upload(speech_wav, filename="../../etc/meeting notes.wav")
    async with gateway.http.get(f"{gateway.base}/{asset_id}/download") as resp:
        assert resp.status == 200
        assert await resp.read() == speech_wav.read_bytes()
        assert "meeting%20notes.wav" in resp.headers["Content-Disposition"]
        assert ".." not in resp.headers["Content-Disposition"]
    status, body = await gateway.call("GET", "/re_123/download")
    assert status == 404 and body["msg"] == "asset 're_123' not found"


async def test_download_is_served_as_audio_or_octet_stream_with_nosniff(gateway):
    served = {"audio/wav": "audio/wav", "Audio/Ogg; codecs=opus": "audio/ogg", "video/mp4": "video/mp4",
              "text/html": "application/octet-stream", "image/svg+xml": "application/octet-stream",
              "application/xhtml+xml; charset=utf-8": "application/octet-stream",
              "audio/<script>": "application/octet-stream"}
    for uploaded, expected in served.items():
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", b"<html><script>alert(1)</script></html>", filename="a.html", content_type=uploaded)
        status, body = await gateway.call("POST", "/upload", data=form)
        assert status == 200, body
        async with gateway.http.get(f"{gateway.base}/{body['data']['asset_id']}/download") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == expected, uploaded
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Content-Disposition"].startswith("attachment;")


async def test_list_pages_newest_first(gateway, speech_wav):
    asset_id = await gateway.upload(speech_wav)
    ids = [await gateway.submit(asset_id=asset_id, model=ECHO) for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, body = await gateway.call("GET", "/transcriptions", params=params)
        assert status == 200, body
        seen += [t["task_id"] for t in body["data"]["items"]]
        cursor = body["data"]["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    status, body = await gateway.call("GET", "/transcriptions", params={"status": "bogus"})
    assert status == 400 and body["msg"].startswith("status: must be one of")
    status, body = await gateway.call("GET", "/transcriptions", params={"limit": "0"})
    assert status == 400 and "limit" in body["msg"]
    status, body = await gateway.call("GET", "/transcriptions", params={"cursor": "!!"})
    assert status == 400 and "cursor" in body["msg"]


@pytest.mark.any_database
async def test_healthz_answers_while_a_job_runs(start_gateway, long_speech_wav):
    """The engine runs off the event loop: while the task is processing, /healthz keeps answering
    and the task's progress moves between the answers. (How fast it answers is a figure, not a
    test: bench/healthz_job.py; an absolute limit here failed under a loaded machine.) Progress
    moves as each batch of windows is decoded: at the default batch_size this 2-minute file is one
    batch, so here batches are of two windows, for a job of several steps."""
    gateway = await start_gateway(engine={"batch_size": 2})
    task_id = await gateway.submit(asset_id=await gateway.upload(long_speech_wav))
    await gateway.wait(task_id, until=("processing",))
    progress_seen = []
    while True:
        async with gateway.http.get(gateway.url + "/healthz") as resp:
            assert resp.status == 200
        task = await gateway.status(task_id)
        if task["status"] != "processing":
            break
        progress_seen.append(task["progress"])  # only answers while the engine was busy count
        await asyncio.sleep(0.05)
    assert task["status"] == "completed", task
    assert len(progress_seen) >= 5, f"only {len(progress_seen)} answers while the job ran"
    assert len({p for p in progress_seen if 0 < p < 1}) >= 2, progress_seen  # answered mid-job, repeatedly
    assert progress_seen == sorted(progress_seen)


async def test_auth_by_raw_key_or_bearer(start_gateway):
    gw = await start_gateway(server={"api_keys": ["k-one", "k-two"]})
    path = "/transcriptions"
    status, body = await gw.call("GET", path)
    assert status == 401 and body["code"] == "401" and body["data"] is None and body["failed"]
    for header in ("k-one", "Bearer k-two", "bearer k-one"):
        status, _ = await gw.call("GET", path, headers={"Authorization": header})
        assert status == 200, header
    status, body = await gw.call("GET", path, headers={"Authorization": "Bearer nope"})
    assert status == 401 and body["msg"] == "invalid API key"
    async with aiohttp.ClientSession() as http:  # health endpoints stay open for probes
        async with http.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
