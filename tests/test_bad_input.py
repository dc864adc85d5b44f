"""Bad input, end to end over HTTP: every mistake gets a defined answer in the JSON envelope
{"code": "<status>", "msg": <exact reason>, "data": null, "success": false, "failed": true},
and nothing is stored half-way (checked through the gateway's own API and its storage dir).

Inputs that can only be judged by running them (not audio, a URL that answers 404) are
accepted, and the task then fails with a reason and a signed FAILURE callback.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import wave
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import ECHO, WEBHOOK_SECRET, Gateway, daemon_sections, to_toml
from tgw_echo import binary_text

GENERATE = "/transcriptions/async-generate-audio"
TOO_BIG_UPLOAD = "file is larger than server.max_upload_mb (0.1 MB)"


# --- helpers -----------------------------------------------------------------------------


def envelope(status: int, msg: str) -> dict:
    return {"code": str(status), "msg": msg, "data": None, "success": False, "failed": True}


async def expect_error(gw, method: str, path: str, status: int, msg: str, **kw) -> None:
    got = await gw.call(method, path, **kw)
    assert got == (status, envelope(status, msg)), f"{method} {path} {kw.get('data', kw.get('json'))!r:.120}"



def test_the_accepted_language_codes_are_whisper_s():
    """requests.WHISPER_LANGUAGES is faster-whisper's list of languages: what a multilingual model's
    public `supported_languages` answers (read without loading one)."""
    from types import SimpleNamespace

    from faster_whisper import WhisperModel

    from gateway.requests import WHISPER_LANGUAGES

    multilingual = SimpleNamespace(model=SimpleNamespace(is_multilingual=True))
    assert WHISPER_LANGUAGES == set(WhisperModel.supported_languages.fget(multilingual))
    assert len(WHISPER_LANGUAGES) == 100 and {"en", "de", "yue", "haw"} <= WHISPER_LANGUAGES

async def expect_no_tasks(gw) -> None:
    status, body = await gw.call("GET", "/transcriptions")
    assert status == 200 and body["data"] == {"items": [], "next_cursor": None}, body


def expect_empty_storage(gw) -> None:
    """Nothing but the (empty) temp folder under storage.dir: no asset, no partial upload."""
    root = Path(gw.config.storage.dir)
    assert sorted(root.rglob("*")) == [root / "tmp"]


def multipart(content=b"RIFF", field: str = "file", filename: str | None = "a.wav") -> aiohttp.MultipartWriter:
    """A multipart/form-data body with one part; `content` may be an async iterator (sent chunked)."""
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(content, {"Content-Type": "application/octet-stream"})
    names = {"name": field} | ({"filename": filename} if filename is not None else {})
    part.set_content_disposition("form-data", **names)
    return writer


def transcript_text(task: dict) -> str:
    return " ".join(s["text"] for s in task["result"]["data"]).lower()


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)


def silent_wav(path: Path, frames: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * frames)
    return path


# --- JSON requests -----------------------------------------------------------------------


async def test_every_bad_generate_request_is_refused_and_nothing_is_queued(gateway, speech_wav, webhook):
    asset = await gateway.upload(speech_wav)
    cases = [
        (b"{bad", "body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b'{"asset_id": "\xff"}',
         "body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 14: invalid start byte"),
        (b'{"url": "https://example.com/\\ud800.wav"}',  # a lone surrogate: no database can store it
         "body is not valid JSON: no low surrogate in string: line 1 column 30 (char 29)"),
        (b"", "body is empty; send a JSON object"),
        (b" \r\n\t", "body is empty; send a JSON object"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'"re_1"', "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
        (b"42", "body must be a JSON object"),
        ({"asset_id": asset, "colour": "red"}, "colour: unknown field"),
        ({"asset_id": asset, "speaker": "yes"}, "speaker: Input should be a valid boolean"),
        ({"asset_id": asset, "num_speakers": "2"}, "num_speakers: Input should be a valid integer"),
        ({"asset_id": asset, "num_speakers": 2}, "num_speakers: only meaningful with speaker=true"),
        ({"asset_id": 7}, "asset_id: Input should be a valid string"),
        ({"asset_id": asset, "model": None}, "model: Input should be a valid string"),
        ({}, "asset_id or url is required"),
        ({"asset_id": None, "url": None, "model": "whisper-1"}, "asset_id or url is required"),
        ({"asset_id": asset, "url": "http://example.com/a.wav"}, "give exactly one of asset_id or url"),
        ({"asset_id": "re_1"}, "asset_id: no asset 're_1'; upload the file first"),
        ({"asset_id": "../../etc/passwd"}, "asset_id: no asset '../../etc/passwd'; upload the file first"),
        ({"asset_id": asset, "model": "whisper-9"}, "model: unknown model 'whisper-9'; valid models: echo, whisper-1"),
        ({"asset_id": asset, "language": "klingon"},
         "language: unknown language code 'klingon' (use an ISO 639-1 code such as 'en')"),
        ({"asset_id": asset, "language": "de"},
         "language: the model behind 'whisper-1' is English-only; 'de' is not supported"),
        ({"asset_id": asset, "min_speakers": 2}, "min_speakers: only meaningful with speaker=true"),
        ({"asset_id": asset, "speaker": False, "max_speakers": 3}, "max_speakers: only meaningful with speaker=true"),
        ({"asset_id": asset, "speaker": True, "num_speakers": 0},
         "num_speakers: Input should be greater than or equal to 1"),
        ({"asset_id": asset, "speaker": True, "max_speakers": 33},
         "max_speakers: Input should be less than or equal to 32"),
        ({"asset_id": asset, "speaker": True, "min_speakers": 2.5}, "min_speakers: Input should be a valid integer"),
        ({"asset_id": asset, "speaker": True, "min_speakers": 4, "max_speakers": 2},
         "min_speakers: 4 is greater than max_speakers (2)"),
        ({"asset_id": asset, "speaker": True, "num_speakers": 5, "max_speakers": 4},
         "num_speakers: 5 is outside min_speakers..max_speakers (1..4)"),
        ({"asset_id": asset, "speaker": True, "num_speakers": 2, "min_speakers": 3},
         "num_speakers: 2 is outside min_speakers..max_speakers (3..32)"),
        ({"asset_id": asset, "callback_url": "ftp://example.com/hook"}, "callback_url: must use http or https, not 'ftp'"),
        ({"asset_id": asset, "callback_url": "example.com/hook"},
         "callback_url: must use http or https, not 'no scheme'"),
        ({"asset_id": asset, "callback_url": ""}, "callback_url: must be a non-empty http(s) URL"),
        ({"asset_id": asset, "callback_url": "http://"}, "callback_url: has no host"),
        ({"url": "file:///etc/passwd"}, "url: must use http or https, not 'file'"),
        ({"asset_id": asset, "word_timestamps": "yes"}, "word_timestamps: Input should be a valid boolean"),
        ({"asset_id": asset, "word_timestamps": 1}, "word_timestamps: Input should be a valid boolean"),
        ({"asset_id": asset, "speaker_turns": True}, "speaker_turns: only meaningful with speaker=true"),
        ({"asset_id": asset, "speaker": True, "speaker_turns": "yes"}, "speaker_turns: Input should be a valid boolean"),
        ({"asset_id": asset, "prompt": 5}, "prompt: Input should be a valid string"),
        ({"asset_id": asset, "prompt": "x" * 4001}, "prompt: String should have at most 4000 characters"),
        ({"asset_id": asset, "hotwords": ["Zorblatt"]}, "hotwords: Input should be a valid string"),
        ({"asset_id": asset, "hotwords": "x" * 1001}, "hotwords: String should have at most 1000 characters"),
        ({"asset_id": asset, "temperature": 0.2}, "temperature: unknown field"),  # the OpenAI API's, not this one's
    ] + [  # PostgreSQL cannot store a NUL character: refused up front on every backend
        ({"asset_id": asset, field: value}, f"{field}: Value error, must not contain the NUL character (\\u0000)")
        for field, value in (("callback_url", "https://example.com/\x00hook"), ("model", "whisper-1\x00"),
                             ("language", "e\x00n"), ("prompt", "a\x00b"), ("hotwords", "\x00"))
    ] + [({"asset_id": "re_\x00"}, "asset_id: Value error, must not contain the NUL character (\\u0000)"),
         ({"url": "https://example.com/\x00.wav"}, "url: Value error, must not contain the NUL character (\\u0000)")]
    for body, msg in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await expect_error(gateway, "POST", GENERATE, 400, msg, data=data,
                           headers={"Content-Type": "application/json"})
    await expect_no_tasks(gateway)
    # The same asset with valid options is accepted: the refusals above were about the options.
    assert await gateway.submit(asset_id=asset, language="EN", callback_url=webhook.url)
    assert await gateway.submit(asset_id=asset, speaker=True, num_speakers=2, min_speakers=1, max_speakers=2)
    assert await gateway.submit(asset_id=asset, word_timestamps=False, prompt="x" * 4000, hotwords="Zorblatt")


@pytest.mark.parametrize("options, msg", [
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
    ({"temperature": float("nan")}, "temperature: Input should be a finite number"),
    ({"translate": "yes"}, "translate: Input should be a valid boolean"),
])
def test_engine_options_the_openai_api_sets_are_checked_and_named(options, msg):
    """The options no memories field sets (the OpenAI API's temperature, translation) are
    refused by TaskOptions itself, the field named, before a task is made of them."""
    from pydantic import ValidationError

    from gateway.options import TaskOptions
    from gateway.validation import describe_validation_error

    with pytest.raises(ValidationError) as err:
        TaskOptions(**options)
    assert describe_validation_error(err.value) == msg


async def test_json_body_limit_is_enforced_while_reading(gateway):
    """server.max_json_kb (1024 KB by default): a body of exactly the limit is read in full,
    even when it arrives in many pieces; one byte more is 413, with or without Content-Length."""
    limit = gateway.config.server.max_json_kb * 1024
    head, tail = b'{"asset_id": "re_1"', b"}"

    def padded(size: int) -> bytes:
        return head + b" " * (size - len(head) - len(tail)) + tail

    async def in_pieces(raw: bytes):
        for i in range(0, len(raw), 16384):
            yield raw[i:i + 16384]
            await asyncio.sleep(0)

    too_large = "JSON body is larger than server.max_json_kb (1024 KB)"
    await expect_error(gateway, "POST", GENERATE, 400, "asset_id: no asset 're_1'; upload the file first",
                       data=in_pieces(padded(limit)))
    await expect_error(gateway, "POST", GENERATE, 413, too_large, data=padded(limit + 1))
    await expect_error(gateway, "POST", GENERATE, 413, too_large, data=in_pieces(padded(limit + 1)))
    await expect_error(gateway, "POST", "/callbacks/local", 413, too_large, data=in_pieces(padded(limit + 1)))
    await expect_no_tasks(gateway)


# --- uploads -----------------------------------------------------------------------------


async def test_upload_errors_leave_nothing_in_storage(start_gateway):
    gw = await start_gateway(server={"max_upload_mb": 0.1})
    max_bytes = int(0.1 * 1048576)

    # Content-Length says it is too large: refused before reading.
    await expect_error(gw, "POST", "/upload", 413, TOO_BIG_UPLOAD, data=multipart(os.urandom(1 << 20)))

    # No Content-Length: refused while streaming, after reading little more than the limit.
    sent = 0

    async def endless(total=64 << 20, chunk=os.urandom(1 << 16)):
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    await expect_error(gw, "POST", "/upload", 413, TOO_BIG_UPLOAD, data=multipart(endless()))
    assert sent < 16 << 20, f"the gateway read {sent} bytes before refusing a 0.1 MB limit"

    async def one_byte_too_many():
        yield b"\0" * (max_bytes + 1)

    await expect_error(gw, "POST", "/upload", 413, TOO_BIG_UPLOAD, data=multipart(one_byte_too_many()))

    await expect_error(gw, "POST", "/upload", 400, "file is empty", data=multipart(b""))
    await expect_error(gw, "POST", "/upload", 400, "multipart field 'file' is required", data=multipart(field="audio"))
    await expect_error(gw, "POST", "/upload", 400, "multipart field 'file' must be a file upload (with a filename)",
                       data=multipart(filename=None))
    not_multipart = "send the file as multipart/form-data in a field named 'file'"
    await expect_error(gw, "POST", "/upload", 400, not_multipart, data=b"RIFF", headers={"Content-Type": "audio/wav"})
    await expect_error(gw, "POST", "/upload", 400, not_multipart, json={"file": "speech.wav"})
    await expect_error(gw, "POST", "/upload", 400,
                       "malformed multipart/form-data body: boundary missed for Content-Type: multipart/form-data",
                       data=b"RIFF", headers={"Content-Type": "multipart/form-data"})
    await expect_error(gw, "POST", "/upload", 400,
                       "malformed multipart/form-data body: Could not find starting boundary b'--xyz'",
                       data=b"RIFF", headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    bad_part_header = b'--xyz\r\nContent-Disposition: form-data; name="\x13"\r\n\r\nRIFF\r\n--xyz--\r\n'
    status, body = await gw.call("POST", "/upload", data=bad_part_header,
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert status == 400 and body["msg"].startswith("malformed multipart/form-data body: Invalid HTTP header"), body
    expect_empty_storage(gw)

    # Exactly the limit is fine, and is the only file stored.
    status, body = await gw.call("POST", "/upload", data=multipart(b"\1" * max_bytes))
    assert status == 200, body
    asset_id = body["data"]["asset_id"]
    root = Path(gw.config.storage.dir)
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == [Path(asset_id[-2:], asset_id)]


DISK_FULL = "not enough space left in storage.dir to store the file; nothing was kept"


async def test_an_upload_to_a_full_disk_is_507_and_keeps_nothing(tmp_path, database_url, daemon_factory):
    """storage.dir is a real 2 MB disk: a tmpfs mounted in a mount namespace of the daemon's own,
    which goes away with it."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --mount is not permitted here (needs root or user namespaces)")
    assets = tmp_path / "assets"
    assets.mkdir()
    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)), command=("serve", "--no-worker"))
    daemon.prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount -t tmpfs -o size=2m tgw-full "$0" && exec "$@"', str(assets))
    daemon.start()
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", config=None, http=http)
        await gw.wait_ready()
        await expect_error(gw, "POST", "/upload", 507, DISK_FULL, data=multipart(os.urandom(3 << 20)))
        disk = Path(f"/proc/{daemon.proc.pid}/root", *assets.parts[1:])  # the daemon's view of its disk
        assert sorted(disk.rglob("*")) == [disk / "tmp"]  # no partial file, no asset
        status, body = await gw.call("POST", "/upload", data=multipart(os.urandom(3 << 19)))
        assert status == 200, body  # 1.5 MB of the 2 fit: the refused upload's bytes were freed
        asset_id = body["data"]["asset_id"]
        assert [p.name for p in disk.rglob("*") if p.is_file()] == [asset_id]


