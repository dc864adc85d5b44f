"""Remote providers against local servers implementing their documented contracts:
memories.ai (submit, then the result arrives by callback: once, twice, late, never) and an
OpenAI-compatible /v1/audio/transcriptions server (synchronous, run as a job); routing of
model aliases to providers in one deployment."""

from __future__ import annotations

import asyncio
import time

import pytest
from standardwebhooks.webhooks import Webhook

from conftest import ECHO, WEBHOOK_SECRET, count_rows, free_port, webhook_deliveries
from fakes import SEGMENTS, callback_payload, envelope
from test_metrics import scrape, value
from gateway.config import load_config
from gateway.plugins import Plugins
from gateway.providers import ProviderError, Providers


async def memories_gateway(start_gateway, memories, worker: bool = True, **settings):
    port = free_port()
    section = {"base_url": memories.url, "api_key": memories.api_key, "timeout_s": 30, "request_timeout_s": 2}
    section.update(settings)
    return await start_gateway(port=port, worker=worker, server={"public_url": f"http://127.0.0.1:{port}"},
                               providers={"memories": section})


async def submit_remote(gw, speech_wav, webhook=None, model="memories-whisper", **body) -> str:
    if webhook is not None:
        body["callback_url"] = webhook.url
    return await gw.submit(asset_id=await gw.upload(speech_wav), model=model, **body)


def receipts(database_url, task_id, outcome):
    return count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE task_id = :t AND outcome = :o",
                      t=task_id, o=outcome)


# --- memories.ai -------------------------------------------------------------------------


async def test_memories_submits_as_documented_and_completes_on_the_callback(
        start_gateway, memories, webhook, speech_wav, database_url):
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav, webhook, speaker=True)
    done = await gw.wait(task_id, timeout=30)
    assert done["status"] == "completed", done
    assert done["provider"] == "memories" and done["model"] == "memories-whisper"
    assert done["result"]["data"] == SEGMENTS  # speaker labels kept: the task asked for them
    assert done["result"]["usage_metadata"]["model"] == "memories-whisper"

    [upstream] = memories.tasks
    paths = [p for p, _ in memories.requests]
    assert paths == ["/serve/api/v2/upload", "/serve/api/v2/transcriptions/async-generate-audio"]
    assert all(h["Authorization"] == memories.api_key for _, h in memories.requests)  # the raw key
    assert list(memories.uploads.values()) == [speech_wav.read_bytes()]
    assert upstream.body == {"asset_id": next(iter(memories.uploads)), "model": "whisper-1", "speaker": True,
                             "callback_url": f"{gw.url}/serve/api/v2/callbacks/memories"}
    assert upstream.callbacks == [200]
    assert await count_rows(database_url, "SELECT count(*) FROM task WHERE id = :t AND upstream_task_id = :u",
                            t=task_id, u=upstream.task_id) == 1

    [call] = await webhook.wait_for(1)
    payload = Webhook(WEBHOOK_SECRET).verify(call.body, call.headers)
    assert payload["task_id"] == task_id  # ours, not the upstream id
    assert payload["data"]["data"] == done["result"]


async def test_a_duplicate_callback_is_acknowledged_and_changes_nothing(
        start_gateway, memories, webhook, speech_wav, database_url):
    memories.mode = "twice"
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav, webhook)
    assert (await gw.wait(task_id))["status"] == "completed"
    [upstream] = await memories.wait_tasks(1)
    for _ in range(100):
        if len(upstream.callbacks) == 2:
            break
        await asyncio.sleep(0.05)
    assert upstream.callbacks == [200, 200]
    status, body = await memories.send_callback(upstream)  # and a third time, by hand
    assert status == 200 and body["data"] == {"task_id": task_id, "outcome": "duplicate"}
    await webhook.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(webhook.received) == 1
    assert await receipts(database_url, task_id, "accepted") == 1
    assert await receipts(database_url, task_id, "duplicate") == 2
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 1


