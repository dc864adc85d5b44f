"""The edges of the HTTP server, over real sockets: requests aiohttp's parser refuses, input
that used to crash a handler (a 500 and a stack trace), answers that left the envelope."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

from gateway import API_BASE as API
from conftest import daemon_sections, to_toml
from fakes import one_route_server
from test_bad_input import GENERATE, envelope, expect_error


async def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as it is on a new connection; the answer's status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # the server closes after answering
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def port_of(gw) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- item 7: 400s, not 500s ---------------------------------------------------------------


async def test_input_that_crashed_handlers_is_a_400_naming_the_problem(start_gateway):
    gw = await start_gateway(server={"api_keys": ["key-1"]})
    auth = {"Authorization": "key-1", "Content-Type": "application/json"}
    deep = b"[" * 1000 + b"]" * 1000
    too_deep = "body is not valid JSON: nested deeper than 64 levels"
    for path in (GENERATE, "/transcriptions/sync-generate-audio", "/callbacks/local"):
        for body in (deep, b'{"asset_id": ' + deep + b"}", b'{"task_id": "x", "data": ' + deep + b"}"):
            await expect_error(gw, "POST", path, 400, too_deep, data=body, headers=auth)
    # 64 levels are read (and judged by what they hold); brackets inside strings do not count
    shallow = json.dumps({"asset_id": json.loads("[" * 63 + "]" * 63)}).encode()
    await expect_error(gw, "POST", GENERATE, 400, "asset_id: Input should be a valid string", data=shallow,
                       headers=auth)
    await expect_error(gw, "POST", GENERATE, 400, "asset_id: no asset '" + "[" * 1000 + "'; upload the file first",
                       data=json.dumps({"asset_id": "[" * 1000}).encode(), headers=auth)

    for bad in ("0001-01-01|a",  # a naive timestamp
                "0001-01-01T00:00:00+05:00|a",  # before year 1 in UTC
                "not a date|a", "no separator"):
        await expect_error(gw, "GET", f"/transcriptions?cursor={cursor(bad)}", 400,
                           "cursor: invalid cursor; use next_cursor from the previous page", headers=auth)
    status, body = await gw.call("GET", f"/transcriptions?cursor={cursor('2026-01-01T00:00:00+01:00|a')}",
                                 headers=auth)
    assert (status, body["data"]) == (200, {"items": [], "next_cursor": None}), body
    assert "MDAwMS0wMS0wMXxh" == cursor("0001-01-01|a")  # the cursor

    nested = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
              b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n"
              b"--inner\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--inner--\r\n--xyz--\r\n")
    await expect_error(gw, "POST", "/upload", 400, "malformed multipart/form-data body: a part is itself "
                       "multipart; send the file as one part named 'file'", data=nested,
                       headers={"Authorization": "key-1", "Content-Type": "multipart/form-data; boundary=xyz"})
    assert [p for p in Path(gw.config.storage.dir).rglob("*") if p.is_file()] == []

    # Header bytes that are not UTF-8 (aiohttp's client sends only text: written by hand)
    for value in (b"\xff\xfe", b"Bearer key-\xe9"):
        status, headers, body = await raw_request(port_of(gw), request("GET", "/serve/api/v2/transcriptions")
                                                  .replace(b"\r\n\r\n", b"\r\nAuthorization: " + value + b"\r\n\r\n"))
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert (status, json.loads(body)) == (400, envelope(400, "Authorization header is not valid UTF-8"))
    status, body = await gw.call("GET", "/transcriptions", headers={"Authorization": "key-\u00e9"})
    assert (status, body) == (401, envelope(401, "invalid API key"))  # UTF-8, just not a key


# --- item 8: every answer in the envelope ---------------------------------------------------


async def test_requests_refused_before_routing_answer_in_the_envelope(gateway):
    port = port_of(gateway)
    long_line = "the request line or a header is longer than 8190 bytes"
    cases = [
        (request("GET", "/serve/api/v2/healthz?x=" + "a" * 9000), 400, long_line),
        (request("GET", "/serve/api/v2/healthz", headers={"X-Padding": "a" * 9000}), 400, long_line),
        (request("GET", "/serve/api/v2/healthz", headers={"X-" + "a" * 9000: "1"}), 400, long_line),
        (b"G@T /serve/api/v2/healthz HTTP/1.1\r\n\r\n", 400,
         "malformed HTTP request: Invalid method encountered:\n\n  b'G@T /serve/api/v2/healthz HTTP/1.1'\n     ^"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400,
         "malformed HTTP request: Received HTTPS traffic on an HTTP port"),
        (b"POST /serve/api/v2/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
         "malformed HTTP request: Invalid character in chunk size:\n\n  b'zz'\n    ^"),
        (request("POST", API + GENERATE, b"{}", {"Expect": "something", "Content-Type": "application/json"}),
         417, "Unknown Expect: something"),
        (request("POST", API + GENERATE, b"not gzip", {"Content-Encoding": "gzip", "Content-Type": "application/json"}),
         400, "request body is not valid gzip data (its Content-Encoding)"),
        (request("POST", "/serve/api/v2/upload", b"not gzip",
                 {"Content-Encoding": "gzip", "Content-Type": "multipart/form-data; boundary=x"}),
         400, "request body is not valid gzip data (its Content-Encoding)"),
    ]
    for data, status, msg in cases:
        got_status, headers, body = await raw_request(port, data)
        assert headers["content-type"] == "application/json; charset=utf-8", (data[:60], headers, body[:200])
        assert (got_status, json.loads(body)) == (status, envelope(status, msg)), data[:60]
    assert [p for p in Path(gateway.config.storage.dir).rglob("*") if p.is_file()] == []


async def test_download_errors_answer_in_the_envelope(gateway, tmp_path):
    sound = tmp_path / "a.wav"
    sound.write_bytes(b"RIFF" + os.urandom(996))
    asset_id = await gateway.upload(sound)
    async with gateway.http.get(f"{gateway.base}/{asset_id}/download", headers={"Range": "bytes=0-3"}) as resp:
        assert (resp.status, await resp.read()) == (206, b"RIFF")  # a range it can serve
    for bad in ("bytes=1000-", "bytes=0-1,5-6", "bytes=abc"):
        await expect_error(gateway, "GET", f"/{asset_id}/download", 416,
                           f"Range {bad!r} is not one byte range within the file's 1000 bytes", headers={"Range": bad})
    next(Path(gateway.config.storage.dir).rglob(asset_id)).unlink()
    await expect_error(gateway, "GET", f"/{asset_id}/download", 404,
                       f"asset {asset_id!r} has no file in storage any more")


# --- item 10: connections that never finish their headers ---------------------------------


async def wait_listening(daemon, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status, _, _ = await raw_request(daemon.port, request("GET", "/readyz"))
            if status == 200:
                return
        except OSError:
            pass
        assert asyncio.get_running_loop().time() < deadline, daemon.log_path.read_text()[-2000:]
        await asyncio.sleep(0.2)


async def test_partial_headers_are_closed_after_the_header_timeout_and_connections_are_capped(
        tmp_path, database_url, daemon_factory):
    cap = 30
    sections = daemon_sections(tmp_path, database_url, server={"header_timeout_s": 1, "max_connections": cap})
    daemon = daemon_factory(to_toml(sections), command=("serve", "--no-worker"))
    daemon.start()
    await wait_listening(daemon)

    held = []
    for _ in range(cap):  # as many as allowed, each stuck in the middle of its headers
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"GET /serve/api/v2/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append((reader, writer))
    for _ in range(5):  # one more is answered at once and closed, before anything of it is read
        status, headers, body = await raw_request(daemon.port, request("GET", "/healthz"))
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert (status, json.loads(body)) == (503, envelope(
            503, f"too many connections (server.max_connections is {cap}); try again later"))

    for reader, writer in held:  # each held connection is closed by the gateway, with no answer
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    # A body may take longer than the header timeout (server.body_timeout_s governs it)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    body = b'{"asset_id": "re_1"}'
    slow_writer.write(request("POST", API + GENERATE, headers={"Content-Type": "application/json"})
                      .replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()) + body[:5])
    await asyncio.sleep(2.5)  # longer than header_timeout_s, with the headers sent
    slow_writer.write(body[5:])
    answer = await asyncio.wait_for(slow_reader.read(), 30)
    slow_writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(
        json.dumps(envelope(400, "asset_id: no asset 're_1'; upload the file first"), separators=(",", ":")).encode())

    status, _, body = await raw_request(daemon.port, request("GET", "/serve/api/v2/healthz"))
    assert status == 200, body  # below the cap again
    log = daemon.log_path.read_text()
    assert '"event": "http.connections_full"' in log and "Traceback" not in log


# --- item 9: temp files of a killed process ------------------------------------------------


async def test_temp_files_left_by_a_sigkill_mid_upload_and_mid_download_go_at_the_next_start(
        tmp_path, database_url, daemon_factory):
    from aiohttp import web

    async def endless(request):  # audio that never finishes arriving
        resp = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await resp.prepare(request)
        await resp.write(b"RIFF" + b"\0" * 65536)
        await asyncio.Event().wait()

    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)))  # stopped by the fixture
    tmp = tmp_path / "assets" / "tmp"
    async with one_route_server(endless, "/slow.wav", method="GET") as slow_url:
        daemon.start()
        await wait_listening(daemon)
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)  # an upload, stuck half-way
        head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\0" * 300_000)
        writer.write(request("POST", API + "/upload", headers={"Content-Type": "multipart/form-data; boundary=b"})
                     .replace(b"Content-Length: 0", b"Content-Length: 10000000") + head)
        await writer.drain()
        body = json.dumps({"url": slow_url}).encode()
        status, _, answer = await raw_request(daemon.port, request(
            "POST", API + GENERATE, body, {"Content-Type": "application/json"}))
        assert status == 200, answer
        for _ in range(300):
            left = sorted(p.name for p in tmp.iterdir())
            if {p.rsplit(".", 1)[-1] for p in left} == {"part", "url"}:
                break
            await asyncio.sleep(0.1)
        daemon.kill()
        writer.close()
        assert sorted(p.name for p in tmp.iterdir()) == left and len(left) == 2, left  # left behind

        daemon.start()
        await wait_listening(daemon)
        assert not set(left) & {p.name for p in tmp.iterdir()}
        assert '"event": "storage.temp_files_removed"' in daemon.log_path.read_text()


async def test_the_start_up_sweep_leaves_files_a_live_process_is_writing(start_gateway, tmp_path):
    """Several processes may share storage.dir: a temp file is locked by its writer for as long
    as it exists, and the sweep removes only unlocked ones."""
    import subprocess
    import sys

    tmp = tmp_path / "assets" / "tmp"
    tmp.mkdir(parents=True)
    stale = [tmp / "re_123456789012345678.part", tmp / "tmpk2j3h4.url"]
    for path in stale:
        path.write_bytes(b"\0" * 100)
    (tmp / "notes.txt").write_text("not ours")
    writer = subprocess.Popen(  # another gateway process, mid-upload
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from gateway.storage import create_temp; "
         "path, f = create_temp(Path(sys.argv[1]), '.part'); print(path.name, flush=True); time.sleep(600)",
         str(tmp)], stdout=subprocess.PIPE, text=True)
    try:
        live = writer.stdout.readline().strip()
        gw = await start_gateway()
        assert sorted(p.name for p in tmp.iterdir()) == sorted([live, "notes.txt"])
        sound = tmp_path / "a.wav"
        sound.write_bytes(b"RIFF" + os.urandom(1000))
        await gw.upload(sound)  # uploads still work (and leave no temp file)
        assert sorted(p.name for p in tmp.iterdir()) == sorted([live, "notes.txt"])
    finally:
        writer.kill()
        writer.wait()
