"""POST /callbacks/{provider}: the one idempotent door, keyed on task_id.

The gateway under test runs without its worker, so tasks stay queued until a callback
completes them; a second gateway on the same database (with a worker) sends the deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from datetime import datetime, timezone

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import WEBHOOK_SECRET, count_rows
from test_metrics import scrape, value


def refusals(after: dict, before: dict, reason: str, provider: str = "local") -> float:
    labels = {"provider": provider, "reason": reason}
    return value(after, "tgw_callbacks_refused_total", **labels) - value(before, "tgw_callbacks_refused_total",
                                                                          **labels)


def success(task_id: str, *segments: tuple, duration: float = 4.0) -> dict:
    return {
        "code": "0000", "message": "SUCCESS", "task_id": task_id,
        "data": {"msg": "transcription completed", "success": True, "data": {
            "data": [{"start_time": a, "end_time": b, "text": t, "speaker": None} for a, b, t in segments],
            "usage_metadata": {"duration": duration, "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0},
        }},
    }


def failure(task_id: str, reason: str = "upstream broke") -> dict:
    return {"code": "5000", "message": "FAILED", "task_id": task_id,
            "data": {"data": None, "msg": reason, "success": False}}


HELLO = success("", (0.0, 1.5, "Hello there."), (1.5, 3.0, "General Kenobi."))


def for_task(payload: dict, task_id: str) -> dict:
    p = copy.deepcopy(payload)
    p["task_id"] = task_id
    return p


@pytest.fixture
async def api_only(start_gateway, speech_wav, webhook):
    gw = await start_gateway(worker=False, webhooks={"urls": [webhook.url]})
    gw.asset_id = await gw.upload(speech_wav)
    return gw


async def new_task(gw) -> str:
    return await gw.submit(asset_id=gw.asset_id)


async def post(gw, body, provider="local", **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await gw.call("POST", f"/callbacks/{provider}", data=data,
                         headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw)


async def test_100_concurrent_identical_callbacks_store_one_result(api_only, start_gateway, webhook, database_url):
    gw = api_only
    task_id = await new_task(gw)
    body = json.dumps(for_task(HELLO, task_id))
    answers = await asyncio.gather(*(post(gw, body) for _ in range(100)))
    assert {status for status, _ in answers} == {200}
    outcomes = [b["data"]["outcome"] for _, b in answers]
    assert outcomes.count("accepted") == 1 and outcomes.count("duplicate") == 99
    assert all(b["data"]["task_id"] == task_id for _, b in answers)

    task = await gw.status(task_id)
    assert task["status"] == "completed"
    assert [s["text"] for s in task["result"]["data"]] == ["Hello there.", "General Kenobi."]
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 1
    assert await count_rows(database_url, "SELECT count(*) FROM transcript WHERE segment_count = 2") == 1
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE kind = 'webhook'") == 1
    assert await count_rows(database_url, "SELECT count(*) FROM delivery WHERE kind = 'plugin'") == 2  # srt, search
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE outcome = 'duplicate'") == 99

    await start_gateway(config=gw.config)  # a worker on the same database sends the one delivery
    [call] = await webhook.wait_for(1)
    await asyncio.sleep(1.0)
    assert len(webhook.received) == 1
    payload = Webhook(WEBHOOK_SECRET).verify(call.body, call.headers)
    assert payload["task_id"] == task_id and payload["data"]["data"] == task["result"]


async def test_conflicting_repeat_is_refused_and_changes_nothing(api_only, database_url):
    task_id = await new_task(api_only)
    status, _ = await post(api_only, for_task(HELLO, task_id))
    assert status == 200
    before = await api_only.status(task_id)
    other = for_task(success("", (0.0, 1.0, "Something else entirely.")), task_id)
    status, body = await post(api_only, other)
    assert status == 409 and body["code"] == "409"
    assert body["msg"] == f"task {task_id} already has a different result; nothing changed"
    after = await api_only.status(task_id)
    assert after["result"] == before["result"] and after["status"] == "completed"
    # a failure after a success is a conflicting result too
    status, _ = await post(api_only, failure(task_id))
    assert status == 409
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE outcome = 'conflict'") == 2


async def test_unknown_task_and_unknown_provider_are_404(api_only, database_url):
    before = await scrape(api_only)
    status, body = await post(api_only, for_task(HELLO, "f" * 32))
    assert status == 404 and body["msg"] == f"no task '{'f' * 32}' for provider 'local'"
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt") == 0  # counted, not stored
    assert refusals(await scrape(api_only), before, "unknown_task") == 1
    status, body = await post(api_only, for_task(HELLO, "f" * 32), provider="nope")
    assert status == 404 and body["msg"] == "unknown provider 'nope'"


def _first(payload: dict) -> dict:
    return payload["data"]["data"]["data"][0]


def _drop(path: list, payload: dict) -> dict:
    node = payload
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return payload


@pytest.mark.parametrize("mutate, field", [
    (lambda p: _drop(["data", "data", "data", 0, "start_time"], p), "data.data.data[0].start_time: is required"),
    (lambda p: _drop(["task_id"], p), "task_id: is required"),
    (lambda p: p["data"]["data"]["data"][1].update(start_time=2.9, end_time=1.0) or p,
     "data.data.data[1]: Value error, end_time is before start_time"),
    (lambda p: p["data"]["data"]["data"][0].update(start_time="soon") or p, "data.data.data[0].start_time:"),
    (lambda p: p["data"]["data"]["data"][0].update(start_time="0") or p,  # strict, as generate requests
     "data.data.data[0].start_time: Input should be a valid number"),
    (lambda p: p["data"].update(success="true") or p, "data.success: Input should be a valid boolean"),
    (lambda p: p["data"]["data"]["data"][0].update(end_time=-1) or p, "data.data.data[0].end_time:"),
    (lambda p: p["data"]["data"]["usage_metadata"].update(duration="NaN") or p, "data.data.usage_metadata.duration:"),
    (lambda p: p["data"].update(success=False) or p, "Value error, code and data.success disagree"),
    (lambda p: p["data"].update(data=None) or p, "data.data is required when the task succeeded"),
    (lambda p: [], "body must be a JSON object"),
    (lambda p: _first(p).update(words=[{"word": "Hello", "start_time": 0.0, "end_time": 0.5},
                                       {"word": "there.", "start_time": 0.9, "end_time": 0.6}]) or p,
     "data.data.data[0].words[1]: Value error, end_time is before start_time"),
    (lambda p: _first(p).update(words=[{"word": 7, "start_time": 0.0, "end_time": 0.5}]) or p,
     "data.data.data[0].words[0].word: Input should be a valid string"),
    (lambda p: _first(p).update(words=[{"word": "Hello", "start_time": "0"}]) or p,
     "data.data.data[0].words[0].start_time: Input should be a valid number"),
    (lambda p: _first(p).update(words="Hello there.") or p, "data.data.data[0].words: Input should be a valid list"),
    (lambda p: _first(p).update(tokens=[50364, -1]) or p,
     "data.data.data[0].tokens[1]: Input should be greater than or equal to 0"),
    (lambda p: _first(p).update(no_speech_prob=2) or p,
     "data.data.data[0].no_speech_prob: Input should be less than or equal to 1"),
    (lambda p: _first(p).update(seek=1.5) or p, "data.data.data[0].seek: Input should be a valid integer"),
    (lambda p: p["data"]["data"].update(language="x" * 17) or p,
     "data.data.language: String should have at most 16 characters"),
    (lambda p: p["data"]["data"].update(turns=[{"start_time": 0.0, "end_time": 1.0, "speaker": "SPEAKER_00"},
                                               {"start_time": 2.0, "end_time": 1.5, "speaker": "SPEAKER_01"}]) or p,
     "data.data.turns[1]: Value error, end_time is before start_time"),
    (lambda p: p["data"]["data"].update(turns=[{"start_time": 0.0, "end_time": 1.0, "speaker": 1}]) or p,
     "data.data.turns[0].speaker: Input should be a valid string"),
    (lambda p: p["data"]["data"].update(turns=[{"start_time": 0.0, "end_time": 1.0}]) or p,
     "data.data.turns[0].speaker: is required"),
    (lambda p: p["data"]["data"].update(turns={"SPEAKER_00": [0, 1]}) or p,
     "data.data.turns: Input should be a valid list"),
])
async def test_malformed_callback_is_400_naming_the_field(api_only, mutate, field, database_url):
    task_id = await new_task(api_only)
    status, body = await post(api_only, mutate(for_task(HELLO, task_id)))
    assert status == 400, body
    assert field in body["msg"], body["msg"]
    assert (await api_only.status(task_id))["status"] == "queued"
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt") == 0


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe", b"null"])
async def test_non_json_callback_is_400(api_only, raw):
    status, body = await post(api_only, raw)
    assert status == 400 and body["data"] is None and body["failed"] is True


async def test_inbound_segments_are_normalised(api_only):
    task_id = await new_task(api_only)
    messy = for_task(success("", (2.0, 4.4, "  second  "), (0.0, 2.0, "\tfirst"), (3.0, 3.5, "   "),
                             duration=4.0), task_id)
    status, _ = await post(api_only, messy)
    assert status == 200
    result = (await api_only.status(task_id))["result"]
    assert result["data"] == [
        {"start_time": 0.0, "end_time": 2.0, "text": "first", "speaker": None},
        {"start_time": 2.0, "end_time": 4.0, "text": "second", "speaker": None},
    ]


async def test_words_and_details_from_a_remote_are_kept_for_a_task_that_asked(api_only):
    """A remote worker's (or a provider's) words and decoder figures reach a task that asked for
    them, normalised as the engine's are; a task that did not ask gets the payload as before."""
    from gateway import requests
    from gateway.appkeys import DB
    from gateway.options import TaskOptions

    asked = await requests.create_task(api_only.app[DB], requests.GenerateRequest(asset_id=api_only.asset_id),
                                       "local", TaskOptions(word_timestamps=True, details=True))
    plain = await new_task(api_only)
    figures = {"avg_logprob": -0.25, "compression_ratio": 1.2, "no_speech_prob": 0.01, "temperature": 0.0,
               "tokens": [50364, 2425, 456], "seek": 0}
    words = [{"word": " Hello", "start_time": 0.0, "end_time": 0.6}, {"word": " ", "start_time": 0.6, "end_time": 0.7},
             {"word": " there.", "start_time": 0.7, "end_time": 1.9}]  # the last ends after its segment
    payload = success("", (0.0, 1.5, "Hello there."), (1.5, 3.0, "General Kenobi."))
    _first(payload).update(words=words, **figures)
    payload["data"]["data"]["language"] = "en"
    for task_id in (asked.id, plain):
        status, body = await post(api_only, for_task(payload, task_id))
        assert status == 200 and body["data"]["outcome"] == "accepted", body

    result = (await api_only.status(asked.id))["result"]
    assert result["language"] == "en"
    assert result["data"][0] == {"start_time": 0.0, "end_time": 1.5, "text": "Hello there.", "speaker": None,
                                 "words": [{"word": "Hello", "start_time": 0.0, "end_time": 0.6},
                                           {"word": "there.", "start_time": 0.7, "end_time": 1.5}], **figures}
    assert result["data"][1] == {"start_time": 1.5, "end_time": 3.0, "text": "General Kenobi.", "speaker": None,
                                 "words": []}  # a segment without words or figures: none
    assert (await api_only.status(plain))["result"] == for_task(HELLO, plain)["data"]["data"]