async def test_late_and_out_of_order_callbacks_each_find_their_task(start_gateway, memories, speech_wav):
    memories.mode = "manual"
    gw = await memories_gateway(start_gateway, memories)
    first = await submit_remote(gw, speech_wav)
    second = await submit_remote(gw, speech_wav, speaker=True)
    up = await memories.wait_tasks(2)
    await asyncio.sleep(1.0)  # late: the tasks wait, processing, for their callbacks
    assert {(await gw.status(t))["status"] for t in (first, second)} == {"processing"}
    by_ours = {first: up[0], second: up[1]} if up[0].body["speaker"] is False else {first: up[1], second: up[0]}

    assert (await memories.send_callback(by_ours[second]))[0] == 200  # the second one first
    assert (await memories.send_callback(by_ours[first]))[0] == 200
    a, b = await gw.wait(first), await gw.wait(second)
    assert a["status"] == b["status"] == "completed"
    assert [s["speaker"] for s in a["result"]["data"]] == [None, None]
    assert [s["speaker"] for s in b["result"]["data"]] == ["SPEAKER_00", "SPEAKER_01"]

    # A failure report after the success is a conflicting repeat: refused, nothing changes.
    status, body = await memories.send_callback(by_ours[first], success=False)
    assert status == 409 and "already has a different result" in body["msg"]
    assert (await gw.status(first))["status"] == "completed"


async def test_a_failure_callback_fails_the_task_with_the_upstream_reason(start_gateway, memories, speech_wav, webhook):
    memories.mode = "manual"
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav, webhook)
    [up] = await memories.wait_tasks(1)
    assert (await memories.send_callback(up, success=False))[0] == 200
    done = await gw.wait(task_id)
    assert done["status"] == "failed" and done["error"] == "upstream engine crashed"
    [call] = await webhook.wait_for(1)
    assert call.json()["code"] == "5001" and call.json()["task_id"] == task_id


async def test_a_callback_that_never_comes_fails_the_task_after_timeout_s(
        start_gateway, memories, speech_wav, webhook, database_url):
    memories.mode = "never"
    gw = await memories_gateway(start_gateway, memories, timeout_s=1.5)
    task_id = await submit_remote(gw, speech_wav, webhook)
    await memories.wait_tasks(1)
    assert (await gw.status(task_id))["status"] == "processing"
    done = await gw.wait(task_id, timeout=30)
    assert done["status"] == "failed"
    assert "no callback from provider 'memories'" in done["error"]
    assert "providers.memories.timeout_s (1.5 s)" in done["error"]
    [call] = await webhook.wait_for(1)
    assert call.json()["data"]["msg"] == done["error"]

    # The callback finally arrives: too late, refused, recorded; the task stays failed.
    status, body = await memories.send_callback(memories.tasks[0])
    assert status == 409
    assert (await gw.status(task_id))["status"] == "failed"
    assert await receipts(database_url, task_id, "conflict") == 1
    assert len(memories.tasks) == 1  # never submitted twice


async def test_a_callback_for_a_task_never_submitted_is_404_and_counted(start_gateway, memories, database_url):
    gw = await memories_gateway(start_gateway, memories)
    before = await scrape(gw)
    status, body = await gw.call("POST", "/callbacks/memories", json=callback_payload("f" * 32, "whisper-1", False))
    assert status == 404 and body["msg"] == f"no task {'f' * 32!r} for provider 'memories'"
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt") == 0  # anyone can send these
    labels = {"provider": "memories", "reason": "unknown_task"}
    after = await scrape(gw)
    assert value(after, "tgw_callbacks_refused_total", **labels) - value(before, "tgw_callbacks_refused_total",
                                                                         **labels) == 1


async def test_an_upstream_400_fails_the_task_with_the_services_message(start_gateway, memories, speech_wav):
    memories.responses = [(400, envelope(None, "400", "unsupported audio format"))]
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav)
    done = await gw.wait(task_id)
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"] == "memories.ai upload: HTTP 400: unsupported audio format"
    assert memories.tasks == []


async def test_an_error_envelope_with_http_200_fails_the_task(start_gateway, memories, speech_wav):
    memories.responses = [None, (200, envelope(None, "1003", "insufficient balance"))]  # upload ok, submit refused
    gw = await memories_gateway(start_gateway, memories)
    done = await gw.wait(await submit_remote(gw, speech_wav))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"] == "memories.ai async-generate-audio: code '1003': insufficient balance"


