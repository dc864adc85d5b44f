"""Tenants: keys alice and bob (database keys, not admin) and root (a key of server.api_keys: an
admin). Every endpoint both ways: what alice made (asset, task, transcript, search hit) does not
exist for bob (404 with the message of an unknown id, or absent from lists and search), and root
sees everything and can filter by owner; under /v1 and in the dashboard alike."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from conftest import ECHO, espeak
from fakes import callback_payload
from gateway.appkeys import DB
from gateway.keys import create
from test_dashboard_security import CSRF, Browserish
from test_known_speakers import ALICE, ENROL_LINE
from tgw_echo import script_wav

ROOT = "root-config-key-0c1d"
WORD = {"alice": "zebrafinch", "bob": "marmoset"}  # a word only each one's transcript holds


class Tenants:
    def __init__(self, gw, keys: dict[str, str]):
        self.gw, self.keys = gw, keys

    async def call(self, who: str, method: str, path: str, **kw) -> tuple[int, dict]:
        return await self.gw.call(method, path, headers={"Authorization": self.keys[who]}, **kw)

    async def raw(self, who: str, method: str, path: str, **kw) -> tuple[int, bytes, aiohttp.ClientResponse]:
        async with self.gw.http.request(method, self.gw.base + path, headers={"Authorization": self.keys[who]},
                                        **kw) as resp:
            return resp.status, await resp.read(), resp

    async def upload(self, who: str, tmp_path) -> str:
        wav = script_wav(tmp_path / f"{who}.wav", f"Hello from {who}, the {WORD[who]} speaks.")
        form = aiohttp.FormData()
        form.add_field("file", wav.read_bytes(), filename=f"{who}.wav", content_type="audio/wav")
        status, body = await self.call(who, "POST", "/upload", data=form)
        assert status == 200, body
        return body["data"]["asset_id"]

    async def submit(self, who: str, asset_id: str) -> str:
        status, body = await self.call(who, "POST", "/transcriptions/async-generate-audio",
                                       json={"asset_id": asset_id, "model": ECHO})
        assert status == 200, body
        return body["data"]["task_id"]

    async def indexed(self, who: str, task_id: str) -> None:
        """Wait until the task is completed and its search delivery done."""
        for _ in range(600):
            status, body = await self.call(who, "GET", f"/transcriptions/{task_id}")
            task = body["data"]
            search = [d["status"] for d in task["deliveries"] if d["target"] == "plugin:search"]
            if task["status"] == "completed" and search == ["delivered"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"task {task_id} not completed and indexed: {task}")

    async def listed(self, who: str, **params) -> list[str]:
        status, body = await self.call(who, "GET", "/transcriptions", params=params)
        assert status == 200, body
        return [t["task_id"] for t in body["data"]["items"]]

    async def hits(self, who: str, q: str, **params) -> list[str]:
        status, body = await self.call(who, "GET", "/search", params={"q": q, **params})
        assert status == 200, body
        return [h["task_id"] for h in body["data"]["items"]]


async def keyed_gateway(start_gateway, **kw) -> Tenants:
    """A gateway with root in server.api_keys, and alice and bob made as database keys."""
    gw = await start_gateway(server={"api_keys": [ROOT]}, **kw)
    keys = {"root": ROOT}
    for name in ("alice", "bob"):
        keys[name] = (await create(gw.app[DB], gw.config.server.key_secret, name))[1]
    return Tenants(gw, keys)


@pytest.fixture
async def tenants(start_gateway, tmp_path):
    """Alice's and bob's asset, each's task (echo) completed and indexed for search."""
    t = await keyed_gateway(start_gateway)
    t.asset = {who: await t.upload(who, tmp_path) for who in ("alice", "bob")}
    t.task = {who: await t.submit(who, t.asset[who]) for who in ("alice", "bob")}
    for who in ("alice", "bob"):
        await t.indexed(who, t.task[who])
    return t


