"""Deleting and cancelling tasks, deleting assets (gateway/lifecycle.py): what goes, what stays,
404 everywhere afterwards, and the races with a result arriving through the door."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ECHO, WEBHOOK_SECRET, count_rows, test_config
from gateway.appkeys import LOOPS
from gateway.hookspecs import hookimpl
from gateway.plugins import Plugins
from standardwebhooks.webhooks import Webhook
from test_callback_door import HELLO, for_task, post
from tgw_echo import script_wav

TABLES = ("transcript", "delivery", "deliveryattempt", "callbackreceipt", "partial_segment")


async def rows_left(database_url: str, task_id: str) -> dict[str, int]:
    counts = {t: await count_rows(database_url, f"SELECT count(*) FROM {t} WHERE task_id = :t", t=task_id)
              for t in TABLES if t != "deliveryattempt"}
    counts["deliveryattempt"] = await count_rows(database_url, "SELECT count(*) FROM deliveryattempt")
    counts["segment_index"] = await count_rows(database_url, "SELECT count(*) FROM segment_index WHERE task_id = :t",
                                               t=task_id)
    return counts


NOTHING = {t: 0 for t in (*TABLES, "segment_index")}


async def until(check, timeout: float = 30):
    """Poll `check()` (a coroutine function) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)
    return value


async def gone_everywhere(gw, task_id: str) -> None:
    for method, path in (("GET", f"/transcriptions/{task_id}"), ("GET", f"/transcriptions/{task_id}/transcript.srt"),
                         ("POST", f"/transcriptions/{task_id}/redeliver"), ("POST", f"/transcriptions/{task_id}/cancel"),
                         ("DELETE", f"/transcriptions/{task_id}")):
        status, body = await gw.call(method, path)
        assert status == 404 and body["msg"] == f"task {task_id!r} not found", (method, path, body)
    assert task_id not in {t["task_id"] for t in await gw.tasks(limit=100)}


@pytest.fixture
async def api_only(start_gateway, speech_script, webhook):
    """No worker: tasks stay queued until a callback (or a cancel) ends them."""
    gw = await start_gateway(worker=False, webhooks={"urls": [webhook.url]})
    gw.asset_id = await gw.upload(speech_script)
    return gw


async def test_delete_removes_everything_the_task_left(start_gateway, speech_script, webhook, tmp_path, database_url):
    gw = await start_gateway(webhooks={"urls": [webhook.url]})
    asset_id = await gw.upload(speech_script)
    task_id = await gw.submit(asset_id=asset_id, model=ECHO)
    await gw.wait(task_id)
    subtitles = [tmp_path / "subtitles" / f"{task_id}.{fmt}" for fmt in ("srt", "vtt")]

    async def delivered():
        return all(d["status"] == "delivered" for d in (await gw.status(task_id))["deliveries"])

    await until(delivered)
    assert all(p.exists() for p in subtitles)
    assert (await gw.get("/search", q="testing"))["items"]
    audio = Path(gw.app[LOOPS].config.storage.dir)
    assert list(audio.glob(f"*/{asset_id}"))

    status, body = await gw.call("DELETE", f"/transcriptions/{task_id}")
    assert status == 200 and body["data"] == {"task_id": task_id, "deleted": True}
    await gone_everywhere(gw, task_id)
    assert (await gw.get("/search", q="testing"))["items"] == []
    assert not any(p.exists() for p in subtitles)
    assert not list(audio.glob(f"*/{asset_id}"))  # no other task used it
    status, body = await gw.call("GET", f"/{asset_id}/download")
    assert status == 404
    assert await rows_left(database_url, task_id) == NOTHING
    # the tombstone keeps nothing of what the task held
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE id = :t AND status = 'deleted' AND "
                            "result_json IS NULL AND asset_id IS NULL AND callback_url IS NULL", t=task_id) == 1


async def test_audio_stays_while_another_task_uses_it(api_only, database_url):
    gw = api_only
    first, second = [await gw.submit(asset_id=gw.asset_id, model=ECHO) for _ in range(2)]
    assert (await gw.call("DELETE", f"/transcriptions/{first}"))[0] == 200
    async with gw.http.get(f"{gw.base}/{gw.asset_id}/download") as resp:
        assert resp.status == 200
    assert (await gw.status(second))["asset_id"] == gw.asset_id
    assert (await gw.call("DELETE", f"/transcriptions/{second}"))[0] == 200
    assert (await gw.call("GET", f"/{gw.asset_id}/download"))[0] == 404
    assert await count_rows(database_url, "SELECT count(*) FROM asset") == 0