async def test_a_body_that_arrives_too_slowly_is_408_and_stores_nothing(start_gateway):
    gw = await start_gateway(server={"body_timeout_s": 1})

    async def trickle(first: bytes):
        yield first
        await asyncio.sleep(3)  # then nothing for longer than the limit
        yield b"\0" * 1024

    slow = "request body not received within server.body_timeout_s (1 s)"
    await expect_error(gw, "POST", "/upload", 408, slow, data=multipart(trickle(b"RIFF" + b"\0" * 4096)))
    await expect_error(gw, "POST", GENERATE, 408, slow, data=trickle(b'{"asset_id": '),
                       headers={"Content-Type": "application/json"})
    expect_empty_storage(gw)
    await expect_no_tasks(gw)


# --- input that only fails when it is run ------------------------------------------------


async def test_not_audio_fails_the_task_with_a_signed_failure_callback(gateway, webhook, tmp_path):
    not_audio = tmp_path / "x.wav"
    not_audio.write_text("These are meeting notes, not a recording.\n" * 20)
    noise = tmp_path / "noise.wav"
    noise.write_bytes(os.urandom(64 * 1024))
    fake_header = tmp_path / "header.wav"
    fake_header.write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt " + os.urandom(4096))
    no_samples = silent_wav(tmp_path / "empty.wav", frames=0)

    expected = {"the file could not be decoded as audio": [not_audio, noise, fake_header],
                "the file contains no audio samples": [no_samples]}
    submitted = {}
    for reason, files in expected.items():
        for path in files:
            submitted[await gateway.submit(asset_id=await gateway.upload(path), callback_url=webhook.url)] = reason

    tasks = await asyncio.gather(*(gateway.wait(t) for t in submitted))
    for task in tasks:
        reason = submitted[task["task_id"]]
        assert task["status"] == "failed" and task["result"] is None, task
        assert task["error"].startswith(reason), task["error"]
        assert gateway.config.storage.dir not in task["error"] and "re_" not in task["error"]  # no server paths

    calls = await webhook.wait_for(len(submitted))
    payloads = {p["task_id"]: p for p in (Webhook(WEBHOOK_SECRET).verify(c.body, c.headers) for c in calls)}
    for task in tasks:
        assert payloads[task["task_id"]] == {
            "code": "4000", "message": "FAILED", "task_id": task["task_id"],
            "data": {"data": None, "msg": task["error"], "success": False}}


