"""/readyz follows the database: 503 while PostgreSQL cannot be reached, 200 again once it can,
with no restart. The gateway reaches PostgreSQL through a TCP relay on loopback (to the
server's Unix socket) that the test cuts and restores (closing the listening socket and every
relayed connection)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from sqlalchemy.engine import make_url

from conftest import Gateway, daemon_sections, free_port, to_toml
from gateway.appkeys import PROVIDERS
from netns import PG_SOCKET_DIR


class Relay:
    """127.0.0.1:<port> -> PostgreSQL's Unix socket, until cut."""

    def __init__(self, port: int, upstream=f"{PG_SOCKET_DIR}/.s.PGSQL.5432"):
        self.port = port
        self.upstream = upstream
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self.server.close()
        await self.server.wait_closed()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def ready(gw) -> tuple[int, dict]:
    async with gw.http.get(gw.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def until(gw, status: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = await ready(gw)
        if got == status:
            return body
        assert time.monotonic() < deadline, (got, body)
        await asyncio.sleep(0.2)


async def test_readyz_fails_while_the_database_is_unreachable_and_recovers(start_gateway, database_url, db_backend,
                                                                           speech_wav):
    if db_backend != "postgresql":
        pytest.skip("SQLite is a file in the process: there is no connection to lose")
    relay = Relay(free_port())
    await relay.start()
    url = make_url(database_url).set(host="127.0.0.1", port=relay.port, query={}).render_as_string(False)
    gw = await start_gateway(database={"url": url}, worker=False)
    assert (await ready(gw))[0] == 200
    asset = await gw.upload(speech_wav)
    first, second = await gw.submit(asset_id=asset), await gw.submit(asset_id=asset)
    assert (await callback(gw, first)) == (200, "accepted")  # the door's writer connection is open now

    await relay.cut()
    body = await until(gw, 503)
    assert body["msg"].startswith("database unreachable: ") and body["code"] == "503"
    status, body = await gw.call("GET", "/transcriptions")  # the API answers in the envelope meanwhile
    assert (status, body["msg"]) == (503, "database unavailable; try again later")
    t0 = time.monotonic()
    assert (await callback(gw, second)) == (503, "database unavailable; try again later")
    assert time.monotonic() - t0 < 15

    await relay.start()
    body = await until(gw, 200)
    assert body["data"]["database"] == "ok"
    status, page = await gw.call("GET", "/transcriptions")
    assert status == 200 and len(page["data"]["items"]) == 2
    assert (await callback(gw, second)) == (200, "accepted")  # the provider's retry goes in
    assert (await callback(gw, first)) == (200, "duplicate")
    await relay.cut()


async def callback(gw, task_id: str) -> tuple[int, str]:
    status, body = await gw.call("POST", "/callbacks/local", json={
        "code": "0000", "message": "SUCCESS", "task_id": task_id,
        "data": {"msg": "transcription completed", "success": True, "data": {
            "data": [{"start_time": 0.0, "end_time": 1.0, "text": "Hello.", "speaker": None}],
            "usage_metadata": {"duration": 1.0, "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0}}}})
    return status, body["data"]["outcome"] if status == 200 else body["msg"]


# --- the speaker encoder loads at start-up (issue 11, item 15) --------------------------------


async def test_readyz_reports_the_speaker_encoder_loaded_before_any_speaker_task(start_gateway):
    from gateway import speakers

    gw = await start_gateway()  # waits for /readyz 200
    status, body = await ready(gw)
    assert status == 200, body
    assert body["data"] == {"database": "ok", "engine": "loaded", "speakers": "loaded", "models": {"whisper-1": "loaded"}}
    assert speakers._encoder is not None  # no speaker=true task has asked for it


@pytest.mark.any_database
async def test_a_fresh_daemon_loads_the_speaker_encoder_before_the_first_speaker_task(
        tmp_path, database_url, daemon_factory, speech_wav):
    """In a process of its own (nothing loaded before): the encoder is loaded by the time /readyz
    says 200, so the first speaker=true task does not pay for it."""
    sections = daemon_sections(tmp_path, database_url, engine={"speaker_labels": True})
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        status, body = await ready(gw)
        assert status == 200 and body["data"]["speakers"] == "loaded", body
        task = await gw.wait(await gw.submit(asset_id=await gw.upload(speech_wav), speaker=True), timeout=120)
        assert task["status"] == "completed", task
    daemon.stop()
    events = [json.loads(line)["event"] for line in daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    assert "engine.speakers_loaded" in events and "task.claimed" in events, events
    assert events.index("engine.speakers_loaded") < events.index("task.claimed"), events


async def test_speaker_labels_off_loads_no_encoder_and_refuses_speaker_requests(start_gateway, speech_wav):
    gw = await start_gateway(engine={"speaker_labels": False})
    status, body = await ready(gw)
    assert status == 200, body
    assert body["data"]["speakers"] == "disabled (engine.speaker_labels = false)"
    assert not gw.app[PROVIDERS].get("local").engine.speakers_loaded
    status, body = await gw.call("POST", "/transcriptions/async-generate-audio",
                                 json={"asset_id": await gw.upload(speech_wav), "speaker": True})
    assert status == 400 and body["msg"] == ("speaker: the provider behind 'whisper-1' (local) cannot label "
                                             "speakers; engine.speaker_labels is false"), body