async def test_tasks_assets_transcripts_and_redelivery_are_the_owners_and_the_admins(tenants):
    t = tenants
    a_task, a_asset = t.task["alice"], t.asset["alice"]
    for who, expected in (("alice", 200), ("bob", 404), ("root", 200)):
        status, body = await t.call(who, "GET", f"/transcriptions/{a_task}")
        assert status == expected, (who, body)
        if expected == 404:  # exactly what an id that does not exist answers
            assert body["msg"] == f"task {a_task!r} not found"
            assert (await t.call(who, "GET", f"/transcriptions/{'0' * 32}"))[1]["msg"] == f"task {'0' * 32!r} not found"
        else:
            assert body["data"]["owner"] == "alice"
        for fmt in ("srt", "json"):
            status, raw, _ = await t.raw(who, "GET", f"/transcriptions/{a_task}/transcript.{fmt}")
            assert status == expected, (who, fmt)
            assert (WORD["alice"].encode() in raw) == (expected == 200)
        status, raw, _ = await t.raw(who, "GET", f"/{a_asset}/download")
        assert status == expected, who
        if expected == 404:
            assert (await t.call(who, "GET", f"/{a_asset}/download"))[1]["msg"] == f"asset {a_asset!r} not found"
        status, body = await t.call(who, "POST", f"/transcriptions/{a_task}/redeliver")
        assert status == expected, (who, body)
    # bob cannot make a task of alice's asset: it is an asset that does not exist, for him
    status, body = await t.call("bob", "POST", "/transcriptions/async-generate-audio",
                                json={"asset_id": a_asset, "model": ECHO})
    assert (status, body["msg"]) == (400, f"asset_id: no asset {a_asset!r}; upload the file first")
    status, body = await t.call("root", "POST", "/transcriptions/sync-generate-audio",
                                json={"asset_id": a_asset, "model": ECHO})
    assert status == 200, body  # an admin may, and the task is the admin's
    root_task = body["data"]["task_id"]
    assert (await t.call("alice", "GET", f"/transcriptions/{root_task}"))[0] == 404
    status, body = await t.call("bob", "POST", "/transcriptions/sync-generate-audio",
                                json={"asset_id": t.asset["bob"], "model": ECHO})
    assert status == 200, body
    bob_sync = body["data"]["task_id"]
    assert (await t.call("alice", "GET", f"/transcriptions/{bob_sync}"))[0] == 404
    assert (await t.call("bob", "GET", f"/transcriptions/{bob_sync}"))[1]["data"]["owner"] == "bob"


async def test_only_the_owner_and_an_admin_cancel_and_delete(tenants, tmp_path):
    """Cancel, DELETE of a task and DELETE of an asset: another key's is 404, with the message of
    an id that does not exist, and stays as it was; the owner's and an admin's go."""
    t = tenants
    a_task, a_asset = t.task["alice"], t.asset["alice"]
    for method, path, msg in (("POST", f"/transcriptions/{a_task}/cancel", f"task {a_task!r} not found"),
                              ("DELETE", f"/transcriptions/{a_task}", f"task {a_task!r} not found"),
                              ("DELETE", f"/{a_asset}", f"asset {a_asset!r} not found")):
        status, body = await t.call("bob", method, path)
        assert (status, body["msg"]) == (404, msg), (method, path, body)
    status, body = await t.call("alice", "GET", f"/transcriptions/{a_task}")
    assert body["data"]["status"] == "completed" and WORD["alice"] in str(body["data"]["result"])
    assert (await t.raw("alice", "GET", f"/{a_asset}/download"))[0] == 200
    assert await t.hits("alice", WORD["alice"]) == [a_task]

    assert (await t.call("alice", "POST", f"/transcriptions/{a_task}/cancel"))[0] == 409  # hers, but finished
    status, body = await t.call("alice", "DELETE", f"/transcriptions/{a_task}")
    assert (status, body["data"]) == (200, {"task_id": a_task, "deleted": True})
    assert (await t.call("root", "GET", f"/transcriptions/{a_task}"))[0] == 404
    assert await t.hits("root", WORD["alice"]) == []
    b_task = t.task["bob"]
    status, body = await t.call("root", "DELETE", f"/transcriptions/{b_task}")  # an admin deletes anyone's
    assert status == 200, body
    assert (await t.call("bob", "GET", f"/transcriptions/{b_task}"))[0] == 404
    new_asset = await t.upload("bob", tmp_path)
    assert (await t.call("alice", "DELETE", f"/{new_asset}"))[0] == 404
    assert (await t.call("bob", "DELETE", f"/{new_asset}"))[1]["data"] == {"asset_id": new_asset, "deleted": True}