async def test_speaker_turns_from_a_remote_are_kept_normalised_for_a_task_that_asked(api_only):
    """A remote worker's speaker turns reach a speaker=true task that asked for them, in the
    payload's shape (times clamped to the duration, rounded to ms, in time order, empty ones
    dropped); a speaker=true task that did not ask, and a plain one, get the payload as before."""
    from gateway import requests
    from gateway.appkeys import DB
    from gateway.options import TaskOptions

    db = api_only.app[DB]
    labelled = requests.GenerateRequest(asset_id=api_only.asset_id, speaker=True)
    asked = await requests.create_task(db, labelled, "local", TaskOptions(speaker_turns=True))
    unasked = await requests.create_task(db, labelled, "local")
    plain = await requests.create_task(db, requests.GenerateRequest(asset_id=api_only.asset_id), "local",
                                       TaskOptions(speaker_turns=True))  # as if stored so: still no speakers
    payload = success("", (0.0, 1.5, "Hello there."), (1.5, 3.0, "General Kenobi."))
    for seg, who in zip(payload["data"]["data"]["data"], ("SPEAKER_00", "SPEAKER_01")):
        seg["speaker"] = who
    payload["data"]["data"]["turns"] = [
        {"start_time": 1.4, "end_time": 3.00049, "speaker": "SPEAKER_01"},
        {"start_time": 0.0, "end_time": 1.4, "speaker": "SPEAKER_00"},
        {"start_time": 3.2, "end_time": 3.2, "speaker": "SPEAKER_00"},      # no length: dropped
        {"start_time": 3.5, "end_time": 9.0, "speaker": "SPEAKER_02"},      # past the end: clamped
        {"start_time": 5.0, "end_time": 6.0, "speaker": "SPEAKER_02"},      # wholly past it: dropped
    ]
    for task in (asked, unasked, plain):
        status, body = await post(api_only, for_task(payload, task.id))
        assert status == 200 and body["data"]["outcome"] == "accepted", body

    result = (await api_only.status(asked.id))["result"]
    assert result["turns"] == [{"start_time": 0.0, "end_time": 1.4, "speaker": "SPEAKER_00"},
                               {"start_time": 1.4, "end_time": 3.0, "speaker": "SPEAKER_01"},
                               {"start_time": 3.5, "end_time": 4.0, "speaker": "SPEAKER_02"}]
    assert [s["speaker"] for s in result["data"]] == ["SPEAKER_00", "SPEAKER_01"]
    assert set((await api_only.status(unasked.id))["result"]) == {"data", "usage_metadata"}
    assert (await api_only.status(plain.id))["result"] == for_task(HELLO, plain.id)["data"]["data"]