async def test_upstream_5xx_and_timeouts_are_retried(start_gateway, memories, speech_wav):
    memories.responses = [(503, {"message": "maintenance"}), ("hang", 3)]  # then a timeout (request_timeout_s=2)
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav)
    done = await gw.wait(task_id, timeout=60)
    assert done["status"] == "completed", done
    assert done["attempts"] == 3
    assert len(memories.tasks) == 1


async def test_upstream_errors_past_max_attempts_fail_the_task(start_gateway, memories, speech_wav):
    memories.responses = [(500, "oops")] * 3
    gw = await memories_gateway(start_gateway, memories)
    task_id = await submit_remote(gw, speech_wav)
    done = await gw.wait(task_id, timeout=60)
    assert done["status"] == "failed" and done["attempts"] == 3
    assert done["error"] == "failed after 3 attempts: memories.ai upload: HTTP 500: oops"


async def test_a_url_task_is_passed_to_the_service_without_an_upload(start_gateway, memories):
    gw = await memories_gateway(start_gateway, memories)
    task_id = await gw.submit(url="http://127.0.0.1:9/meeting.wav", model="memories-whisper")
    assert (await gw.wait(task_id))["status"] == "completed"
    [up] = memories.tasks
    assert up.body["url"] == "http://127.0.0.1:9/meeting.wav" and "asset_id" not in up.body
    assert memories.uploads == {}


async def test_signed_callbacks_are_verified_with_the_provider_secret(start_gateway, memories, speech_wav):
    memories.mode = "manual"
    gw = await memories_gateway(start_gateway, memories, secret=WEBHOOK_SECRET)
    task_id = await submit_remote(gw, speech_wav)
    [up] = await memories.wait_tasks(1)
    status, body = await memories.send_callback(up)  # unsigned
    assert status == 401 and "invalid webhook signature" in body["msg"]
    assert (await gw.status(task_id))["status"] == "processing"


# --- OpenAI-compatible -------------------------------------------------------------------


async def openai_gateway(start_gateway, openai_server, **settings):
    section = {"base_url": openai_server.url, "api_key": openai_server.api_key}
    section.update(settings)
    return await start_gateway(providers={"openai": section})


async def test_openai_compatible_server_runs_as_a_job(start_gateway, openai_server, speech_wav, webhook):
    gw = await openai_gateway(start_gateway, openai_server)
    task_id = await submit_remote(gw, speech_wav, webhook, model="openai-whisper", language="en")
    done = await gw.wait(task_id)
    assert done["status"] == "completed" and done["provider"] == "openai"
    assert done["result"]["data"] == [dict(s, speaker=None) for s in SEGMENTS]  # text stripped, no speakers
    assert done["result"]["usage_metadata"] == {"duration": 4.0, "model": "openai-whisper",
                                                "output_tokens": 0, "prompt_tokens": 0}
    [req] = openai_server.requests
    assert req == {"authorization": f"Bearer {openai_server.api_key}", "model": "whisper-1",
                   "response_format": "verbose_json", "language": "en", "timestamp_granularities[]": "segment",
                   "file": speech_wav.stat().st_size}
    [call] = await webhook.wait_for(1)
    assert Webhook(WEBHOOK_SECRET).verify(call.body, call.headers)["task_id"] == task_id