async def test_delete_then_callback_is_acknowledged_and_stores_nothing(api_only, database_url):
    task_id = await api_only.submit(asset_id=api_only.asset_id)
    assert (await api_only.call("DELETE", f"/transcriptions/{task_id}"))[0] == 200
    for _ in range(2):  # the same bytes again are answered the same way
        status, body = await post(api_only, for_task(HELLO, task_id))
        assert status == 200 and body["data"] == {"task_id": task_id, "outcome": "ignored"}
    assert await rows_left(database_url, task_id) == NOTHING
    await gone_everywhere(api_only, task_id)


async def test_callback_then_delete_removes_the_result_and_its_deliveries(api_only, database_url):
    task_id = await api_only.submit(asset_id=api_only.asset_id)
    status, body = await post(api_only, for_task(HELLO, task_id))
    assert status == 200 and body["data"]["outcome"] == "accepted"
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE task_id = :t", t=task_id) == 3
    assert (await api_only.call("DELETE", f"/transcriptions/{task_id}"))[0] == 200
    assert await rows_left(database_url, task_id) == NOTHING
    status, body = await post(api_only, for_task(HELLO, task_id))  # a repeat the door remembers
    assert status == 200 and body["data"]["outcome"] == "ignored"
    assert await rows_left(database_url, task_id) == NOTHING


async def test_delete_racing_a_burst_of_callbacks_leaves_no_orphan(api_only, database_url):
    gw = api_only
    task_ids = [await gw.submit(asset_id=gw.asset_id) for _ in range(5)]
    calls = []
    for task_id in task_ids:
        body = json.dumps(for_task(HELLO, task_id))
        calls += [post(gw, body) for _ in range(5)] + [gw.call("DELETE", f"/transcriptions/{task_id}")]
        calls += [post(gw, body) for _ in range(5)]
    answers = await asyncio.gather(*calls)
    assert {status for status, _ in answers} == {200}
    for task_id in task_ids:
        assert await rows_left(database_url, task_id) == NOTHING
        await gone_everywhere(gw, task_id)
    assert await count_rows(database_url, "SELECT count(*) FROM asset") == 0


async def test_cancel_a_queued_task(api_only, start_gateway, webhook, database_url):
    gw = api_only
    task_id = await gw.submit(asset_id=gw.asset_id, model=ECHO)
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/cancel")
    assert status == 200, body
    assert body["data"]["status"] == "cancelled" and body["data"]["error"] == "cancelled"
    assert [t["task_id"] for t in await gw.tasks(status="cancelled")] == [task_id]

    await start_gateway(config=gw.config)  # a worker on the same database: sends, never runs it
    [call] = await webhook.wait_for(1)
    payload = Webhook(WEBHOOK_SECRET).verify(call.body, call.headers)
    assert payload == {"code": "4090", "message": "FAILED", "task_id": task_id,
                       "data": {"data": None, "msg": "cancelled", "success": False}}
    task = await gw.status(task_id)
    assert task["status"] == "cancelled" and task["attempts"] == 0

    status, body = await gw.call("POST", f"/transcriptions/{task_id}/cancel")
    assert status == 409 and body["msg"] == f"task {task_id} is cancelled; only a queued or processing task " \
                                            "can be cancelled"


async def test_late_callback_of_a_cancelled_task_is_ignored(api_only, database_url):
    task_id = await api_only.submit(asset_id=api_only.asset_id)
    assert (await api_only.call("POST", f"/transcriptions/{task_id}/cancel"))[0] == 200
    status, body = await post(api_only, for_task(HELLO, task_id))
    assert status == 200 and body["data"] == {"task_id": task_id, "outcome": "ignored"}
    task = await api_only.status(task_id)
    assert task["status"] == "cancelled" and task["result"] is None
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 0


async def test_cancelling_a_finished_task_is_409(api_only):
    task_id = await api_only.submit(asset_id=api_only.asset_id)
    await post(api_only, for_task(HELLO, task_id))
    status, body = await api_only.call("POST", f"/transcriptions/{task_id}/cancel")
    assert status == 409 and body["msg"] == f"task {task_id} is completed; only a queued or processing task " \
                                            "can be cancelled"
    assert (await api_only.status(task_id))["status"] == "completed"


async def test_a_processing_task_stops_at_its_next_progress_report(start_gateway, speech_script, webhook,
                                                                  database_url):
    gw = await start_gateway(webhooks={"urls": [webhook.url]}, providers={"echo": {"delay_s": 20}})
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await gw.wait(task_id, until=("processing",))
    loops = gw.app[LOOPS]
    assert loops._runs
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/cancel")
    assert status == 200 and body["data"]["status"] == "cancelled"
    [call] = await webhook.wait_for(1)
    assert call.json()["data"]["msg"] == "cancelled"

    async def run_ended():
        return not loops._runs

    await until(run_ended)
    # it stopped: it never handed a result of its own to the door (that would be "ignored")
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE task_id = :t", t=task_id) == 1
    assert (await gw.status(task_id))["status"] == "cancelled"