PRIVATE_URLS = {  # url -> the address its host resolves to
    "http://127.0.0.1:8000/a.wav": "127.0.0.1",
    "http://10.0.0.1/a.wav": "10.0.0.1",
    "http://169.254.169.254/latest/meta-data/": "169.254.169.254",
    "http://[::1]/a.wav": "::1",
    "http://0.0.0.0/a.wav": "0.0.0.0",
    "http://192.168.1.10/a.wav": "192.168.1.10",
    "http://[::ffff:127.0.0.1]/a.wav": "::ffff:127.0.0.1, which embeds 127.0.0.1",
    "http://2130706433/a.wav": "127.0.0.1",  # 127.0.0.1 written as one number
    "http://127.1/a.wav": "127.0.0.1",
    "http://localhost/a.wav": None,  # 127.0.0.1 or ::1, whichever the resolver gives first
}


@pytest.mark.needs_netns  # looks up no-such-host.invalid; a regression would connect to private addresses
async def test_private_urls_are_refused_unless_allowed(start_gateway):
    from gateway.urls import host_of

    gw = await start_gateway(server={"allow_private_urls": False, "allow_private_hosts": []})
    for url, address in PRIVATE_URLS.items():
        status, body = await gw.call("POST", GENERATE, json={"url": url})
        refused = f"url: host {host_of(url)!r} resolves to a non-public address"
        assert status == 400 and body == envelope(400, body["msg"]), (url, body)
        if address:
            assert body["msg"] == f"{refused} ({address}); set server.allow_private_urls to allow it"
        else:
            assert body["msg"].startswith(refused), body
    status, body = await gw.call("POST", GENERATE, json={"url": "http://no-such-host.invalid/a.wav"})
    assert status == 400 and body["msg"].startswith("url: host 'no-such-host.invalid' does not resolve: "), body
    await expect_no_tasks(gw)