async def test_openai_gets_the_prompt_temperature_and_word_granularity_and_its_words_come_back(
        start_gateway, openai_server, speech_wav):
    from gateway import requests
    from gateway.appkeys import DB, NOTIFIER
    from gateway.notify import task_channel
    from gateway.options import TaskOptions

    gw = await openai_gateway(start_gateway, openai_server)
    task_id = await submit_remote(gw, speech_wav, model="openai-whisper", word_timestamps=True, prompt="Kenobi")
    done = await gw.wait(task_id)
    assert done["status"] == "completed", done
    req = openai_server.requests[-1]
    assert req["prompt"] == "Kenobi" and "temperature" not in req
    assert req["timestamp_granularities[]"] == ["segment", "word"]
    for segment, sent in zip(done["result"]["data"], SEGMENTS, strict=True):
        assert [w["word"] for w in segment["words"]] == sent["text"].split()  # each word in its segment
        assert all(sent["start_time"] <= w["start_time"] <= w["end_time"] <= sent["end_time"]
                   for w in segment["words"])
        assert "avg_logprob" not in segment  # details not asked for

    # the OpenAI API's options (no memories field sets them), as its requests queue them
    task = await requests.create_task(gw.app[DB], requests.GenerateRequest(asset_id=done["asset_id"],
                                                                           model="openai-whisper"),
                                      "openai", TaskOptions(temperature=0.3, details=True))
    gw.app[NOTIFIER].wake(task_channel("openai"))
    detailed = (await gw.wait(task.id))["result"]
    req = openai_server.requests[-1]
    assert req["temperature"] == "0.3" and req["timestamp_granularities[]"] == "segment" and "prompt" not in req
    assert [{k: s[k] for k in ("avg_logprob", "compression_ratio", "no_speech_prob", "temperature", "seek")}
            for s in detailed["data"]] == [{"avg_logprob": -0.2, "compression_ratio": 1.0, "no_speech_prob": 0.01,
                                            "temperature": 0.0, "seek": 0}] * 2
    assert "language" not in detailed  # the server names it ("english"); a code is not guessed
    assert all("words" not in s for s in detailed["data"])


async def test_options_a_provider_cannot_honour_are_refused_naming_them(start_gateway, memories, openai_server,
                                                                         speech_wav):
    port = free_port()
    gw = await start_gateway(port=port, server={"public_url": f"http://127.0.0.1:{port}"}, providers={
        "memories": {"base_url": memories.url, "api_key": memories.api_key},
        "openai": {"base_url": openai_server.url, "api_key": openai_server.api_key}})
    asset_id = await gw.upload(speech_wav)
    for model, provider, field, value in (("memories-whisper", "memories", "word_timestamps", True),
                                          ("memories-whisper", "memories", "prompt", "Kenobi"),
                                          ("memories-whisper", "memories", "hotwords", "Kenobi"),
                                          ("memories-whisper", "memories", "speaker_turns", True),
                                          ("openai-whisper", "openai", "hotwords", "Kenobi")):
        speaker = {"speaker": True} if field == "speaker_turns" else {}
        status, body = await gw.call("POST", "/transcriptions/async-generate-audio",
                                     json={"asset_id": asset_id, "model": model, field: value, **speaker})
        assert (status, body["msg"]) == (400, f"{field}: the provider behind {model!r} ({provider}) does not "
                                              f"support it")
    assert await count_rows(gw.config.database.url, "SELECT count(*) FROM task") == 0
    assert not memories.tasks and not openai_server.requests


@pytest.mark.parametrize("responses, status, attempts, error", [
    ([(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})],
     "failed", 1, "openai transcription: HTTP 401: Incorrect API key provided"),
    ([(500, {"error": {"message": "overloaded"}}), (429, {"error": {"message": "slow down"}})],
     "completed", 3, None),
    ([(200, {"text": "no segments"})], "failed", 1, "openai: the answer is not verbose_json with segments"),
])
async def test_openai_errors_fail_or_retry_as_the_status_warrants(
        start_gateway, openai_server, speech_wav, responses, status, attempts, error):
    openai_server.responses = list(responses)
    gw = await openai_gateway(start_gateway, openai_server)
    done = await gw.wait(await submit_remote(gw, speech_wav, model="openai-whisper"), timeout=60)
    assert (done["status"], done["attempts"]) == (status, attempts), done
    if error:
        assert done["error"].startswith(error)


async def test_task_retry_delays_are_capped(start_gateway, openai_server, speech_wav):
    openai_server.responses = [(500, {"error": {"message": "overloaded"}})] * 3
    gw = await start_gateway(providers={"openai": {"base_url": openai_server.url, "api_key": openai_server.api_key}},
                             jobs={"max_attempts": 4, "retry_backoff_s": 8, "retry_backoff_max_s": 0.3})
    t0 = time.monotonic()
    done = await gw.wait(await submit_remote(gw, speech_wav, model="openai-whisper"), timeout=60)
    assert (done["status"], done["attempts"]) == ("completed", 4), done
    assert time.monotonic() - t0 < 12  # 3 retries of at most 0.3 s, not 4 + 8 + 16 s (the uncapped minimum)


