"""The edges of the HTTP server, over real sockets: requests aiohttp's parser refuses, input
that used to crash a handler (a 500 and a stack trace), answers that left the envelope."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

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
