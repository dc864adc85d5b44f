"""Retention (gateway/retention.py): the sweep with the clock moved forward, against the real
database, deletes what is older exactly as DELETE does and keeps the rest; the worker runs it
on its own; at most one process sweeps at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from conftest import ECHO, count_rows
from gateway import retention
from gateway.appkeys import DB, PLUGINS
from gateway.config import ConfigError, RetentionConfig, load_config
from gateway.db import Database
from gateway.models import utcnow
from test_callback_door import HELLO, for_task, post
from test_lifecycle import until
from test_metrics import scrape, value


async def test_sweep_with_the_clock_moved_forward(start_gateway, speech_script, database_url, tmp_path):
    gw = await start_gateway(worker=False)
    kept_asset = await gw.upload(speech_script)
    done = []
    for _ in range(3):
        task_id = await gw.submit(asset_id=await gw.upload(speech_script))
        assert (await post(gw, for_task(HELLO, task_id)))[0] == 200
        done.append(task_id)
    queued = await gw.submit(asset_id=kept_asset)  # its audio stays: a queued task needs it
    before = await scrape(gw)
    cfg = RetentionConfig(audio_days=7, transcripts_days=30)
    db, plugins = gw.app[DB], gw.app[PLUGINS]

    assert await retention.sweep(db, plugins, cfg, now=utcnow() + timedelta(days=6)) == \
        {"transcript": 0, "audio": 0, "tombstone": 0}
    counts = await retention.sweep(db, plugins, cfg, now=utcnow() + timedelta(days=8), batch=2)
    assert counts == {"transcript": 0, "audio": 3, "tombstone": 0}  # in two batches
    for task_id in done:  # transcripts stay, without their audio
        task = await gw.status(task_id)
        assert task["status"] == "completed" and task["asset_id"] is None and task["result"]
    async with gw.http.get(f"{gw.base}/{kept_asset}/download") as resp:
        assert resp.status == 200
    assert (await gw.status(queued))["status"] == "queued"

    counts = await retention.sweep(db, plugins, cfg, now=utcnow() + timedelta(days=31))
    assert counts == {"transcript": 3, "audio": 0, "tombstone": 0}
    for task_id in done:
        assert (await gw.call("GET", f"/transcriptions/{task_id}"))[0] == 404
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 0
    assert await count_rows(database_url, "SELECT count(*) FROM delivery") == 0
    assert (await gw.status(queued))["status"] == "queued"  # never finished: not a transcript to expire

    counts = await retention.sweep(db, plugins, cfg, now=utcnow() + timedelta(days=33))
    assert counts == {"transcript": 0, "audio": 0, "tombstone": 3}
    assert await count_rows(database_url, "SELECT count(*) FROM task") == 1

    after = await scrape(gw)
    for kind, n in (("transcript", 3), ("audio", 3)):
        assert value(after, "tgw_retention_deleted_total", kind=kind) - \
            value(before, "tgw_retention_deleted_total", kind=kind) == n


async def test_forever_is_the_default(start_gateway, speech_script):
    gw = await start_gateway(worker=False)
    task_id = await gw.submit(asset_id=await gw.upload(speech_script))
    await post(gw, for_task(HELLO, task_id))
    counts = await retention.sweep(gw.app[DB], gw.app[PLUGINS], gw.config.retention,
                                   now=utcnow() + timedelta(days=10000))
    assert counts == {"transcript": 0, "audio": 0, "tombstone": 0}
    assert (await gw.status(task_id))["status"] == "completed"


async def test_the_worker_sweeps_on_its_own(start_gateway, speech_script, database_url, tmp_path):
    gw = await start_gateway(retention={"transcripts_days": 1, "sweep_s": 0.2}, engine={"speaker_labels": False})
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await gw.wait(task_id)
    srt = tmp_path / "subtitles" / f"{task_id}.srt"
    await until(lambda: _exists(srt))
    db = Database(database_url)
    try:
        async with db.session() as s:
            await (await s.connection()).execute(text("UPDATE task SET finished_at = :at WHERE id = :t"),
                                                 {"at": utcnow() - timedelta(days=2), "t": task_id})
    finally:
        await db.close()

    async def deleted():
        return (await gw.call("GET", f"/transcriptions/{task_id}"))[0] == 404

    await until(deleted)

    async def srt_removed():  # the plugins are told once the transaction has committed
        return not srt.exists()

    await until(srt_removed)
    assert await count_rows(database_url, "SELECT count(*) FROM asset") == 0


async def _exists(path):
    return path.exists()


async def test_one_process_sweeps_at_a_time(start_gateway, speech_script, database_url, db_backend):
    if db_backend == "sqlite":
        pytest.skip("SQLite has one writer: a second sweeper waits for the first's transaction")
    gw = await start_gateway(worker=False)
    task_id = await gw.submit(asset_id=await gw.upload(speech_script))
    await post(gw, for_task(HELLO, task_id))
    cfg = RetentionConfig(transcripts_days=1)
    other = Database(database_url)
    try:
        async with other.session() as s:  # another process, mid-sweep
            await (await s.connection()).execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": retention.SWEEP_LOCK})
            counts = await retention.sweep(gw.app[DB], gw.app[PLUGINS], cfg, now=utcnow() + timedelta(days=2))
            assert counts["transcript"] == 0
    finally:
        await other.close()
    counts = await retention.sweep(gw.app[DB], gw.app[PLUGINS], cfg, now=utcnow() + timedelta(days=2))
    assert counts["transcript"] == 1


@pytest.mark.parametrize("environ, message", [
    ({"TGW_RETENTION__AUDIO_DAYS": "-1"}, "retention.audio_days: Input should be greater than or equal to 0"),
    ({"TGW_RETENTION__TRANSCRIPTS_DAYS": "soon"}, "retention.transcripts_days: Input should be a valid integer"),
    ({"TGW_RETENTION__SWEEP_S": "0"}, "retention.sweep_s: Input should be greater than 0"),
])
def test_bad_retention_settings_name_the_key(environ, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=environ)
    assert message in str(err.value)
