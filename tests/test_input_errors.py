"""Every bad input has a defined answer in the envelope, and nothing is stored half-way."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from conftest import WEBHOOK_SECRET, count_rows

GENERATE = "/transcriptions/async-generate-audio"


def stored_files(gw) -> list[Path]:
    root = Path(gw.config.storage.dir)
    return [p for p in root.rglob("*") if p.is_file()]


async def assert_error(gw, method, path, status, msg, **kw):
    got, body = await gw.call(method, path, **kw)
    assert (got, body) == (status, {"code": str(status), "msg": msg, "data": None,
                                    "success": False, "failed": True}), body


async def test_invalid_generate_requests(gateway, speech_wav, database_url):
    asset_id = await gateway.upload(speech_wav)
    cases = [
        (b"{bad", 400, "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"", 400, "body is empty; send a JSON object"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        ({}, 400, "asset_id or url is required"),
        ({"asset_id": asset_id, "url": "http://example.com/a.wav"}, 400, "give exactly one of asset_id or url"),
        ({"asset_id": "re_1"}, 400, "asset_id: no asset 're_1'; upload the file first"),
        ({"asset_id": asset_id, "model": "whisper-9"}, 400, "model: unknown model 'whisper-9'; valid models: whisper-1"),
        ({"asset_id": asset_id, "colour": "red"}, 400, "colour: unknown field"),
        ({"asset_id": asset_id, "speaker": "yes"}, 400, "speaker: Input should be a valid boolean"),
        ({"asset_id": 7}, 400, "asset_id: Input should be a valid string"),
        ({"asset_id": asset_id, "speaker": True}, 400,
         "speaker: speaker labelling (speaker=true) is not available on this gateway yet"),
        ({"asset_id": asset_id, "num_speakers": 2}, 400, "num_speakers: only meaningful with speaker=true"),
        ({"asset_id": asset_id, "language": "klingon"}, 400,
         "language: unknown language code 'klingon' (use an ISO 639-1 code such as 'en')"),
        ({"asset_id": asset_id, "language": "de"}, 400,
         "language: the model behind 'whisper-1' is English-only; 'de' is not supported"),
        ({"asset_id": asset_id, "callback_url": "ftp://example.com/x"}, 400,
         "callback_url: must use http or https, not 'ftp'"),
        ({"asset_id": asset_id, "callback_url": "http://"}, 400, "callback_url: has no host"),
        ({"url": "file:///etc/passwd"}, 400, "url: must use http or https, not 'file'"),
    ]
    for body, status, msg in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await assert_error(gateway, "POST", GENERATE, status, msg, data=data)
    assert await count_rows(database_url, "SELECT count(*) FROM task") == 0
    # a valid language is accepted
    assert await gateway.submit(asset_id=asset_id, language="EN")


async def test_upload_errors_leave_no_file(start_gateway, tmp_path, database_url):
    gw = await start_gateway(server={"max_upload_mb": 0.1})
    big = os.urandom(1024 * 1024)

    form = aiohttp.FormData()
    form.add_field("file", big, filename="big.wav")
    await assert_error(gw, "POST", "/upload", 413, "file is larger than server.max_upload_mb (0.1 MB)", data=form)

    async def chunked():  # no Content-Length: the limit is enforced while streaming to disk
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(chunked(), {"Content-Type": "application/octet-stream"})
    part.set_content_disposition("form-data", name="file", filename="big.wav")
    await assert_error(gw, "POST", "/upload", 413, "file is larger than server.max_upload_mb (0.1 MB)",
                       data=writer)

    form = aiohttp.FormData()
    form.add_field("file", b"", filename="empty.wav")
    await assert_error(gw, "POST", "/upload", 400, "file is empty", data=form)

    form = aiohttp.FormData()
    form.add_field("other", b"abc", filename="x.wav")
    await assert_error(gw, "POST", "/upload", 400, "multipart field 'file' is required", data=form)

    await assert_error(gw, "POST", "/upload", 400, "send the file as multipart/form-data in a field named 'file'",
                       data=b"raw bytes", headers={"Content-Type": "audio/wav"})
    assert stored_files(gw) == []
    assert await count_rows(database_url, "SELECT count(*) FROM asset") == 0


async def test_json_body_limit(start_gateway):
    gw = await start_gateway(server={"max_json_kb": 1})
    body = json.dumps({"asset_id": "re_1", "callback_url": "http://example.com/" + "a" * 2000})
    await assert_error(gw, "POST", GENERATE, 413, "JSON body is larger than server.max_json_kb (1 KB)", data=body)
    await assert_error(gw, "POST", "/callbacks/local", 413, "JSON body is larger than server.max_json_kb (1 KB)",
                       data=body)


async def test_unknown_routes_and_methods(gateway):
    await assert_error(gateway, "GET", "/nothing/here/at/all", 404,
                       "no such endpoint: GET /serve/api/v2/nothing/here/at/all")
    await assert_error(gateway, "DELETE", "/upload", 405, "method DELETE is not allowed on /serve/api/v2/upload")
    await assert_error(gateway, "GET", "/transcriptions/" + "0" * 32, 404, f"task '{'0' * 32}' not found")


async def test_not_audio_fails_the_task_with_a_failure_callback(gateway, webhook, tmp_path):
    junk = tmp_path / "x.wav"
    junk.write_bytes(b"RIFF" + os.urandom(4096))
    task_id = await gateway.submit(asset_id=await gateway.upload(junk), callback_url=webhook.url)
    task = await gateway.wait_task(task_id)
    assert task["status"] == "failed" and task["result"] is None
    assert task["error"].startswith("the file could not be decoded as audio")
    [call] = await webhook.wait_for(1)
    assert Webhook(WEBHOOK_SECRET).verify(call.body, call.headers) == {
        "code": "4000", "message": "FAILED", "task_id": task_id,
        "data": {"data": None, "msg": task["error"], "success": False}}

    status, body = await gateway.call("POST", "/transcriptions/sync-generate-audio",
                                      json={"asset_id": await gateway.upload(junk)})
    assert status == 400 and body["msg"].startswith("transcription failed: the file could not be decoded")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.wav", "http://10.0.0.1/a.wav", "http://169.254.169.254/latest",
                                 "http://[::1]/a.wav", "http://localhost/a.wav", "http://224.0.0.1/a.wav"])
async def test_private_urls_refused_unless_allowed(start_gateway, url, database_url):
    gw = await start_gateway(server={"allow_private_urls": False})
    status, body = await gw.call("POST", GENERATE, json={"url": url})
    assert status == 400 and "resolves to a non-public address" in body["msg"]
    assert "set server.allow_private_urls to allow it" in body["msg"]
    assert await count_rows(database_url, "SELECT count(*) FROM task") == 0


@pytest.fixture
async def file_server(speech_wav):
    async def speech(request):
        return web.FileResponse(speech_wav)

    app = web.Application()
    app.router.add_get("/speech.wav", speech)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_url_source_when_allowed(gateway, file_server):
    task_id = await gateway.submit(url=str(file_server.make_url("/speech.wav")))
    task = await gateway.wait_task(task_id)
    assert task["status"] == "completed" and "gateway" in " ".join(s["text"] for s in task["result"]["data"]).lower()
    missing = await gateway.submit(url=str(file_server.make_url("/missing.wav")))
    task = await gateway.wait_task(missing)
    assert task["status"] == "failed" and task["error"] == "could not fetch url: HTTP 404"
    assert list(Path(gateway.config.storage.dir, "tmp").iterdir()) == []  # downloads are cleaned up


async def test_fetcher_resolver_refuses_private_addresses_at_connect_time():
    """Checked again when connecting, so a redirect or a DNS change cannot reach a private host."""
    from gateway.urls import PublicOnlyResolver

    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="refusing to connect to non-public address 127.0.0.1"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


def convert(src: Path, dest: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *args, str(dest)], check=True)
    return dest


async def test_media_formats(gateway, speech_wav, tmp_path):
    video = ["-f", "lavfi", "-i", "color=c=black:s=64x64:d=6"]
    files = {
        "flac": convert(speech_wav, tmp_path / "s.flac"),
        "mp3": convert(speech_wav, tmp_path / "s.mp3"),
        "ogg": convert(speech_wav, tmp_path / "s.ogg", "-c:a", "libvorbis"),
        "opus": convert(speech_wav, tmp_path / "s.opus", "-c:a", "libopus"),
        "m4a": convert(speech_wav, tmp_path / "s.m4a", "-c:a", "aac"),
    }
    for ext, vcodec, acodec in [("mp4", "libx264", "aac"), ("webm", "libvpx", "libopus")]:
        out = tmp_path / f"s.{ext}"
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *video, "-i", str(speech_wav), "-shortest",
                        "-c:v", vcodec, "-c:a", acodec, str(out)], check=True)
        files[ext] = out
    tasks = {ext: await gateway.submit(asset_id=await gateway.upload(path)) for ext, path in files.items()}
    results = await asyncio.gather(*(gateway.wait_task(t, timeout=120) for t in tasks.values()))
    for ext, task in zip(tasks, results):
        text = " ".join(s["text"] for s in task["result"]["data"]).lower() if task["result"] else task["error"]
        assert "hello" in text and "gateway" in text, (ext, text)