@pytest.mark.any_database
async def test_the_local_engine_stops_a_cancelled_task(start_gateway, long_speech_wav, database_url, tmp_path):
    gw = await start_gateway(engine={"speaker_labels": False})
    # ten minutes of speech: far more work left when it is cancelled than the worker needs to notice
    longer = tmp_path / "ten-minutes.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-stream_loop", "4", "-i", str(long_speech_wav), "-c", "copy",
                    str(longer)], check=True)
    task_id = await gw.submit(asset_id=await gw.upload(longer))

    async def reported():
        task = await gw.status(task_id)
        return task["status"] == "processing" and task["progress"] > 0

    await until(reported, timeout=120)
    assert (await gw.call("POST", f"/transcriptions/{task_id}/cancel"))[0] == 200

    async def run_ended():
        return not gw.app[LOOPS]._runs

    await until(run_ended, timeout=120)
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE task_id = :t", t=task_id) == 1
    task = await gw.status(task_id)
    assert task["status"] == "cancelled" and task["progress"] < 1


async def test_openai_request_waiting_for_a_cancelled_task(start_gateway, tmp_path):
    gw = await start_gateway(providers={"echo": {"delay_s": 20}})
    wav = script_wav(tmp_path / "a.wav", "Hello there.")

    async def transcribe():
        with open(wav, "rb") as f:
            async with gw.http.post(f"{gw.url}/v1/audio/transcriptions", data={"file": f, "model": ECHO}) as resp:
                return resp.status, await resp.json()

    waiting = asyncio.create_task(transcribe())

    async def running():
        return [t for t in await gw.tasks() if t["status"] == "processing"]

    [task] = await until(running)
    assert (await gw.call("POST", f"/transcriptions/{task['task_id']}/cancel"))[0] == 200
    status, body = await waiting
    assert status == 409
    assert body == {"error": {"message": f"transcription cancelled: task {task['task_id']} was cancelled before it "
                                         "finished", "type": "invalid_request_error", "param": None, "code": None}}


async def test_delete_an_asset(api_only, database_url):
    gw = api_only
    task_id = await gw.submit(asset_id=gw.asset_id, model=ECHO)
    status, body = await gw.call("DELETE", f"/{gw.asset_id}")
    assert status == 409 and body["msg"] == f"asset {gw.asset_id} is used by 1 queued or processing task(s); " \
                                            "cancel them or wait until they finish"
    await gw.cancel(task_id)
    status, body = await gw.call("DELETE", f"/{gw.asset_id}")
    assert status == 200 and body["data"] == {"asset_id": gw.asset_id, "deleted": True}
    assert (await gw.call("GET", f"/{gw.asset_id}/download"))[0] == 404
    assert (await gw.call("DELETE", f"/{gw.asset_id}"))[0] == 404
    task = await gw.status(task_id)
    assert task["status"] == "cancelled" and task["asset_id"] is None
    assert await count_rows(database_url, "SELECT count(*) FROM asset") == 0


class Indexer:
    """A plugin whose delivery is still running when its task is deleted: it writes its file
    only once the test lets it, after the DELETE has told it to remove it."""

    def __init__(self, folder: Path):
        self.folder, self.started, self.go, self.told = folder, asyncio.Event(), asyncio.Event(), 0

    @hookimpl
    async def transcript_completed(self, task):
        self.started.set()
        await self.go.wait()
        (self.folder / task.task_id).write_text("indexed")

    @hookimpl
    def transcript_deleted(self, task_id):
        self.told += 1
        (self.folder / task_id).unlink(missing_ok=True)


async def test_a_plugin_delivery_running_at_the_delete_leaves_nothing(start_gateway, speech_script, tmp_path,
                                                                      database_url):
    cfg = test_config(tmp_path, database_url)
    plugins = Plugins(cfg.plugins.load, cfg.plugins.sections())
    indexer = Indexer(tmp_path)
    plugins.register(indexer, "indexer", {})
    gw = await start_gateway(config=cfg, plugin_manager=plugins)
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await asyncio.wait_for(indexer.started.wait(), 30)
    assert (await gw.call("DELETE", f"/transcriptions/{task_id}"))[0] == 200
    assert indexer.told == 1
    indexer.go.set()  # the delivery goes on and writes after the deletion told the plugin

    async def told_again():
        return indexer.told == 2

    await until(told_again)
    assert not (tmp_path / task_id).exists()
    assert await rows_left(database_url, task_id) == NOTHING