async def test_a_known_speakers_longest_name_is_accepted_back_at_the_door(api_only):
    """A speaker's name may be 64 characters (known_speakers.MAX_NAME): a result carrying one,
    as the engine or a rename stores it, is accepted from a remote worker too; a longer one is
    refused, naming the field."""
    from gateway import requests
    from gateway.appkeys import DB
    from gateway.known_speakers import MAX_NAME
    from gateway.options import TaskOptions

    name = "Dr. Alexandra Konstantinidou-Papadopoulou, Head of Research (UK)"
    assert len(name) == MAX_NAME == 64
    task = await requests.create_task(api_only.app[DB], requests.GenerateRequest(asset_id=api_only.asset_id,
                                                                                 speaker=True),
                                      "local", TaskOptions(speaker_turns=True))
    payload = success("", (0.0, 1.5, "Hello there."))
    _first(payload)["speaker"] = name
    payload["data"]["data"]["turns"] = [{"start_time": 0.0, "end_time": 1.5, "speaker": name}]
    for where in (_first(payload), payload["data"]["data"]["turns"][0]):
        where["speaker"] = name + "!"
        status, body = await post(api_only, for_task(payload, task.id))
        assert status == 400 and "String should have at most 64 characters" in body["msg"], body
        where["speaker"] = name
    status, body = await post(api_only, for_task(payload, task.id))
    assert status == 200 and body["data"]["outcome"] == "accepted", body
    result = (await api_only.status(task.id))["result"]
    assert result["data"][0]["speaker"] == result["turns"][0]["speaker"] == name


