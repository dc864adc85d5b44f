"""Client-supplied URLs (`url` and `callback_url`) are held to one policy (gateway/urls.py): only
globally routable addresses (IPv4 inside IPv6 forms unwrapped), unless server.allow_private_urls
or allow_private_hosts say otherwise, and only the hosts of server.url_allow_hosts when it is
set; checked at submission and again on every connection. Operator-configured webhooks.urls
stay trusted.

No test here connects to a non-loopback address: refusals are asserted on IP literals (no
look-up) or on names the allow list refuses before any look-up, and the suite runs in a
network namespace where nothing beyond loopback exists (tests/netns.py), so a check that let
one through could still not leave the machine.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from conftest import ECHO, test_config
from fakes import one_route_server
from gateway.config import ConfigError
from gateway.urls import UrlError, UrlPolicy, host_of, non_public, redact

pytestmark = pytest.mark.needs_netns

GENERATE = "/transcriptions/async-generate-audio"
STRICT = {"allow_private_urls": False, "allow_private_hosts": []}
REFUSE = "; set server.allow_private_urls to allow it"

NOT_PUBLIC = {  # address -> how a refusal names it
    "100.64.0.1": "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.100.100.200": "100.100.100.200",  # a cloud metadata service
    "169.254.169.254": "169.254.169.254",
    "224.0.0.1": "224.0.0.1",  # multicast
    "240.0.0.1": "240.0.0.1",
    "2002:7f00:1::": "2002:7f00:1::, which embeds 127.0.0.1",  # 6to4
    "2002:a9fe:a9fe::": "2002:a9fe:a9fe::, which embeds 169.254.169.254",
    "fec0::1": "fec0::1",  # site-local
    "64:ff9b::7f00:1": "64:ff9b::7f00:1, which embeds 127.0.0.1",  # NAT64
    "64:ff9b:1::a": "64:ff9b:1::a",  # local-use NAT64
    "::ffff:10.0.0.1": "::ffff:10.0.0.1, which embeds 10.0.0.1",
    "::127.0.0.1": "::127.0.0.1, which embeds 127.0.0.1",  # IPv4-compatible
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "2001:0:4136:e378:8000:63bf:80ff:fffe, which embeds 127.0.0.1",  # Teredo
    "ff0e::1": "ff0e::1",  # global-scope multicast
    "fd00::1": "fd00::1",
    "fe80::1%eth0": "fe80::1%eth0",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::", "64:ff9b::808:808"]


@pytest.mark.parametrize("addr", NOT_PUBLIC)
def test_non_public_addresses_are_named(addr):
    assert non_public(addr) == NOT_PUBLIC[addr]


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr):
    assert non_public(addr) is None


def literal(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


async def test_url_and_callback_url_are_refused_alike_and_nothing_is_stored(start_gateway, speech_wav):
    gw = await start_gateway(server=STRICT)
    asset = await gw.upload(speech_wav)
    for addr, shown in NOT_PUBLIC.items():
        if "%" in addr:
            continue  # a zone id is not valid in a URL's host
        url = f"http://{literal(addr)}:8080/latest/meta-data/"
        host = host_of(url)
        for body, field in (({"url": url}, "url"), ({"asset_id": asset, "callback_url": url}, "callback_url")):
            status, answer = await gw.call("POST", GENERATE, json=body)
            assert (status, answer["msg"]) == (
                400, f"{field}: host {host!r} resolves to a non-public address ({shown}){REFUSE}"), body
    status, page = await gw.call("GET", "/transcriptions")
    assert page["data"]["items"] == []


async def test_connections_are_checked_again_when_made():
    """The checked client refuses at connect time what submission would have refused (a redirect,
    a DNS answer that changed, an IP literal), before a connection exists."""
    seen = []

    async def ok(request):
        seen.append(request)
        return web.Response(text="ok")

    async with one_route_server(ok, "/", method="GET") as loopback:
        cases = {
            UrlPolicy(): f"host '127.0.0.1' resolves to a non-public address (127.0.0.1){REFUSE}",
            UrlPolicy(private_hosts=frozenset({"localhost"})): "host '127.0.0.1' resolves to a non-public",
            UrlPolicy(allow_private=True, allow_hosts=("localhost",)): "host '127.0.0.1' is not in server.url_allow_hosts",
        }
        for policy, refusal in cases.items():
            async with policy.session() as http:
                with pytest.raises(UrlError) as err:
                    await http.get(loopback)
                assert str(err.value).startswith(refusal)
        async with UrlPolicy(private_hosts=frozenset({"localhost"})).session() as http:
            async with http.get(loopback.replace("127.0.0.1", "localhost")) as resp:
                assert resp.status == 200  # the name the operator allowed
        assert len(seen) == 1


async def test_url_allow_hosts_refuses_other_hosts_before_any_look_up(start_gateway, speech_wav):
    gw = await start_gateway(server={"url_allow_hosts": ["Media.Example.com.", "*.hooks.example.com"],
                                     "allow_private_urls": True})
    asset = await gw.upload(speech_wav)
    refused = {
        "http://other.example.com/a.wav": "other.example.com",
        "http://hooks.example.com/a.wav": "hooks.example.com",  # *.domain is what is under it
        "http://evilhooks.example.com/a.wav": "evilhooks.example.com",
        "http://media.example.com.evil.test/a.wav": "media.example.com.evil.test",
        "http://127.0.0.1:9/a.wav": "127.0.0.1",  # private addresses allowed, but not named
        "http://[::1]:9/a.wav": "::1",
    }
    for url, host in refused.items():
        for body, field in (({"url": url}, "url"), ({"asset_id": asset, "callback_url": url}, "callback_url")):
            status, answer = await gw.call("POST", GENERATE, json=body)
            assert (status, answer["msg"]) == (400, f"{field}: host {host!r} is not in server.url_allow_hosts")
    status, page = await gw.call("GET", "/transcriptions")
    assert page["data"]["items"] == []


@pytest.mark.parametrize("pattern", ["http://a.example.com", "a.example.com:80", "*", "*.", "a.*.example.com",
                                     "a.example.com/path", "user@a.example.com", "a b"])
def test_a_bad_allow_list_entry_stops_start_up_naming_the_key(tmp_path, pattern):
    with pytest.raises(ConfigError) as err:
        test_config(tmp_path, "sqlite:///x.db", server={"url_allow_hosts": [pattern]})
    assert "server.url_allow_hosts" in str(err.value) and "not a host name or *.domain" in str(err.value)


def test_allow_list_entries_are_normalised(tmp_path):
    cfg = test_config(tmp_path, "sqlite:///x.db", server={"url_allow_hosts": ["Media.Example.COM.", "*.Büro.de", "::1"]})
    assert cfg.server.url_allow_hosts == ["media.example.com", "*.xn--bro-hoa.de", "::1"]


async def test_an_allowed_host_works_and_its_redirects_are_held_to_the_list(start_gateway, media_server):
    gw = await start_gateway(server={"url_allow_hosts": ["localhost"], "allow_private_hosts": ["localhost"]})
    loopback = media_server("/speech.wav")
    named = loopback.replace("127.0.0.1", "localhost")
    ok = await gw.wait(await gw.submit(url=named, model=ECHO))
    assert ok["status"] == "completed", ok
    bad = await gw.wait(await gw.submit(url=named.replace("/speech.wav", "/redirect?to=" + loopback), model=ECHO))
    assert bad["status"] == "failed" and bad["error"] == (
        f"could not fetch url: redirect to {loopback} refused: host '127.0.0.1' is not in server.url_allow_hosts"), bad


def callback_body(task_id: str) -> dict:
    return {"code": "0000", "message": "SUCCESS", "task_id": task_id,
            "data": {"msg": "transcription completed", "success": True, "data": {
                "data": [{"start_time": 0.0, "end_time": 1.0, "text": "Hello.", "speaker": None}],
                "usage_metadata": {"duration": 1.0, "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0}}}}


async def test_callback_url_is_checked_again_before_each_attempt(start_gateway, speech_wav, webhook, second_webhook):
    """A task accepted under a looser policy is not delivered to a callback_url the policy in
    force refuses: the delivery is dead at once, its error names the refusal (not whether a port
    is open), the receiver sees nothing; the operator's webhooks.urls on loopback are still served."""
    hooks = {"urls": [second_webhook.url]}
    loose = await start_gateway(worker=False, webhooks=hooks)  # 127.0.0.1 allowed by name
    task_id = await loose.submit(asset_id=await loose.upload(speech_wav), callback_url=webhook.url)
    status, _ = await loose.call("POST", "/callbacks/local", json=callback_body(task_id))
    assert status == 200

    strict = await start_gateway(server=STRICT, webhooks=hooks)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        deliveries = {d["target"]: d for d in (await strict.status(task_id))["deliveries"] if d["kind"] == "webhook"}
        if all(d["status"] != "pending" for d in deliveries.values()):
            break
        assert asyncio.get_running_loop().time() < deadline, deliveries
        await asyncio.sleep(0.1)
    refused = deliveries[webhook.url]
    assert (refused["status"], refused["attempts"], refused["last_status_code"]) == ("dead", 1, None)
    assert refused["last_error"] == (f"callback_url refused: host '127.0.0.1' resolves to a non-public "
                                     f"address (127.0.0.1){REFUSE}")
    assert webhook.received == []
    assert deliveries[second_webhook.url]["status"] == "delivered" and len(second_webhook.received) == 1