async def test_enrolled_speakers_are_their_keys(tenants, tmp_path):
    """An enrolled speaker is its key's: another key does not list, delete or name voices with
    it, nor enrol voices from another key's asset or task; an admin sees and deletes it."""
    t = tenants
    form = aiohttp.FormData()
    form.add_field("name", "Alice")
    voice = espeak(ENROL_LINE, tmp_path / "alice-voice.wav", ALICE)
    form.add_field("file", voice.read_bytes(), filename="alice.wav", content_type="audio/wav")
    status, body = await t.call("alice", "POST", "/speakers", data=form)
    assert status == 200, body
    speaker_id = body["data"]["speaker_id"]
    listed = {who: [s["speaker_id"] for s in (await t.call(who, "GET", "/speakers"))[1]["data"]["items"]]
              for who in ("alice", "bob", "root")}
    assert listed == {"alice": [speaker_id], "bob": [], "root": [speaker_id]}
    status, body = await t.call("bob", "DELETE", f"/speakers/{speaker_id}")
    assert (status, body["msg"]) == (404, f"speaker {speaker_id!r} not found")
    status, body = await t.call("bob", "POST", "/transcriptions/async-generate-audio",
                                json={"asset_id": t.asset["bob"], "model": ECHO, "speaker": True,
                                      "known_speakers": ["Alice"]})
    assert status == 400 and "Alice" in body["msg"], body  # no speaker of his is called Alice
    status, body = await t.call("bob", "POST", "/speakers", json={"name": "Eve", "asset_id": t.asset["alice"]})
    assert status == 400 and body["msg"].startswith("asset_id: no asset"), body
    status, body = await t.call("bob", "POST", "/speakers",
                                json={"name": "Eve", "task_id": t.task["alice"], "speaker": "SPEAKER_00"})
    assert (status, body["msg"]) == (404, f"task {t.task['alice']!r} not found")
    status, body = await t.call("bob", "POST", f"/transcriptions/{t.task['alice']}/speakers",
                                json={"SPEAKER_00": "Eve"})
    assert (status, body["msg"]) == (404, f"task {t.task['alice']!r} not found")
    assert (await t.call("root", "DELETE", f"/speakers/{speaker_id}"))[0] == 200
    assert (await t.call("alice", "GET", "/speakers"))[1]["data"]["items"] == []


async def test_lists_are_the_callers_and_an_admin_filters_by_owner(tenants):
    t = tenants
    a, b = t.task["alice"], t.task["bob"]
    assert await t.listed("alice") == [a]
    assert await t.listed("bob") == [b]
    assert set(await t.listed("root")) == {a, b}
    assert await t.listed("root", owner="alice") == [a]
    assert await t.listed("root", owner="nobody") == []
    assert await t.listed("bob", owner="alice") == []  # another's: nothing (never theirs)
    assert await t.listed("bob", owner="bob") == [b]
    assert await t.listed("alice", status="completed") == [a]


async def test_search_hits_belong_to_their_tasks_owner(tenants):
    t = tenants
    a, b = t.task["alice"], t.task["bob"]
    assert await t.hits("alice", WORD["alice"]) == [a]
    assert await t.hits("bob", WORD["alice"]) == []
    assert await t.hits("bob", WORD["bob"]) == [b]
    assert await t.hits("bob", "hello") == [b]
    assert await t.hits("bob", "hello", task_id=a) == []
    assert sorted(await t.hits("root", "hello")) == sorted([a, b])
    assert await t.hits("root", "hello", owner="alice") == [a]
    assert await t.hits("bob", "hello", owner="alice") == []