def test_normalised_segments_keep_the_payload_contract():
    """Whatever times a provider sends: 0 <= start <= end <= duration (both as sent, rounded to
    ms), in time order, text stripped and never empty, a speaker only when asked."""
    import math
    import random

    from gateway.payloads import Segment, normalise_segments

    rng = random.Random(11)
    edges = [-0.0, 0.0, 0.0004, 0.0005, 1e-9, 2.5, 2.5005, 1e9]
    for _ in range(5000):
        duration = max(rng.choice(edges + [rng.uniform(0, 60)]), 0.0)
        raw = [Segment(rng.choice(edges + [rng.uniform(-5, 70)]), rng.choice(edges + [rng.uniform(-5, 70)]),
                       rng.choice(["a", "  b\t", " ", ""]), rng.choice([None, "SPEAKER_01"]))
               for _ in range(rng.randint(0, 8))]
        speaker = rng.random() < 0.5
        out = normalise_segments(raw, duration, speaker)
        assert len(out) == sum(1 for s in raw if s.text.strip())
        assert out == sorted(out, key=lambda s: (s["start_time"], s["end_time"]))
        for s in out:
            assert 0 <= s["start_time"] <= s["end_time"] <= round(duration, 3)
            assert math.copysign(1, s["start_time"]) == math.copysign(1, s["end_time"]) == 1  # never -0.0
            assert round(s["start_time"], 3) == s["start_time"] and round(s["end_time"], 3) == s["end_time"]
            assert s["text"] == s["text"].strip() != ""
            assert s["speaker"] is None or speaker


async def test_failure_callback_fails_the_task_and_is_delivered(api_only, start_gateway, webhook):
    task_id = await new_task(api_only)
    status, body = await post(api_only, failure(task_id, "upstream broke"))
    assert status == 200 and body["data"]["outcome"] == "accepted"
    task = await api_only.status(task_id)
    assert task["status"] == "failed" and task["error"] == "upstream broke" and task["result"] is None
    status, body = await post(api_only, failure(task_id, "upstream broke"))
    assert body["data"]["outcome"] == "duplicate"

    await start_gateway(config=api_only.config)
    [call] = await webhook.wait_for(1)
    assert Webhook(WEBHOOK_SECRET).verify(call.body, call.headers) == {
        "code": "5000", "message": "FAILED", "task_id": task_id,
        "data": {"data": None, "msg": "upstream broke", "success": False}}


