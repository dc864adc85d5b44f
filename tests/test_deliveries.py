"""Outbound callbacks: retries with backoff and jitter, the same webhook-id on every retry,
every attempt recorded, `dead` after webhooks.max_attempts, timeouts."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from conftest import ECHO, WEBHOOK_SECRET, count_rows, wait_delivery
from gateway.config import WebhooksConfig
from gateway.deliveries import signed_headers


async def test_failing_receiver_is_retried_then_dead(start_gateway, webhook, speech_wav, database_url):
    webhook.responses = [500] * 10
    gw = await start_gateway(webhooks={"max_attempts": 3})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    [d] = await wait_delivery(gw, task_id, "dead")
    assert d["attempts"] == 3 and d["last_status_code"] == 500 and d["last_error"] == "HTTP 500"
    await asyncio.sleep(0.8)  # no attempt after dead
    assert len(webhook.received) == 3
    assert len({c.headers["webhook-id"] for c in webhook.received}) == 1
    timestamps = [int(c.headers["webhook-timestamp"]) for c in webhook.received]
    assert timestamps == sorted(timestamps)
    for c in webhook.received:  # each retry is signed afresh, and verifies
        Webhook(WEBHOOK_SECRET).verify(c.body, c.headers)
    assert await count_rows(database_url, "SELECT count(*) FROM deliveryattempt WHERE status_code = 500") == 3


async def test_timeout_counts_as_a_failed_attempt(start_gateway, webhook, speech_wav):
    webhook.delay_s = 1.5
    gw = await start_gateway(webhooks={"timeout_s": 0.5, "max_attempts": 2})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    [d] = await wait_delivery(gw, task_id, "dead")
    assert d["attempts"] == 2 and d["last_status_code"] is None
    assert d["last_error"] == "timed out after 0.5s"


async def test_unreachable_receiver_records_the_connection_error(start_gateway, speech_wav):
    gw = await start_gateway(webhooks={"max_attempts": 2})
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url="http://127.0.0.1:9/hook")
    [d] = await wait_delivery(gw, task_id, "dead")
    assert d["last_error"].startswith("ClientConnectorError")


async def test_retry_after_from_the_receiver_is_honoured(start_gateway, webhook, speech_wav):
    webhook.responses = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    gw = await start_gateway(webhooks={"backoff_max_s": 5})  # Retry-After is capped at backoff_max_s
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    [d] = await wait_delivery(gw, task_id, "delivered")
    assert d["attempts"] == 3
    first, second, third = (c.at for c in webhook.received)
    assert second - first >= 1.0  # waited as asked, not the 0.1 s backoff of the test config
    assert third - second < 1.0  # an HTTP date in the past: at once


async def test_retry_after_as_an_http_date_is_honoured(start_gateway, speech_wav):
    times = []

    async def handle(request: web.Request) -> web.Response:
        times.append(time.monotonic())
        if len(times) > 1:
            return web.Response(text="ok")
        ahead = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
        return web.Response(status=429, headers={"Retry-After": ahead})  # 2-3 s ahead (whole seconds)

    app = web.Application()
    app.router.add_post("/hook", handle)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    try:
        gw = await start_gateway(webhooks={"backoff_max_s": 10})
        task_id = await gw.submit(asset_id=await gw.upload(speech_wav), callback_url=str(receiver.make_url("/hook")))
        [d] = await wait_delivery(gw, task_id, "delivered")
    finally:
        await receiver.close()
    assert d["attempts"] == 2
    assert times[1] - times[0] >= 1.9  # waited until that date, not the 0.1 s backoff of the test config


async def test_recovering_receiver_gets_it_delivered(start_gateway, webhook, speech_wav):
    webhook.responses = [502, 429]
    gw = await start_gateway()
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    [d] = await wait_delivery(gw, task_id, "delivered")
    assert d["attempts"] == 3 and d["last_status_code"] == 200 and d["last_error"] is None


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap():
    cfg = WebhooksConfig(backoff_base_s=2, backoff_max_s=60)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (12, 60)]:
        delays = [cfg.backoff.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2 and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant


def test_signature_matches_the_standard_webhooks_reference():
    body = '{"task_id":"x"}'
    now = datetime.now(timezone.utc)
    headers = signed_headers("msg_1", body, WEBHOOK_SECRET, now)
    assert Webhook(WEBHOOK_SECRET).verify(body, headers) == {"task_id": "x"}
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert "webhook-signature" not in signed_headers("msg_1", body, "", now)