async def test_a_key_cannot_report_a_result_for_another_keys_task(start_gateway, tmp_path):
    """/callbacks/local with a key (a worker on another machine reporting): a task of another key
    is unknown (404): neither completed by it, nor a conflict (409) that would tell it exists."""
    t = await keyed_gateway(start_gateway, worker=False)  # nothing runs the task: the callback does
    a = await t.call("alice", "POST", "/transcriptions/async-generate-audio",
                     json={"asset_id": await t.upload("alice", tmp_path), "model": "whisper-1"})
    a = a[1]["data"]["task_id"]
    payload = callback_payload(a, "whisper-1", speaker=False)
    status, body = await t.call("bob", "POST", "/callbacks/local", json=payload)
    assert (status, body["msg"]) == (404, f"no task {a!r} for provider 'local'")
    assert (await t.call("alice", "GET", f"/transcriptions/{a}"))[1]["data"]["status"] == "queued"
    status, body = await t.call("alice", "POST", "/callbacks/local", json=payload)
    assert (status, body["data"]["outcome"]) == (200, "accepted")
    payload["data"]["data"]["data"][0]["text"] = "Something else."
    assert (await t.call("bob", "POST", "/callbacks/local", json=payload))[0] == 404
    assert (await t.call("root", "POST", "/callbacks/local", json=payload))[0] == 409


async def test_openai_requests_are_tasks_of_their_key(tenants, tmp_path):
    t = tenants
    wav = script_wav(tmp_path / "v1.wav", f"Through the other door, the {WORD['alice']} again.")

    async def transcribe(who: str):
        form = aiohttp.FormData()
        form.add_field("file", wav.read_bytes(), filename="v1.wav", content_type="audio/wav")
        form.add_field("model", ECHO)
        async with t.gw.http.post(t.gw.url + "/v1/audio/transcriptions", data=form,
                                  headers={"Authorization": "Bearer " + t.keys[who]}) as resp:
            return resp.status, await resp.json(), resp.headers.get("X-Task-Id")

    status, body, task_id = await transcribe("alice")
    assert status == 200 and WORD["alice"] in body["text"], body
    assert (await t.call("alice", "GET", f"/transcriptions/{task_id}"))[1]["data"]["owner"] == "alice"
    assert (await t.call("bob", "GET", f"/transcriptions/{task_id}"))[0] == 404
    assert task_id in await t.listed("root", owner="alice")
    t.keys["mallory"] = "tgw_" + "x" * 43
    status, body, _ = await transcribe("mallory")
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body


async def test_the_dashboard_shows_each_key_its_own(tenants):
    t = tenants
    a, b = t.task["alice"], t.task["bob"]
    browser = Browserish(t.gw.url)
    try:
        resp = await browser.sign_in(t.keys["alice"], next_="/tasks")  # a database key signs in too
        assert (resp.status, resp.headers["Location"]) == (303, "/tasks")
        status, html, _ = await browser.page("/tasks")
        assert status == 200 and a in html and b not in html
        assert (await browser.page(f"/tasks/{a}"))[0] == 200
        status, html, _ = await browser.page(f"/tasks/{b}")
        assert status == 404 and f"task {b!r} not found".replace("'", "&#39;") in html
        assert (await browser.page(f"/ui/tasks/{b}/audio"))[0] == 404
        assert (await browser.page(f"/ui/tasks/{b}/transcript.srt"))[0] == 404
        assert (await browser.page(f"/ui/tasks/{a}/transcript.srt"))[0] == 200
        status, html, _ = await browser.page(f"/search?q={WORD['bob']}")
        assert status == 200 and b not in html
        status, html, _ = await browser.page("/search?q=hello")
        assert status == 200 and a in html and b not in html
        token = CSRF.search((await browser.page(f"/tasks/{a}"))[1]).group(1)
        assert (await browser.post(f"/tasks/{b}/redeliver", {"csrf_token": token}))[0] == 404
        assert (await browser.post(f"/tasks/{a}/redeliver", {"csrf_token": token}))[0] == 303
        # revoking the key ends its sessions on the next request
        from gateway.keys import revoke

        await revoke(t.gw.app[DB], "alice")
        status, _, resp = await browser.page("/tasks")
        assert status == 303 and resp.headers["Location"].startswith("/?next=")
    finally:
        await browser.close()
    admin = Browserish(t.gw.url)
    try:
        await admin.sign_in(ROOT)
        status, html, _ = await admin.page("/tasks")
        assert status == 200 and a in html and b in html
        assert (await admin.page(f"/tasks/{b}"))[0] == 200
    finally:
        await admin.close()