async def test_signed_callbacks_when_the_provider_has_a_secret(start_gateway, speech_wav):
    gw = await start_gateway(worker=False, server={"api_keys": ["k"]},
                             providers={"local": {"secret": WEBHOOK_SECRET}})
    auth = {"Authorization": "k"}
    form = aiohttp.FormData()
    form.add_field("file", speech_wav.read_bytes(), filename="speech.wav")
    status, body = await gw.call("POST", "/upload", data=form, headers=auth)
    task_id = (await gw.call("POST", "/transcriptions/async-generate-audio", headers=auth,
                             json={"asset_id": body["data"]["asset_id"]}))[1]["data"]["task_id"]
    raw = json.dumps(for_task(HELLO, task_id))

    status, body = await post(gw, raw)  # no signature (and no API key needed: the signature is the auth)
    assert status == 401 and body["msg"].startswith("invalid webhook signature")
    now = datetime.now(timezone.utc)
    bad = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
           "webhook-signature": "v1,AAAA"}
    status, _ = await post(gw, raw, headers=bad)
    assert status == 401
    good = dict(bad, **{"webhook-signature": Webhook(WEBHOOK_SECRET).sign("msg_1", now, raw)})
    status, body = await post(gw, raw, headers=good)
    assert status == 200 and body["data"]["outcome"] == "accepted"


async def test_a_repeat_is_known_by_its_bytes_and_by_its_meaning(api_only, database_url):
    task_id = await new_task(api_only)
    result = for_task(HELLO, task_id)
    body = json.dumps(result)
    assert (await post(api_only, body))[1]["data"]["outcome"] == "accepted"
    assert (await post(api_only, body))[1]["data"]["outcome"] == "duplicate"  # the same bytes
    reordered = json.dumps(dict(reversed(list(result.items()))), indent=2)  # other bytes, same result
    assert (await post(api_only, reordered))[1]["data"]["outcome"] == "duplicate"
    status, _ = await post(api_only, for_task(success("", (0.0, 1.0, "Something else.")), task_id))
    assert status == 409
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt WHERE task_id = :t AND "
                            "external_task_id = :t AND outcome = 'duplicate'", t=task_id) == 2
    assert await count_rows(database_url, "SELECT count(DISTINCT body_sha256) FROM callbackreceipt") == 3


async def _refuse_transcripts_of(database_url: str, task_id: str) -> None:
    """A trigger in the database itself refuses to store this one task's transcript."""
    from sqlalchemy import text

    from gateway.db import Database

    if database_url.startswith("sqlite"):
        ddl = [f"CREATE TRIGGER refuse_one BEFORE INSERT ON transcript WHEN NEW.task_id = '{task_id}' "
               "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"]
    else:
        ddl = ["CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN "
               f"IF NEW.task_id = '{task_id}' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
               "RETURN NEW; END $$ LANGUAGE plpgsql",
               "CREATE TRIGGER refuse_one BEFORE INSERT ON transcript FOR EACH ROW EXECUTE FUNCTION refuse_one()"]
    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            for statement in ddl:
                await conn.execute(text(statement))
    finally:
        await db.close()


async def test_a_result_the_database_refuses_fails_alone_not_its_whole_batch(api_only, database_url):
    ids = [await new_task(api_only) for _ in range(12)]
    await _refuse_transcripts_of(database_url, ids[5])
    answers = await asyncio.gather(*(post(api_only, for_task(HELLO, t)) for t in ids))  # written together
    assert answers[5][0] == 500 and answers[5][1]["msg"] == "internal error; see the gateway's log"
    assert [a[1]["data"]["outcome"] for i, a in enumerate(answers) if i != 5] == ["accepted"] * 11
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 11
    assert (await api_only.status(ids[5]))["status"] == "queued"


async def test_a_nul_character_in_text_is_refused_on_every_backend(api_only, database_url):
    task_id = await new_task(api_only)
    status, body = await post(api_only, for_task(success("", (0.0, 1.0, "bad\u0000text")), task_id))
    assert status == 400 and "data.data.data[0].text" in body["msg"], body
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 0


