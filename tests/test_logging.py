"""structlog: JSON lines in production (not a terminal), readable console in a terminal, and
`task_id` on every line of a job."""

from __future__ import annotations

import io
import json
import logging

from datetime import datetime, timezone

import aiohttp
import pytest
import structlog
from standardwebhooks.webhooks import Webhook

from conftest import WEBHOOK_SECRET, Gateway, daemon_sections, to_toml, wait_delivery
from gateway.config import LogConfig
from gateway.logs import configure_logging

JOB_EVENTS = {"task.queued", "task.claimed", "engine.done", "ingest", "task.finished", "delivery.attempt"}


@pytest.mark.any_database
async def test_every_line_of_a_job_is_json_with_its_task_id(tmp_path, database_url, daemon_factory,
                                                            webhook, speech_wav):
    sections = daemon_sections(tmp_path, database_url, log={"format": "auto"})  # stdout is a file
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        task_id = await gw.submit(asset_id=await gw.upload(speech_wav), callback_url=webhook.url)
        await gw.wait(task_id)
        await webhook.wait_for(1)
        await wait_delivery(gw, task_id, "delivered")  # its attempt recorded (and logged) before the stop
    daemon.stop()

    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.strip()]
    job_lines = [entry for entry in lines if entry["event"] in JOB_EVENTS]
    assert {entry["event"] for entry in job_lines} == JOB_EVENTS
    assert all(entry.get("task_id") == task_id for entry in job_lines), job_lines
    assert all({"timestamp", "level", "event"} <= set(entry) for entry in lines)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_format_in_a_terminal():
    stream = FakeTerminal()
    try:
        configure_logging(LogConfig(format="auto"), stream=stream)
        structlog.get_logger("t").info("hello.console", task_id="abc")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    assert "hello.console" in out and "task_id" in out and "abc" in out
    assert not out.lstrip().startswith("{")



API_KEY = "k-live-8f1d2c9b7a6e5d4c3b2a1908"
PROVIDER_SECRET = "whsec_" + "cHJvdmlkZXItc2VjcmV0LXByb3ZpZGVyLXNlY3JldA=="
DB_PASSWORD = "db-pass-5e4d3c2b1a"


def signed_headers(secret: str, body: str) -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign("msg_1", now, body), "Content-Type": "application/json"}


async def test_secrets_never_reach_the_log(tmp_path, database_url, daemon_factory, webhook, speech_wav):
    """API keys, webhook and provider secrets and the database password appear in no log line,
    at debug level, through good and bad keys, good and forged signatures, and a whole job."""
    url = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@")  # trust auth ignores it
    sections = daemon_sections(tmp_path, url, log={"format": "json", "level": "debug"},
                               server={"api_keys": [API_KEY]})
    sections["providers.local"] = {"secret": PROVIDER_SECRET}
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        task_id = await gw.submit(asset_id=await gw.upload(speech_wav), callback_url=webhook.url)
        task = await gw.wait(task_id)
        await webhook.wait_for(1)
        for key in (API_KEY + "x", API_KEY[:-1], f"Bearer {API_KEY[::-1]}"):
            async with http.get(gw.base + "/transcriptions", headers={"Authorization": key}) as resp:
                assert resp.status == 401
        body = json.dumps({"code": "0000", "message": "SUCCESS", "task_id": task_id,
                           "data": {"data": task["result"], "msg": "transcription completed", "success": True}})
        for secret, status in ((PROVIDER_SECRET, 200), (WEBHOOK_SECRET, 401)):
            async with http.post(gw.base + "/callbacks/local", data=body,
                                 headers=signed_headers(secret, body)) as resp:
                assert resp.status == status, await resp.text()
    daemon.stop()

    events = [json.loads(line)["event"] for line in daemon.log_path.read_text().splitlines() if line.strip()]
    assert {"serve.start", "ingest", "delivery.attempt"} <= set(events)  # the job's lines were written
    log = daemon.log_path.read_text()
    for secret in (API_KEY, PROVIDER_SECRET, PROVIDER_SECRET.removeprefix("whsec_"), WEBHOOK_SECRET,
                   WEBHOOK_SECRET.removeprefix("whsec_"), DB_PASSWORD):
        assert secret not in log, f"a secret ({secret[:8]}…) was logged"


async def test_failures_log_their_reason_at_warning_or_error(tmp_path, database_url, daemon_factory, webhook):
    """A real daemon's JSON lines: "listening on http://…" at start, a failed task's reason at
    warning, each retried delivery attempt at warning, the dead one at error, "stopped" at exit."""
    webhook.responses = [500] * 4  # webhooks.max_attempts is 4 in the test config: the 4th is dead
    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)))
    daemon.start()
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 50)
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        task_id = await gw.submit(asset_id=await gw.upload(junk), callback_url=webhook.url)
        task = await gw.wait(task_id)
        await wait_delivery(gw, task_id, "dead")
    daemon.stop()
    assert task["status"] == "failed"

    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.strip()]
    by_event = {}
    for entry in lines:
        by_event.setdefault(entry["event"], []).append(entry)
    assert by_event[f"listening on http://127.0.0.1:{daemon.port}"][0]["level"] == "info"
    assert lines[-1]["event"] == "stopped", lines[-3:]
    [finished] = by_event["task.finished"]
    assert finished["level"] == "warning" and finished["error"] == task["error"], finished
    assert "could not be decoded" in finished["error"]
    [ingested] = by_event["ingest"]
    assert ingested["level"] == "warning" and ingested["error"] == task["error"], ingested
    attempts = by_event["delivery.attempt"]
    assert [(a["level"], a["outcome"], a["error"]) for a in attempts] == \
        [("warning", "pending", "HTTP 500")] * 3 + [("error", "dead", "HTTP 500")], attempts