# --- routing and configuration -----------------------------------------------------------


async def test_one_deployment_routes_each_alias_to_its_provider(
        start_gateway, memories, openai_server, speech_wav, webhook):
    port = free_port()
    gw = await start_gateway(port=port, server={"public_url": f"http://127.0.0.1:{port}"}, providers={
        "memories": {"base_url": memories.url, "api_key": memories.api_key},
        "openai": {"base_url": openai_server.url, "api_key": openai_server.api_key, "models": {"gpt-4o-transcribe": "x"}},
    })
    asset = await gw.upload(speech_wav)
    ids = {model: await gw.submit(asset_id=asset, model=model, callback_url=webhook.url)
           for model in (ECHO, "memories-whisper", "gpt-4o-transcribe")}
    for model, provider in ((ECHO, "echo"), ("memories-whisper", "memories"), ("gpt-4o-transcribe", "openai")):
        done = await gw.wait(ids[model], timeout=120)
        assert (done["status"], done["provider"], done["model"]) == ("completed", provider, model)
        assert [d["status"] for d in webhook_deliveries(done)] in (["pending"], ["delivered"])
    status, body = await gw.call("POST", "/transcriptions/async-generate-audio", json={"asset_id": asset, "model": "nope"})
    assert status == 400
    assert body["msg"] == ("model: unknown model 'nope'; valid models: echo, gpt-4o-transcribe, memories-whisper, "
                           "whisper-1")
    status, body = await gw.call("POST", "/callbacks/openai-nope", json={})
    assert status == 404


def providers(**environ):
    cfg = load_config(None, environ=environ)
    return Providers(cfg, Plugins([], {}))


@pytest.mark.parametrize("environ, message", [
    ({"TGW_PROVIDERS__MEMORIES__API_KEY": "k"}, "providers.memories: server.public_url must be set"),
    ({"TGW_PROVIDERS__MEMORIES": '{"base_url": "http://x"}', "TGW_SERVER__PUBLIC_URL": "http://gw"},
     "providers.memories.api_key: is required"),
    ({"TGW_PROVIDERS__OPENAI__BOGUS": "1"}, "providers.openai.bogus: unknown key"),
    ({"TGW_PROVIDERS__OPENAI__BASE_URL": "ftp://x"}, "providers.openai.base_url: Value error, must be an http"),
    ({"TGW_PROVIDERS__OPENAI__TIMEOUT_S": "5"}, "providers.openai.timeout_s: unknown key"),
    ({"TGW_PROVIDERS__OPENAI__REQUEST_TIMEOUT_S": "-1"}, "providers.openai.request_timeout_s: Input should be greater than 0"),
    ({"TGW_PROVIDERS__OPENAI__SECRET": "plain"}, "providers.openai.secret: Value error, must start with 'whsec_'"),
    ({"TGW_PROVIDERS__OPENAI__MODELS": '{"whisper-1": "whisper-1"}'},
     "providers.openai.models: alias 'whisper-1' is already served by provider 'local'"),
    ({"TGW_PROVIDERS__NOPE__API_KEY": "k"}, "providers.nope: no provider named 'nope' is registered"),
])
def test_bad_provider_sections_name_the_key(environ, message):
    with pytest.raises(ProviderError) as err:
        providers(**environ)
    assert message in str(err.value)


def test_providers_are_registered_through_the_plugin_hook():
    from gateway.hookspecs import hookimpl
    from gateway.providers import Provider

    class Echo(Provider):
        pass

    class EchoPlugin:
        @hookimpl
        def register_providers(register):
            register("echo", Echo)

    plugins = Plugins([], {})
    plugins.register(EchoPlugin, name="echo-plugin")
    cfg = load_config(None, environ={"TGW_PROVIDERS__ECHO": '{"secret": ""}'})
    assert sorted(Providers(cfg, plugins).names()) == ["echo", "local"]
    assert plugins.names() == ["echo-plugin"]  # the built-in providers are not listed as plugins
    assert Providers(load_config(None, environ={}), plugins).names() == ["local"]