async def test_a_nul_character_is_refused_only_where_it_would_be_stored(api_only, database_url):
    """The fast parse refuses any body that spells \\u0000; the full one looks where it is."""
    task_id = await new_task(api_only)
    body = for_task(success("", (0.0, 1.0, "fine")), task_id)
    body["data"]["data"]["data"][0]["speaker"] = "S\u0000"
    status, answer = await post(api_only, body)
    assert status == 400 and answer["msg"] == ("invalid callback payload: data.data.data[0].speaker: "
                                                "must not contain the NUL character (\\u0000)"), answer
    body = for_task(success("", (0.0, 1.0, "a literal \\u0000, no NUL")), task_id)
    body["extra"] = "\u0000 in a field nobody keeps"
    status, answer = await post(api_only, body)
    assert status == 200 and answer["data"]["outcome"] == "accepted", answer
    result = (await api_only.status(task_id))["result"]
    assert result["data"][0]["text"] == "a literal \\u0000, no NUL"


async def test_a_lone_surrogate_is_refused(api_only, database_url):
    task_id = await new_task(api_only)
    raw = json.dumps(for_task(success("", (0.0, 1.0, "half \ud83c of a microphone")), task_id)).encode()
    status, answer = await post(api_only, raw)
    assert status == 400 and answer["msg"].startswith("body is not valid JSON: no low surrogate in string"), answer
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt") == 0
    status, answer = await post(api_only, raw.replace(b"\\ud83c", b"\\ud83c\\udf99"))  # the whole pair
    assert status == 200 and answer["data"]["outcome"] == "accepted"
    assert (await api_only.status(task_id))["result"]["data"][0]["text"] == "half \U0001f399 of a microphone"


def test_canonical_json_is_the_standard_encoding():
    """canonical_json (orjson) writes what json.dumps wrote when the stored digests were made."""
    import random

    from gateway.payloads import Outcome, Segment, build_payload, canonical_json

    rng = random.Random(7)
    texts = ["plain", "Grüße, 東京, emoji 🎙", "quotes \" and \\ backslash", "\t\n\r\b\f and \x01\x1f\x7f",
             "\u2028\u2029 separators", "</script>"]
    for _ in range(300):
        duration = round(rng.uniform(0, 10 ** rng.randint(0, 20)), rng.randint(0, 6))
        segments = tuple(Segment(rng.uniform(-1, duration), rng.uniform(0, duration * 1.1), rng.choice(texts),
                                 rng.choice([None, "SPEAKER_00"])) for _ in range(rng.randint(0, 5)))
        payload = build_payload("t" * 32, Outcome(success=True, duration=duration, segments=segments,
                                                  output_tokens=rng.choice([0, 7, 2 ** 63 - 1, 2 ** 70])),
                                model=rng.choice(texts), speaker=rng.random() < 0.5)
        assert canonical_json(payload) == json.dumps(payload, ensure_ascii=False, sort_keys=True,
                                                     separators=(",", ":"))


def test_the_stored_result_and_its_identity_are_stable():
    """result_sha256 decides duplicate vs conflict for results stored by any earlier version:
    its formula (sha256 of the canonical payload without task_id) must never drift."""
    import hashlib

    from gateway.payloads import Outcome, Segment, build_payload, canonical_json, serialise_result

    payload = build_payload("t1", Outcome(success=True, duration=3.0, segments=(
        Segment(0.0, 1.5, "Hello there."), Segment(1.5, 3.0, "Grüße.", "SPEAKER_00"))),
        model="whisper-1", speaker=True)
    text, digest = serialise_result(payload)
    assert text == canonical_json(payload) and json.loads(text) == payload
    assert text.endswith(',"task_id":"t1"}') and "Grüße" in text
    assert digest == hashlib.sha256(canonical_json({k: v for k, v in payload.items() if k != "task_id"})
                                    .encode()).hexdigest()
    assert digest == "f9d0192589205e4b23917e30c1b88814873abc57c0ef9ee9544618ee57edb013"


