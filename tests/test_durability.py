"""Crashes lose nothing and double-process nothing: the daemon is SIGKILLed in the middle of
a transcription, or while a delivery is failing, and restarted."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import ECHO, WEBHOOK_SECRET, Gateway, count_rows, daemon_sections, to_toml, webhook_deliveries

pytestmark = pytest.mark.slow


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def started(daemon, http, config) -> Gateway:
    daemon.start()
    gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=config, http=http)
    await gw.wait_ready()
    return gw


async def test_sigkill_mid_transcription_completes_once_after_restart(
        tmp_path, database_url, daemon_factory, http, webhook, speech_wav):
    sections = daemon_sections(tmp_path, database_url, jobs={"lease_s": 3, "poll_s": 0.2},
                               providers={"echo": {"delay_s": 4}})
    daemon = daemon_factory(to_toml(sections))
    gw = await started(daemon, http, None)

    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    for _ in range(600):
        task = await gw.status(task_id)
        if task["status"] == "processing" and task["progress"] > 0:
            break
        await asyncio.sleep(0.05)
    assert task["status"] == "processing" and 0 < task["progress"] < 1, task
    daemon.kill()

    assert webhook.received == []
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 0

    gw = await started(daemon, http, None)  # the same daemon, a new process
    done = await gw.wait(task_id, timeout=120)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2  # claimed again once the dead process's lease expired
    calls = await webhook.wait_for(1)
    await asyncio.sleep(1.0)  # nothing else may arrive
    assert len(calls) == 1
    payload = Webhook(WEBHOOK_SECRET).verify(calls[0].body, calls[0].headers)
    assert payload["task_id"] == task_id and payload["data"]["data"] == done["result"]

    assert await count_rows(database_url, "SELECT count(*) FROM transcript WHERE task_id = :t", t=task_id) == 1
    assert await count_rows(database_url, "SELECT segment_count FROM transcript WHERE task_id = :t",
                            t=task_id) == len(done["result"]["data"])
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE task_id = :t "
                            "AND outcome = 'accepted'", t=task_id) == 1
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE task_id = :t AND kind = 'webhook'",
                            t=task_id) == 1


async def test_pending_delivery_survives_a_crash_and_keeps_its_webhook_id(
        tmp_path, database_url, daemon_factory, http, webhook, speech_wav):
    webhook.responses = [500, 503]  # the receiver fails twice, then accepts
    sections = daemon_sections(tmp_path, database_url,
                               webhooks={"backoff_base_s": 2.0, "backoff_max_s": 2.0, "max_attempts": 5})
    daemon = daemon_factory(to_toml(sections))
    gw = await started(daemon, http, None)
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    await gw.wait(task_id)
    await webhook.wait_for(1)
    for _ in range(200):  # the receiver answered; wait until the daemon has recorded that attempt
        if await count_rows(database_url, "SELECT count(*) FROM deliveryattempt") == 1:
            break
        await asyncio.sleep(0.01)
    daemon.kill()  # between the failed first attempt and its retry

    gw = await started(daemon, http, None)
    calls = await webhook.wait_for(3, timeout=60)
    await asyncio.sleep(1.0)
    assert len(calls) == 3
    ids = {c.headers["webhook-id"] for c in calls}
    assert len(ids) == 1, ids  # one delivery, the same id on every retry
    bodies = {c.body for c in calls}
    assert len(bodies) == 1
    for c in calls:
        Webhook(WEBHOOK_SECRET).verify(c.body, c.headers)
    [delivery] = webhook_deliveries(await gw.status(task_id))
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert await count_rows(database_url, "SELECT count(*) FROM deliveryattempt WHERE status_code IS NOT NULL") == 3


async def test_sigterm_releases_the_running_task_and_exits_promptly(
        tmp_path, database_url, daemon_factory, http, speech_wav):
    sections = daemon_sections(tmp_path, database_url, jobs={"lease_s": 60}, providers={"echo": {"delay_s": 5}})
    daemon = daemon_factory(to_toml(sections))
    gw = await started(daemon, http, None)
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO)
    await gw.wait(task_id, until=("processing",))

    t0 = asyncio.get_running_loop().time()
    daemon.proc.terminate()
    code = await asyncio.to_thread(daemon.proc.wait, 30)
    elapsed = asyncio.get_running_loop().time() - t0
    assert code == 0
    assert elapsed < 5, f"shutdown took {elapsed:.1f}s"
    # Released, not left behind a 60 s lease: the next process starts it at once.
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE id = :t AND status = 'queued' "
                            "AND lease_owner IS NULL", t=task_id) == 1
    gw = await started(daemon, http, None)
    done = await gw.wait(task_id, timeout=60)
    assert done["status"] == "completed" and done["attempts"] == 2


async def test_sigterm_lets_a_delivery_being_sent_finish_so_it_is_not_sent_twice(
        tmp_path, database_url, daemon_factory, http, webhook, speech_wav):
    """SIGTERM while the receiver holds a webhook request: the send completes and is recorded
    before the process exits, instead of being cut off and sent again by the next process."""
    webhook.delay_s = 1.0  # within the 2 s webhook timeout of the tests' daemons
    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)))
    gw = await started(daemon, http, None)
    task_id = await gw.submit(asset_id=await gw.upload(speech_wav), model=ECHO, callback_url=webhook.url)
    await webhook.wait_for(1)  # the receiver has it and answers in 1 s
    daemon.proc.terminate()
    assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE task_id = :t AND kind = 'webhook' "
                            "AND status = 'delivered' AND attempts = 1", t=task_id) == 1
    assert await count_rows(database_url, "SELECT count(*) FROM deliveryattempt WHERE status_code = 200") == 1
    assert len(webhook.received) == 1


async def test_sigterm_under_load_loses_no_acknowledged_request(
        tmp_path, database_url, daemon_factory, http, speech_wav):
    """Clients keep submitting while the daemon gets SIGTERM: it stops accepting, finishes the
    requests it has, exits 0; after a restart every task it acknowledged is there and completes."""
    sections = daemon_sections(tmp_path, database_url)
    daemon = daemon_factory(to_toml(sections))
    gw = await started(daemon, http, None)
    asset_id = await gw.upload(speech_wav)

    acked: list[str] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                async with http.post(gw.base + "/transcriptions/async-generate-audio",
                                     json={"asset_id": asset_id, "model": ECHO}) as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        acked.append(body["data"]["task_id"])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the connection closed: nothing was promised
            await asyncio.sleep(0.1)  # about 40 requests a second in all: enough to be mid-request

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(1.0)
    before = len(acked)
    daemon.proc.terminate()
    code = await asyncio.to_thread(daemon.proc.wait, 30)
    stop.set()
    await asyncio.gather(*clients)
    assert code == 0 and before > 10, (code, before)

    stored = await count_rows(database_url, "SELECT count(*) FROM task")
    assert stored >= len(acked)  # a request cut off after its commit may exist unacknowledged
    gw = await started(daemon, http, None)
    for task_id in acked:
        task = await gw.wait(task_id, timeout=120)
        assert task["status"] == "completed", task
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE status <> 'completed'") == 0
