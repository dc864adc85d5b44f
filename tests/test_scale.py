"""Scale-out: `serve --no-worker` API processes and `worker` processes sharing one database.

On PostgreSQL: one API process, three workers, 30 short tasks, one worker SIGKILLed in the
middle of a job: every task completes once, every webhook gets each task's callback under one
webhook-id, nothing is dead. And `worker` stops cleanly on SIGTERM, releasing its task."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import aiohttp
import pytest

from conftest import ECHO, Gateway, count_rows, daemon_sections, espeak, to_toml

pytestmark = pytest.mark.slow

TASKS = 30


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def short_wav(audio_dir):
    """About one second of speech: scale tests need many quick jobs."""
    return espeak("Testing one two three.", audio_dir / "short.wav", speed=200)


async def rows(database_url: str, sql: str, **params) -> list[tuple]:
    from sqlalchemy import text

    from gateway.db import Database

    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await db.close()


async def running_job(database_url: str, workers: dict[int, object], timeout: float = 60) -> tuple[str, str]:
    """(task_id, lease owner) of a task a worker process is in the middle of."""
    for _ in range(int(timeout / 0.02)):
        found = await rows(database_url, "SELECT id, lease_owner FROM task WHERE status = 'processing' "
                                         "AND lease_owner IS NOT NULL")
        for task_id, owner in found:
            if int(owner.split(":")[1]) in workers:
                return task_id, owner
        await asyncio.sleep(0.02)
    raise AssertionError("no worker picked up a task")


async def test_three_workers_one_killed_mid_job_every_task_once(
        tmp_path, database_url, db_backend, daemon_factory, http, webhook, second_webhook, short_wav):
    if db_backend != "postgresql":
        pytest.skip("several processes on one database is the PostgreSQL deployment")
    sections = daemon_sections(tmp_path, database_url, jobs={"lease_s": 3, "poll_s": 0.5},
                               providers={"echo": {"delay_s": 0.5}}, webhooks={"urls": [second_webhook.url]})
    toml = to_toml(sections)
    api = daemon_factory(toml, command=("serve", "--no-worker"))
    api.start()
    gw = Gateway(url=f"http://127.0.0.1:{api.port}", config=None, http=http)
    await gw.wait_ready()
    workers = [daemon_factory(toml, command=("worker",)) for _ in range(3)]
    for w in workers:
        w.start()

    asset = await gw.upload(short_wav)
    ids = [await gw.submit(asset_id=asset, model=ECHO, callback_url=webhook.url) for _ in range(TASKS)]

    task_id, owner = await running_job(database_url, {w.proc.pid: w for w in workers})
    victim = next(w for w in workers if w.proc.pid == int(owner.split(":")[1]))
    victim.kill()
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE id = :t AND status = 'processing' "
                            "AND lease_owner = :o", t=task_id, o=owner) == 1  # killed mid-job

    done = [await gw.wait(t, timeout=240) for t in ids]
    assert [d["status"] for d in done] == ["completed"] * TASKS
    assert next(d for d in done if d["task_id"] == task_id)["attempts"] == 2  # claimed again after the lease expired
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == TASKS
    assert await count_rows(database_url, "SELECT count(DISTINCT task_id) FROM transcript") == TASKS
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE outcome = 'accepted'") == TASKS

    for receiver in (webhook, second_webhook):
        await receiver.wait_for(TASKS, timeout=120)
    for _ in range(100):  # the last deliveries are recorded after the receivers answered
        if await count_rows(database_url, "SELECT count(*) FROM delivery WHERE kind = 'webhook' "
                                          "AND status = 'delivered'") == 2 * TASKS:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # nothing else may arrive
    for receiver in (webhook, second_webhook):
        ids_by_task = collections.defaultdict(set)
        for call in receiver.received:
            ids_by_task[call.json()["task_id"]].add(call.headers["webhook-id"])
        assert sorted(ids_by_task) == sorted(ids)
        assert all(len(v) == 1 for v in ids_by_task.values()), ids_by_task  # retries repeat it, nothing else
    assert await rows(database_url, "SELECT status, count(*) FROM delivery WHERE kind = 'webhook' GROUP BY status") \
        == [("delivered", 2 * TASKS)]
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE status = 'dead'") == 0

    for w in workers + [api]:
        if w is not victim:
            w.proc.terminate()
            assert await asyncio.to_thread(w.proc.wait, 30) == 0

    job_lines = [entry for w in workers for entry in log_entries(w.log_path)
                 if entry["event"].startswith(("task.", "delivery.")) or entry["event"] in ("engine.done", "ingest")]
    assert {"task.claimed", "task.finished", "delivery.attempt"} <= {e["event"] for e in job_lines}
    assert all(e.get("task_id") in ids for e in job_lines), [e for e in job_lines if e.get("task_id") not in ids]


def log_entries(path) -> list[dict]:
    """JSON log lines (a SIGKILLed process may leave a torn last line)."""
    import json

    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


async def test_worker_sigterm_releases_its_task_and_exits_0(
        tmp_path, database_url, daemon_factory, http, start_gateway, short_wav):
    gw = await start_gateway(worker=False)  # the API in this process; the worker a subprocess
    toml = to_toml(daemon_sections(tmp_path, database_url, jobs={"lease_s": 60}, providers={"echo": {"delay_s": 5}}))
    worker = daemon_factory(toml, command=("worker",))
    worker.start()
    task_id = await gw.submit(asset_id=await gw.upload(short_wav), model=ECHO)
    await gw.wait(task_id, until=("processing",), timeout=60)

    t0 = asyncio.get_running_loop().time()
    os.kill(worker.proc.pid, signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert asyncio.get_running_loop().time() - t0 < 10
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE id = :t AND status = 'queued' "
                            "AND lease_owner IS NULL", t=task_id) == 1
    worker.start()  # a new worker process takes it at once, not after the 60 s lease
    done = await gw.wait(task_id, timeout=120)
    assert done["status"] == "completed" and done["attempts"] == 2


async def test_a_new_task_wakes_an_idle_worker_process_through_listen_notify(
        tmp_path, database_url, db_backend, daemon_factory, start_gateway, short_wav):
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    gw = await start_gateway(worker=False)
    worker = daemon_factory(to_toml(daemon_sections(tmp_path, database_url, jobs={"poll_s": 600})),
                            command=("worker",))
    asset = await gw.upload(short_wav)
    first = await gw.submit(asset_id=asset, model=ECHO)
    worker.start()  # claims `first` at start-up, then waits: its next poll is 10 minutes away
    assert (await gw.wait(first, timeout=120))["status"] == "completed"
    await asyncio.sleep(0.5)
    second = await gw.submit(asset_id=asset, model=ECHO)  # only the notification can wake it in time
    assert (await gw.wait(second, timeout=60))["status"] == "completed"
    worker.proc.terminate()
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0


async def test_redeliver_wakes_an_idle_worker_process_through_listen_notify(
        tmp_path, database_url, db_backend, daemon_factory, start_gateway, short_wav, webhook):
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    gw = await start_gateway(worker=False)
    worker = daemon_factory(to_toml(daemon_sections(tmp_path, database_url, jobs={"poll_s": 600},
                                                    webhooks={"urls": [webhook.url]})), command=("worker",))
    task_id = await gw.submit(asset_id=await gw.upload(short_wav), model=ECHO)
    worker.start()
    assert (await gw.wait(task_id, timeout=120))["status"] == "completed"
    await webhook.wait_for(1)
    await asyncio.sleep(0.5)  # the worker's loops are idle now; their next poll is 10 minutes away
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/redeliver?target={webhook.url}")
    assert status == 200 and body["data"]["redelivering"] == 1
    calls = await webhook.wait_for(2, timeout=10)  # the API process's NOTIFY woke the worker process
    assert calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"]
    worker.proc.terminate()
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