async def test_results_stored_in_one_batch_wake_every_process_for_each_task(api_only, start_gateway, db_backend):
    """One NOTIFY per batch carries every task's name; each process's listener wakes each."""
    if db_backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    from gateway.appkeys import NOTIFIER
    from gateway.notify import task_done_channel

    other = await start_gateway(config=api_only.config, worker=False)  # stores the results
    ids = [await new_task(api_only) for _ in range(30)]
    notifier, loop = api_only.app[NOTIFIER], asyncio.get_running_loop()

    async def woken(task_id: str) -> bool:
        t0 = loop.time()
        await notifier.wait(task_done_channel(task_id), 30)
        return loop.time() - t0 < 30

    with contextlib.ExitStack() as listening:
        for t in ids:
            listening.enter_context(notifier.subscribed(task_done_channel(t)))
        waits = [asyncio.create_task(woken(t)) for t in ids]
        answers = await asyncio.gather(*(post(other, for_task(HELLO, t)) for t in ids))
        assert [a[1]["data"]["outcome"] for a in answers] == ["accepted"] * 30
        assert await asyncio.gather(*waits) == [True] * 30


def test_notifications_pack_names_into_payloads_postgresql_accepts():
    from gateway.notify import PAYLOAD_BYTES, notify_params

    names = ["deliveries"] + [f"task:{i:032x}" for i in range(400)] + ["deliveries"]
    _, payloads = notify_params(*names)
    assert len(payloads) == 2 and all(len(p.encode()) <= PAYLOAD_BYTES for p in payloads)
    assert "\n".join(payloads).split("\n") == names[:-1]  # in order, each once


async def test_finished_tasks_leave_no_wake_up_names_behind(api_only):
    """Each accepted result wakes its task's name; only a listener keeps a name alive."""
    from gateway.appkeys import NOTIFIER

    ids = [await new_task(api_only) for _ in range(5)]
    await asyncio.gather(*(post(api_only, for_task(HELLO, t)) for t in ids))
    assert api_only.app[NOTIFIER].names() == 0  # no worker here: no job loop listens either


async def test_an_integer_beyond_64_bits_is_refused_and_nothing_stored(api_only, database_url):
    task_id = await new_task(api_only)
    body = for_task(HELLO, task_id)
    body["data"]["data"]["usage_metadata"]["prompt_tokens"] = 18446744073709551616
    status, answer = await post(api_only, body)
    assert status == 400 and answer["msg"] == (
        "invalid callback payload: data.data.usage_metadata.prompt_tokens: "
        "Input should be less than or equal to 9223372036854775807"), answer
    assert (await api_only.status(task_id))["status"] == "queued"
    assert await count_rows(database_url, "SELECT count(*) FROM transcript") == 0


async def test_a_result_stored_with_an_integer_beyond_64_bits_is_still_served(api_only, database_url):
    """Results stored before the door refused them: every view of the task still answers."""
    from sqlalchemy import text

    from gateway.db import Database

    task_id = await new_task(api_only)
    assert (await post(api_only, for_task(HELLO, task_id)))[0] == 200
    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            stored = (await conn.execute(text("SELECT result_json FROM task WHERE id = :t"), {"t": task_id})).scalar()
            await conn.execute(text("UPDATE task SET result_json = :j WHERE id = :t"),
                               {"t": task_id, "j": stored.replace('"prompt_tokens":0', '"prompt_tokens":' + str(2 ** 64))})
    finally:
        await db.close()
    task = await api_only.status(task_id)
    assert task["result"]["usage_metadata"]["prompt_tokens"] == 2 ** 64
    status, listed = await api_only.call("GET", "/transcriptions")
    assert status == 200 and listed["data"]["items"][0]["task_id"] == task_id
    async with api_only.http.get(f"{api_only.base}/transcriptions/{task_id}/transcript.json") as resp:
        assert resp.status == 200 and str(2 ** 64) in await resp.text()


async def test_negative_zero_times_are_stored_as_zero(api_only):
    task_id = await new_task(api_only)
    body = for_task(success("", (-0.0, -0.0, "a"), (-0.0, 1.0, "b")), task_id)
    body["data"]["data"]["usage_metadata"]["duration"] = -0.0
    status, _ = await post(api_only, body)
    assert status == 200
    async with api_only.http.get(f"{api_only.base}/transcriptions/{task_id}") as resp:
        served = await resp.text()
    assert '"start_time":0.0' in served and "-0.0" not in served, served


async def test_a_malformed_signature_header_is_explained(start_gateway):
    gw = await start_gateway(worker=False, providers={"local": {"secret": WEBHOOK_SECRET}})
    now = str(int(datetime.now(timezone.utc).timestamp()))
    for signature in ("v1AAAA", "v1,AAA,A", "v1,not base64!"):
        headers = {"webhook-id": "msg_1", "webhook-timestamp": now, "webhook-signature": signature}
        status, body = await post(gw, for_task(HELLO, "f" * 32), headers=headers)
        assert status == 401 and body["msg"] == (
            "invalid webhook signature: webhook-signature must be space-separated "
            "'v1,<base64 signature>' entries"), (signature, body)