def test_serve_refuses_to_start_on_a_bad_provider_section(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "g.toml"
    path.write_text('[providers.openai]\nbase_url = "http://x"\nmodel = "whisper-1"\n')
    for command in (["serve"], ["worker"]):
        proc = subprocess.run([sys.executable, "-m", "gateway", *command, "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines() == ["Error: providers.openai.model: unknown key"]



def test_shipped_gateway_toml_documents_every_provider_key():
    from pathlib import Path

    from gateway.providers.memories import MemoriesSettings
    from gateway.providers.openai import OpenAISettings

    text = (Path(__file__).resolve().parent.parent / "config" / "gateway.toml").read_text()
    for name, settings in (("memories", MemoriesSettings), ("openai", OpenAISettings)):
        section = text[text.index(f"# [providers.{name}]"):]
        for key in settings.model_fields:
            assert f"\n# {key} = " in section, f"providers.{name}.{key} is missing from config/gateway.toml"


async def test_memories_calls_back_without_our_api_key(start_gateway, memories, speech_wav, tmp_path, database_url):
    import aiohttp

    from conftest import Gateway, test_config

    port = free_port()
    cfg = test_config(tmp_path, database_url, server={"public_url": f"http://127.0.0.1:{port}", "api_keys": ["k-1"]},
                      providers={"memories": {"base_url": memories.url, "api_key": memories.api_key}})
    gw = await start_gateway(config=cfg, port=port)
    async with aiohttp.ClientSession(headers={"Authorization": "k-1"}) as http:
        client = Gateway(url=gw.url, config=cfg, http=http)
        task_id = await submit_remote(client, speech_wav)
        assert (await client.wait(task_id))["status"] == "completed"
    assert memories.tasks[0].callbacks == [200]  # the fake sends no Authorization header
    status, _ = await gw.call("POST", "/callbacks/local", json={})
    assert status == 401  # local still needs the key


async def test_a_callback_overtaking_the_stored_submission_still_finds_its_task(start_gateway, memories, speech_wav):
    """The service may call back before the gateway has stored the upstream id it just got."""
    memories.delay_s = 0  # the callback leaves together with the submission's answer
    gw = await memories_gateway(start_gateway, memories)
    asset = await gw.upload(speech_wav)
    ids = [await gw.submit(asset_id=asset, model="memories-whisper") for _ in range(5)]
    for task_id in ids:
        assert (await gw.wait(task_id))["status"] == "completed"
    assert [t.callbacks for t in memories.tasks] == [[200]] * 5


async def test_an_unknown_callback_id_waits_only_while_a_submission_can_match(
        start_gateway, memories, speech_wav, database_url):
    """A callback for an upstream id we do not know may be overtaking the storing of a submission's
    answer only while the request that creates an upstream job is in flight: not while a file is
    being uploaded first (a random id held its request 5 s then), nor once the id is stored."""
    from gateway.appkeys import DB
    from gateway.callbacks import submission_in_flight

    upload, generate = asyncio.Event(), asyncio.Event()
    memories.gates, memories.mode = {"upload": upload, "async-generate-audio": generate}, "manual"
    gw = await memories_gateway(start_gateway, memories, request_timeout_s=60)
    task_id = await submit_remote(gw, speech_wav)
    while not memories.requests:  # the upload is being received
        await asyncio.sleep(0.05)
    assert (await gw.status(task_id))["status"] == "processing"
    assert not await submission_in_flight(gw.app[DB], "memories")
    status, body = await gw.call("POST", "/callbacks/memories", json=callback_payload("f" * 32, "whisper-1", False))
    assert status == 404, body

    upload.set()
    while len(memories.requests) < 2:  # async-generate-audio is being received
        await asyncio.sleep(0.05)
    assert await submission_in_flight(gw.app[DB], "memories")
    generate.set()
    [upstream] = await memories.wait_tasks(1)
    while not await count_rows(database_url, "SELECT count(*) FROM task WHERE upstream_task_id = :u",
                               u=upstream.task_id):
        await asyncio.sleep(0.05)
    assert not await submission_in_flight(gw.app[DB], "memories")
    status, _ = await memories.send_callback(upstream)
    assert status == 200 and (await gw.wait(task_id))["status"] == "completed"
