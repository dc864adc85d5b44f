"""The dashboard's security without a browser (aiohttp's client): sessions and their cookie, the
API never taking the cookie, CSRF tokens and same-origin POSTs, the Content-Security-Policy and
pages without inline script or style, escaping of a transcript that came through a callback,
upload errors as the gateway's message, and where sign-in may send the browser."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest

from conftest import ECHO
from fakes import callback_payload
from gateway import API_BASE
from gateway.keys import Keyring, config_kid
from gateway_plugins.dashboard.sessions import COOKIE, Sessions
from tgw_echo import script_wav

KEY = "dash-security-key-41c9"
pytestmark = pytest.mark.any_database  # what it checks does not depend on the database
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


class Browserish:
    """An aiohttp session that keeps cookies for 127.0.0.1 and sends its Origin, as a browser does."""

    def __init__(self, url: str):
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def page(self, path: str, **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.url + path, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text(), resp

    async def csrf(self, path: str = "/") -> str:
        return CSRF.search((await self.page(path))[1]).group(1)

    async def post(self, path: str, data, origin: str | None = "same", **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        headers = {"Origin": self.url if origin == "same" else origin} if origin else {}
        async with self.http.post(self.url + path, data=data, headers=headers, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text(), resp

    async def sign_in(self, key: str = KEY, next_: str = "/") -> aiohttp.ClientResponse:
        return (await self.post("/sign-in", {"api_key": key, "csrf_token": await self.csrf(), "next": next_}))[2]

    def session_cookie(self) -> str:
        return next(c.value for c in self.http.cookie_jar if c.key == COOKIE)

    async def close(self):
        await self.http.close()


@pytest.fixture
async def keyed(start_gateway):
    return await start_gateway(server={"api_keys": [KEY]})


@pytest.fixture
async def visitor(keyed):
    b = Browserish(keyed.url)
    yield b
    await b.close()


async def test_sign_in_makes_a_strict_httponly_session_that_the_api_never_takes(visitor, keyed):
    status, _, resp = await visitor.page("/tasks")
    assert (status, unquote(resp.headers["Location"])) == (303, "/?next=/tasks")
    wrong = await visitor.sign_in("not-it")
    assert wrong.status == 401
    resp = await visitor.sign_in(next_="/tasks")
    assert (resp.status, resp.headers["Location"]) == (303, "/tasks")
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    assert KEY not in set_cookie
    assert (await visitor.page("/tasks"))[0] == 200
    # the JSON API: the cookie alone is refused, the Authorization header still works
    async with visitor.http.get(keyed.url + API_BASE + "/transcriptions") as api:
        assert api.status == 401 and (await api.json())["msg"].startswith("missing Authorization header")
    async with visitor.http.get(keyed.url + API_BASE + "/transcriptions", headers={"Authorization": KEY}) as api:
        assert api.status == 200
    # signing out ends it
    status, _, resp = await visitor.post("/sign-out", {"csrf_token": await visitor.csrf("/tasks")})
    assert status == 303
    assert (await visitor.page("/tasks"))[0] == 303


async def test_forms_refuse_other_origins_and_missing_or_wrong_tokens(visitor, keyed):
    await visitor.sign_in()
    token = await visitor.csrf("/tasks")
    for origin, fields in [("https://evil.example", {"csrf_token": token}), ("null", {"csrf_token": token}),
                           ("same", {}), ("same", {"csrf_token": "0" * 64})]:
        status, html, _ = await visitor.post("/sign-out", fields, origin=origin)
        assert status == 403, (origin, fields)
        assert "refused" in html
    assert (await visitor.page("/tasks"))[0] == 200  # still signed in: none of them went through
    # an upload with a wrong token keeps nothing
    form = aiohttp.FormData()
    form.add_field("csrf_token", "bad")
    form.add_field("file", b"RIFF....", filename="a.wav", content_type="audio/wav")
    assert (await visitor.post("/ui/upload", form))[0] == 403
    stored = [p for p in Path(keyed.config.storage.dir).rglob("*") if p.is_file()]
    assert stored == []


async def test_pages_forbid_inline_script_style_and_other_origins(visitor, keyed, tmp_path):
    await visitor.sign_in()
    path = script_wav(tmp_path / "a.wav", "SPEAKER_00: Hello there.\nSPEAKER_01: Hi.", seconds=4)
    async with aiohttp.ClientSession(headers={"Authorization": KEY}) as api:
        keyed_client = type(keyed)(keyed.url, http=api)
        task_id = await keyed_client.submit(asset_id=await keyed_client.upload(path), model=ECHO, speaker=True)
        await keyed_client.wait(task_id)
    for page in ("/", "/tasks", f"/tasks/{task_id}", "/search?q=hello", "/status"):
        status, html, resp = await visitor.page(page)
        assert status == 200, page
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp, page
        assert "unsafe" not in csp and "http" not in csp, page
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert re.findall(r"<script(?![^>]*\bsrc=\"/ui/static/)[^>]*>", html) == [], page
        assert re.findall(r"\s(style|on[a-z]+)=", html) == [], page
        assert re.findall(r"(?:src|href)=\"(?:https?:)?//", html) == [], page
        assert KEY not in html, page


async def test_a_transcript_from_a_callback_is_shown_as_text(start_gateway, tmp_path):
    gw = await start_gateway(worker=False, server={"api_keys": [KEY]})  # nothing runs the task: the callback does
    headers = {"Authorization": KEY}
    async with aiohttp.ClientSession(headers=headers) as api:
        client = type(gw)(gw.url, http=api)
        task_id = await client.submit(asset_id=await client.upload(script_wav(tmp_path / "a.wav", "x")),
                                      model="whisper-1", speaker=True)
        payload = callback_payload(task_id, "whisper-1", speaker=True)
        payload["data"]["data"]["data"][0]["text"] = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
        payload["data"]["data"]["data"][0]["speaker"] = '<b>SPEAKER_00</b>'
        async with api.post(gw.url + API_BASE + "/callbacks/local", json=payload) as resp:
            assert resp.status == 200, await resp.text()
    viewer = Browserish(gw.url)
    try:
        await viewer.sign_in()
        status, html, _ = await viewer.page(f"/tasks/{task_id}")
    finally:
        await viewer.close()
    assert status == 200
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;SPEAKER_00&lt;/b&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>SPEAKER_00" not in html


async def test_upload_errors_are_the_gateways_message(start_gateway, tmp_path):
    gw = await start_gateway(server={"max_upload_mb": 0.05})
    browser = Browserish(gw.url)  # auth off: no sign-in, a session all the same (for the CSRF token)
    try:
        status, html, _ = await browser.page("/")
        assert status == 200 and "input[name=api_key]" not in html and 'name="api_key"' not in html
        wav = script_wav(tmp_path / "a.wav", "hello")

        async def upload(content: bytes | None = None, filename="a.wav", **fields):
            form = aiohttp.FormData()
            form.add_field("csrf_token", await browser.csrf())
            for name, value in fields.items():
                form.add_field(name, value)
            form.add_field("file", content if content is not None else wav.read_bytes(), filename=filename)
            return await browser.post("/ui/upload", form)

        status, html, _ = await upload(b"just some text", filename="notes.txt", model=ECHO)
        assert status == 400 and "file: is not audio" in html and 'name="file"' in html
        status, html, _ = await upload(b"\0" * 100_000, model=ECHO)
        assert status == 413, html
        assert "file is larger than server.max_upload_mb (" in html
        status, html, _ = await upload(model="no-such-model")
        assert status == 400 and "no-such-model" in html and "Traceback" not in html
        status, html, _ = await upload(model=ECHO, num_speakers="many")
        assert status == 400 and "num_speakers: must be a whole number" in html
        status, _, resp = await upload(model=ECHO, speaker="on", language="en", num_speakers="2")
        assert status == 303 and re.fullmatch(r"/tasks/[0-9a-f]{32}", resp.headers["Location"])
        task = await gw.wait(resp.headers["Location"].rsplit("/", 1)[1])  # finished before the gateway stops
        assert (task["status"], task["speaker"], task["model"]) == ("completed", True, ECHO)
        status, html, _ = await browser.page("/tasks/" + "0" * 32)
        assert status == 404 and f"task &#39;{'0' * 32}&#39; not found" in html
    finally:
        await browser.close()


async def test_sign_in_only_sends_the_browser_within_the_site(visitor):
    for target, expected in [("/tasks?status=failed", "/tasks?status=failed"), ("//evil.example/x", "/"),
                             ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("", "/")]:
        visitor.http.cookie_jar.clear()
        resp = await visitor.sign_in(next_=target)
        assert resp.headers["Location"] == expected, target


async def test_the_dashboards_data_needs_the_session_and_its_token(visitor, keyed):
    for path in ("/ui/fragments/tasks", f"/ui/tasks/{'0' * 32}/audio", f"/ui/tasks/{'0' * 32}/transcript.srt"):
        assert (await visitor.page(path))[0] == 401, path
    await visitor.sign_in()
    assert (await visitor.page("/ui/fragments/tasks"))[0] == 403  # no X-CSRF-Token
    token = await visitor.csrf("/tasks")
    status, html, _ = await visitor.page("/ui/fragments/tasks", headers={"X-CSRF-Token": token})
    assert status == 200 and html.startswith('<div id="task-rows"')
    # a forged or altered cookie is no session
    nonce, expires, kid, sig = visitor.session_cookie().split(".")
    visitor.http.cookie_jar.update_cookies({COOKIE: f"{nonce}.{int(expires) + 9999}.{kid}.{sig}"},
                                           aiohttp.client.URL(visitor.url))
    assert (await visitor.page("/tasks"))[0] == 303


async def test_sessions_end_when_expired_or_their_key_is_removed():
    sessions = Sessions("secret", lifetime_s=60)
    session, cookie = sessions.make(config_kid("k1"))
    assert sessions.read(cookie) == session
    assert await Keyring(None, ["k1", "k2"], "").session_caller(session.kid) is not None
    assert await Keyring(None, ["k2"], "").session_caller(session.kid) is None  # its key left server.api_keys
    assert Sessions("other secret", 60).read(cookie) is None
    assert sessions.read(cookie.replace(".", "x", 1)) is None
    _, stale = Sessions("secret", lifetime_s=-1).make(config_kid("k1"))
    assert sessions.read(stale) is None
    assert sessions.csrf_ok(session, sessions.csrf(session))
    other, _ = sessions.make(config_kid("k1"))
    assert not sessions.csrf_ok(other, sessions.csrf(session)) and not sessions.csrf_ok(session, None)
    assert int(time.time()) < session.expires


async def test_a_failed_task_shows_its_reason(start_gateway, tmp_path):
    gw = await start_gateway(worker=False)  # auth off; the callback fails the task
    async with aiohttp.ClientSession() as api:
        client = type(gw)(gw.url, http=api)
        task_id = await client.submit(asset_id=await client.upload(script_wav(tmp_path / "a.wav", "x")),
                                      model="whisper-1")
        async with api.post(gw.url + API_BASE + "/callbacks/local",
                            json=callback_payload(task_id, "whisper-1", speaker=False, success=False)) as resp:
            assert resp.status == 200, await resp.text()
    viewer = Browserish(gw.url)
    try:
        status, html, _ = await viewer.page(f"/tasks/{task_id}")
        rows_status, rows, _ = await viewer.page("/tasks?status=failed")
    finally:
        await viewer.close()
    assert status == 200 and 'id="task-error">Failed: upstream engine crashed</p>' in html
    assert 'data-live="0"' in html and 'id="segments"' not in html  # finished: nothing polls, no transcript
    assert rows_status == 200 and f'data-task="{task_id}"' in rows


async def test_the_task_list_pages_and_filters(start_gateway, tmp_path, monkeypatch):
    from gateway_plugins.dashboard import pages

    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    gw = await start_gateway()
    async with aiohttp.ClientSession() as api:
        client = type(gw)(gw.url, http=api)
        asset = await client.upload(script_wav(tmp_path / "a.wav", "hello"))
        ids = [await client.submit(asset_id=asset, model=ECHO) for _ in range(3)]
        for task_id in ids:
            await client.wait(task_id)
    viewer = Browserish(gw.url)
    try:
        _, first, _ = await viewer.page("/tasks")
        older = re.search(r'href="(/tasks\?status=&amp;cursor=[^"]+)" rel="next"', first).group(1)
        _, second, _ = await viewer.page(older.replace("&amp;", "&"))
        status, bad, _ = await viewer.page("/tasks?status=lost")
    finally:
        await viewer.close()
    shown = lambda html: re.findall(r'data-task="([0-9a-f]{32})"', html)  # noqa: E731
    assert shown(first) == ids[:0:-1] and shown(second) == ids[:1]  # newest first
    assert 'rel="next"' not in second
    assert status == 400 and "status: must be one of queued, processing, completed, failed" in bad