def signature_headers(body: str, msg_id: str = "msg_1", at: datetime | None = None) -> dict:
    at = at or datetime.now(timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(WEBHOOK_SECRET).sign(msg_id, at, body)}


async def test_refused_callbacks_are_counted_not_stored(start_gateway, database_url):
    gw = await start_gateway(worker=False, providers={"local": {"secret": WEBHOOK_SECRET}})
    before = await scrape(gw)
    body = json.dumps(for_task(HELLO, "f" * 32))
    answers = await asyncio.gather(*(post(gw, body) for _ in range(50)))  # unsigned
    assert {status for status, _ in answers} == {401}
    stale = signature_headers(body, at=datetime.fromtimestamp(0, timezone.utc))
    assert (await post(gw, body, headers=stale))[0] == 401
    assert (await post(gw, b"[]", headers=signature_headers("[]")))[0] == 400  # signed, but not a payload
    assert (await post(gw, body, headers=signature_headers(body)))[0] == 404  # signed, no such task
    after = await scrape(gw)
    assert refusals(after, before, "bad_signature") == 51
    assert refusals(after, before, "invalid") == 1 and refusals(after, before, "unknown_task") == 1
    assert await count_rows(database_url, "SELECT count(*) FROM callbackreceipt") == 0


async def held_request(gw, headers: dict, sent: bytes, length: int):
    """A callback whose headers and first bytes are sent, and the rest of its body held back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", "Content-Type": "application/json",
                                                "Content-Length": str(length), **headers}.items())
    writer.write(f"POST /serve/api/v2/callbacks/local HTTP/1.1\r\n{head}\r\n".encode() + sent)
    await writer.drain()
    return reader, writer


async def answer_of(reader) -> tuple[int, dict]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, val = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(val)
    return status, json.loads(await reader.readexactly(length))


async def test_signature_headers_are_checked_before_the_body_is_read(start_gateway):
    """A forger's request is refused on its headers: the body it holds back is never waited for
    (here the body would time out after 2 s, a 408)."""
    gw = await start_gateway(worker=False, server={"body_timeout_s": 2},
                             providers={"local": {"secret": WEBHOOK_SECRET}})
    old = signature_headers("{}", at=datetime.fromtimestamp(1_000_000_000, timezone.utc))
    cases = [({}, "missing header webhook-id, webhook-timestamp, webhook-signature"),
             (old, "webhook-timestamp is more than 5 minutes old"),
             (dict(old, **{"webhook-timestamp": "soon"}), "webhook-timestamp must be the seconds since 1970"),
             (dict(signature_headers("{}"), **{"webhook-signature": "v1AAAA"}),
              "webhook-signature must be space-separated")]
    for headers, reason in cases:
        reader, writer = await held_request(gw, headers, b'{"code": ', 100_000)
        try:
            status, body = await answer_of(reader)
        finally:
            writer.close()
        assert status == 401 and body["msg"].startswith("invalid webhook signature: " + reason), body


async def test_unauthenticated_bodies_being_received_are_bounded(start_gateway, api_only):
    from gateway.appkeys import CALLBACK_BODIES

    gw = await start_gateway(worker=False, server={"max_unauthenticated_bodies": 2},  # api_only's database
                             providers={"local": {"secret": WEBHOOK_SECRET}})
    before = await scrape(gw)
    held = [await held_request(gw, signature_headers("{}"), b'{"code": ', 100_000) for _ in range(2)]
    gate = gw.app[CALLBACK_BODIES]
    while gate.receiving < 2:  # both handlers are waiting for the rest of their bodies
        await asyncio.sleep(0.05)
    reader, writer = await held_request(gw, signature_headers("{}"), b'{"code": ', 100_000)
    status, body = await answer_of(reader)
    writer.close()
    assert status == 503 and body["msg"] == ("too many callback bodies being received at once "
                                             "(server.max_unauthenticated_bodies = 2); try again"), body
    assert refusals(await scrape(gw), before, "busy") == 1
    for _, w in held:
        w.close()
    while gate.receiving:
        await asyncio.sleep(0.05)
    task_id = await new_task(api_only)
    raw = json.dumps(for_task(HELLO, task_id))
    status, body = await post(gw, raw, headers=signature_headers(raw))
    assert status == 200 and body["data"]["outcome"] == "accepted", body
