"""structlog: JSON lines in production (not a terminal), readable console in a terminal, and
`task_id` on every line of a job."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import structlog

from conftest import Gateway, daemon_sections, to_toml
from gateway.config import LogConfig
from gateway.logs import configure_logging

JOB_EVENTS = {"task.queued", "task.claimed", "engine.done", "ingest", "task.finished", "delivery.attempt"}


async def test_every_line_of_a_job_is_json_with_its_task_id(tmp_path, database_url, daemon_factory,
                                                            webhook, speech_wav):
    sections = daemon_sections(tmp_path, database_url, log={"format": "auto"})  # stdout is a file
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        task_id = await gw.submit(asset_id=await gw.upload(speech_wav), callback_url=webhook.url)
        await gw.wait_task(task_id)
        await webhook.wait_for(1)
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