async def test_url_sources_when_private_urls_are_allowed(start_gateway, media_server, webhook, speech_wav):
    gw = await start_gateway(server={"allow_private_urls": True, "max_upload_mb": 1})
    cases = {  # path on the media server -> error, or None for a transcript
        "/speech.wav": None,
        "/missing.wav": "could not fetch url: HTTP 404",
        "/big.wav": "url content is larger than server.max_upload_mb (1 MB)",
        "/empty.wav": "url returned an empty body",
        "/page.html": "the file could not be decoded as audio",  # the engine's decoder says so
    }
    submitted = {path: await gw.submit(url=media_server(path), callback_url=webhook.url,
                                       model="whisper-1" if path == "/page.html" else ECHO) for path in cases}
    finished = await asyncio.gather(*(gw.wait(t) for t in submitted.values()))
    for (path, error), task in zip(cases.items(), finished):
        if error is None:
            assert task["status"] == "completed", task
            assert transcript_text(task) == binary_text(speech_wav.read_bytes())  # the file, fetched whole
        else:
            assert task["status"] == "failed" and task["error"].startswith(error), (path, task)
    calls = await webhook.wait_for(len(cases))
    outcomes = {p["task_id"]: (p["code"], p["message"], p["data"]["success"])
                for p in (Webhook(WEBHOOK_SECRET).verify(c.body, c.headers) for c in calls)}
    for path, task_id in submitted.items():
        ok = cases[path] is None
        assert outcomes[task_id] == (("0000", "SUCCESS", True) if ok else ("4000", "FAILED", False)), path
    assert list(Path(gw.config.storage.dir, "tmp").iterdir()) == []  # downloads are cleaned up