def test_credentials_in_urls_are_redacted():
    assert redact("https://user:secret@media.example.com:8443/a.wav?x=1") == "https://***@media.example.com:8443/a.wav?x=1"
    assert redact("https://token@hooks.example.com/h") == "https://***@hooks.example.com/h"
    assert redact("https://media.example.com/a@b.wav") == "https://media.example.com/a@b.wav"
    assert redact(None) is None


async def test_credentials_in_client_urls_are_in_no_view_error_or_log(start_gateway, media_server, webhook):
    """A url and a callback_url with a user and password work (they are sent as the client gave
    them), but no task view, delivery, error message or log line shows the password."""
    from structlog.testing import capture_logs

    gw = await start_gateway(jobs={"max_attempts": 2, "retry_backoff_s": 0.1, "poll_s": 0.2, "lease_s": 5})
    media = media_server("/speech.wav").replace("http://", "http://alice:s3cret-m@")
    hook = webhook.url.replace("http://", "http://bob:s3cret-h@")
    with capture_logs() as logs:
        task_id = await gw.submit(url=media, callback_url=hook, model=ECHO)
        done = await gw.wait(task_id)
        await webhook.wait_for(1)
        broken_id = await gw.submit(url=media.replace("/speech.wav", "/broken.wav"), model=ECHO)
        failed = await gw.wait(broken_id)
        for _ in range(100):
            deliveries = (await gw.status(task_id))["deliveries"]
            if all(d["status"] == "delivered" for d in deliveries):
                break
            await asyncio.sleep(0.1)
    assert done["status"] == "completed" and done["url"] == media.replace("alice:s3cret-m@", "***@")
    assert failed["status"] == "failed" and failed["error"] == "failed after 2 attempts: could not fetch url: HTTP 503"
    shown = [d["target"] for d in deliveries if d["kind"] == "webhook"]
    assert shown == [hook.replace("bob:s3cret-h@", "***@")]
    status, body = await gw.call("POST", f"/transcriptions/{task_id}/redeliver", params={"target": shown[0]})
    assert status == 200, body  # the target as views show it names the delivery
    status, page = await gw.call("GET", "/transcriptions")
    assert any(e["event"] == "delivery.attempt" and e["target"] == shown[0] for e in logs), logs
    everything = repr(logs) + repr(page) + repr(await gw.status(task_id)) + repr(await gw.status(broken_id))
    assert "s3cret" not in everything
    assert "Basic" in webhook.received[0].headers.get("Authorization", "")  # the credentials were used