async def test_a_redirect_to_a_private_address_is_refused(start_gateway, media_server, speech_wav):
    """`localhost` is allowed by name; where it redirects is checked again (an IP literal too,
    which aiohttp would connect to without asking any resolver)."""
    gw = await start_gateway(server={"allow_private_urls": False, "allow_private_hosts": ["LocalHost"]})
    local = media_server("/speech.wav").replace("127.0.0.1", "localhost")
    loopback = media_server("/speech.wav")
    to_ip = local.replace("/speech.wav", "/redirect?to=" + quote(loopback, safe=""))
    hops = local.replace("/speech.wav", "/redirect?to=" + quote(to_ip, safe=""))
    to_name = local.replace("/speech.wav", "/redirect?to=/speech.wav")  # relative, same allowed host
    loop = local.replace("/speech.wav", "/loop")
    cases = {
        to_ip: f"could not fetch url: redirect to {loopback} refused: host '127.0.0.1' resolves to a "
               "non-public address (127.0.0.1); set server.allow_private_urls to allow it",
        hops: f"could not fetch url: redirect to {loopback} refused: host '127.0.0.1'",
        to_name: None,
        local: None,
    }
    status, body = await gw.call("POST", GENERATE, json={"url": loopback})  # the name, not the address
    assert status == 400 and body["msg"].startswith("url: host '127.0.0.1' resolves to a non-public address")
    submitted = {url: await gw.submit(url=url, model=ECHO) for url in cases}
    for url, error in cases.items():
        task = await gw.wait(submitted[url])
        if error is None:
            assert task["status"] == "completed" and transcript_text(task) == binary_text(speech_wav.read_bytes()), task
        else:
            assert task["status"] == "failed" and task["error"].startswith(error), task
    looping = await gw.wait(await gw.submit(url=loop, model=ECHO))
    assert looping["status"] == "failed" and looping["error"] == "could not fetch url: more than 10 redirects"


# --- routes ------------------------------------------------------------------------------


async def test_unknown_routes_and_methods_answer_in_the_envelope(gateway):
    base = "/serve/api/v2"
    await expect_error(gateway, "GET", "/nothing/here", 404, f"no such endpoint: GET {base}/nothing/here")
    await expect_error(gateway, "POST", "/transcriptions/async-generate-audio/extra", 404,
                       f"no such endpoint: POST {base}/transcriptions/async-generate-audio/extra")
    async with gateway.http.get(gateway.url + "/index.php") as resp:  # outside the API base too
        assert (resp.status, await resp.json()) == (404, envelope(404, "no such endpoint: GET /index.php"))

    for method, path, allowed in [("DELETE", "/upload", "POST"),
                                  ("PATCH", "/transcriptions", "GET,HEAD"),
                                  ("GET", "/callbacks/local", "POST")]:
        async with gateway.http.request(method, gateway.base + path) as resp:
            assert resp.status == 405
            assert await resp.json() == envelope(405, f"method {method} is not allowed on {base}{path}")
            assert resp.headers["Allow"] == allowed  # RFC 9110: a 405 names the allowed methods

    unknown = "0" * 32
    await expect_error(gateway, "GET", f"/transcriptions/{unknown}", 404, f"task '{unknown}' not found")
    await expect_error(gateway, "GET", "/re_123/download", 404, "asset 're_123' not found")


# --- media formats -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_files(speech_wav, tmp_path_factory) -> dict[str, Path]:
    """The same speech in the containers and codecs clients send, made once for the module."""
    out = tmp_path_factory.mktemp("media")
    audio_only = {"flac": ["-c:a", "flac"], "mp3": ["-c:a", "libmp3lame"], "ogg": ["-c:a", "libvorbis"],
                  "opus": ["-c:a", "libopus"], "m4a": ["-c:a", "aac"]}
    files = {}
    for ext, codec in audio_only.items():
        ffmpeg("-i", speech_wav, *codec, out / f"speech.{ext}")
        files[ext] = out / f"speech.{ext}"
    black = ["-f", "lavfi", "-i", "color=c=black:s=64x64:d=10"]
    for ext, codecs in {"mp4": ["-c:v", "libx264", "-c:a", "aac"],
                        "webm": ["-c:v", "libvpx-vp9", "-c:a", "libopus"]}.items():
        ffmpeg(*black, "-i", speech_wav, "-shortest", *codecs, out / f"speech.{ext}")
        files[ext] = out / f"speech.{ext}"
    return files


@pytest.mark.any_database
async def test_common_media_formats_transcribe(gateway, media_files):
    submitted = {ext: await gateway.submit(asset_id=await gateway.upload(path)) for ext, path in media_files.items()}
    finished = await asyncio.gather(*(gateway.wait(t, timeout=180) for t in submitted.values()))
    for ext, task in zip(submitted, finished):
        assert task["status"] == "completed", (ext, task["error"])
        text = transcript_text(task)
        assert "hello" in text and "gateway" in text, (ext, text)
