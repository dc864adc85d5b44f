"""The engine options of a task (gateway/options.py) on the real engine and the live daemon:
word timestamps, prompt, hotwords, temperature, the decoder's figures, translation's check, and
the texts of a running task as they are decoded (gateway/partials.py). Whisper runs here on short
clips; the request fields' validation, the callback door and the remote providers have their
tests beside the others' (test_bad_input, test_callback_door, test_providers)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from conftest import ECHO, Gateway, count_rows, daemon_sections, espeak, to_toml
from gateway import partials, requests
from gateway.appkeys import DB, NOTIFIER, PROVIDERS
from gateway.errors import BadRequest
from gateway.models import PartialSegment, Task
from gateway.notify import task_channel
from gateway.options import TaskOptions

NO_SPEAKERS = {"speaker_labels": False}  # no encoder loaded beside the model: none of these label speakers
NAME = "Zorblatt Quenwick"  # an invented name: tiny.en hears "more of that when we're" without help


@pytest.fixture(scope="session")
def name_wav(audio_dir):
    return espeak(f"Please call {NAME} tomorrow about the invoice.", audio_dir / "name.wav", speed=150)


@pytest.mark.any_database
async def test_word_timestamps_give_every_segment_its_words(start_gateway, speech_wav):
    gw = await start_gateway(engine=NO_SPEAKERS)
    asset_id = await gw.upload(speech_wav)
    plain = (await gw.wait(await gw.submit(asset_id=asset_id)))["result"]
    worded = (await gw.wait(await gw.submit(asset_id=asset_id, word_timestamps=True)))["result"]

    assert set(plain) == {"data", "usage_metadata"}  # nothing asked, nothing new: the payload as before
    assert plain["data"] and all(set(s) == {"start_time", "end_time", "text", "speaker"} for s in plain["data"])
    assert [s["text"] for s in worded["data"]] == [s["text"] for s in plain["data"]]
    for segment in worded["data"]:
        words = segment["words"]
        assert words and set(segment) == {"start_time", "end_time", "text", "speaker", "words"}
        assert all(set(w) == {"word", "start_time", "end_time"} for w in words)
        assert all(segment["start_time"] <= w["start_time"] <= w["end_time"] <= segment["end_time"] for w in words)
        assert [w["start_time"] for w in words] == sorted(w["start_time"] for w in words)
        assert all(w["word"] == w["word"].strip() != "" for w in words)
        assert "".join(w["word"] for w in words) == segment["text"].replace(" ", "")

    status, body = await gw.call("POST", "/transcriptions/sync-generate-audio",
                                 json={"asset_id": asset_id, "word_timestamps": True})
    assert status == 200, body
    assert [item["words"] for item in body["data"]["items"]] == [s["words"] for s in worded["data"]]


@pytest.mark.any_database
async def test_prompt_and_hotwords_reach_the_decoder_and_its_log_line(tmp_path, database_url, daemon_factory,
                                                                       name_wav):
    daemon = daemon_factory(to_toml(daemon_sections(tmp_path, database_url)))
    daemon.start()
    asks = {"plain": {}, "hotwords": {"hotwords": NAME}, "prompt": {"prompt": f"Meeting with {NAME}."}}
    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=f"http://127.0.0.1:{daemon.port}", http=http)
        await gw.wait_ready()
        asset_id = await gw.upload(name_wav)
        ids = {name: await gw.submit(asset_id=asset_id, **ask) for name, ask in asks.items()}
        texts = {name: " ".join(s["text"] for s in (await gw.wait(task_id))["result"]["data"])
                 for name, task_id in ids.items()}
    daemon.stop()
    assert "Zorblatt" not in texts["plain"]
    assert NAME in texts["hotwords"] and NAME in texts["prompt"]

    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.startswith("{")]
    done = {entry["task_id"]: entry for entry in lines if entry["event"] == "engine.done"}
    assert "decoding" not in done[ids["plain"]]
    assert done[ids["hotwords"]]["decoding"] == {"hotwords": NAME}
    assert done[ids["prompt"]]["decoding"] == {"initial_prompt": f"Meeting with {NAME}."}


async def run_with_options(gw: Gateway, asset_id: str, options: TaskOptions) -> dict:
    """A local task with `options` (those the memories API has no field for, as the OpenAI API's
    requests make them), queued as any request's, and its status once finished."""
    task = await requests.create_task(gw.app[DB], requests.GenerateRequest(asset_id=asset_id), "local", options)
    gw.app[NOTIFIER].wake(task_channel("local"))
    return await gw.wait(task.id)


@pytest.mark.any_database
async def test_details_and_temperature(start_gateway, speech_wav):
    gw = await start_gateway(engine=NO_SPEAKERS)
    asset_id = await gw.upload(speech_wav)
    default = (await run_with_options(gw, asset_id, TaskOptions(details=True)))["result"]
    warmer = (await run_with_options(gw, asset_id, TaskOptions(details=True, temperature=0.2)))["result"]

    assert default["language"] == "en" and warmer["language"] == "en"
    for segment in default["data"] + warmer["data"]:
        assert segment["avg_logprob"] <= 0 and segment["compression_ratio"] > 0
        assert 0 <= segment["no_speech_prob"] <= 1 and isinstance(segment["seek"], int)
        assert segment["tokens"] and all(isinstance(t, int) for t in segment["tokens"])
        assert "words" not in segment  # not asked for
    # without a temperature, faster-whisper's fallback list starts at 0.0 (clean speech passes there);
    # with one, that temperature alone
    assert default["data"] and {s["temperature"] for s in default["data"]} == {0.0}
    assert warmer["data"] and {s["temperature"] for s in warmer["data"]} == {0.2}


async def test_an_english_only_model_refuses_translation_before_anything_is_queued(start_gateway):
    gw = await start_gateway(engine=NO_SPEAKERS)
    local = gw.app[PROVIDERS].get("local")
    providers = gw.app[PROVIDERS]
    with pytest.raises(BadRequest, match=r"^translate: the model behind 'whisper-1' is English-only, so it cannot "
                                         r"translate .*set engine.model_path to a multilingual"):
        await requests.check_options(providers, local, "whisper-1", TaskOptions(translate=True))
    await requests.check_options(providers, local, "whisper-1", TaskOptions(word_timestamps=True, temperature=0.5))
    assert await count_rows(gw.config.database.url, "SELECT count(*) FROM task") == 0


# --- the texts of a running task ---------------------------------------------------------


async def test_follow_gives_each_text_while_the_task_runs_and_the_whole_text_at_its_end(start_gateway,
                                                                                        long_speech_wav):
    # texts come as each batch of windows is decoded: at the default batch_size this 2-minute
    # file is one batch, its texts all at its end, so here batches are of two windows
    gw = await start_gateway(engine={**NO_SPEAKERS, "batch_size": 2})
    task_id = await gw.submit(asset_id=await gw.upload(long_speech_wav))
    texts, first_seen_while = [], None
    async for text in partials.follow(gw.app[DB], gw.app[NOTIFIER], task_id, poll_s=0.5):
        if not texts:
            first_seen_while = (await gw.status(task_id))["status"]
        texts.append(text)
    assert first_seen_while == "processing"
    assert (await gw.status(task_id))["status"] == "completed"
    url = gw.config.database.url
    transcript = await count_rows(url, "SELECT text FROM transcript WHERE task_id = :t", t=task_id)
    assert " ".join(texts) == transcript
    assert await count_rows(url, "SELECT count(*) FROM partial_segment") == 0  # gone with the result


async def test_a_new_attempt_starts_without_the_texts_of_the_last(start_gateway, speech_script, database_url):
    """What an interrupted attempt stored (here written as it would have: a task claimed once,
    one text) is gone when the task is run again, and nothing is left once it finishes."""
    api = await start_gateway(worker=False, engine=NO_SPEAKERS, providers={"echo": {"delay_s": 3.0}})
    task_id = await api.submit(asset_id=await api.upload(speech_script), model=ECHO)
    async with api.app[DB].session() as s:
        (await s.get(Task, task_id)).attempts = 1
        s.add(PartialSegment(task_id=task_id, seq=0, start_time=0.0, end_time=1.0, text="from attempt one"))
    worker = await start_gateway(config=api.config)
    running = await worker.wait(task_id, until=("processing",))
    while running["progress"] == 0.0:  # progress stored: the attempt has begun (the texts go before)
        running = await worker.wait(task_id, until=("processing", "completed"))
    assert running["attempts"] == 2 and running["status"] == "processing"
    assert await count_rows(database_url, "SELECT count(*) FROM partial_segment WHERE text = 'from attempt one'") == 0
    assert (await worker.wait(task_id))["status"] == "completed"
    assert await count_rows(database_url, "SELECT count(*) FROM partial_segment") == 0


def test_what_remains_of_the_final_text_is_given_word_by_word():
    final = ["Hello there.", "How are you?", "Fine."]
    assert partials.remainder([], final) == final
    assert partials.remainder(["Hello there."], final) == ["How are you?", "Fine."]
    assert partials.remainder(final, final) == []
    # speaker labelling split a streamed segment: only the words not yet said
    assert partials.remainder(["Hello there. How"], final) == ["are you?", "Fine."]
    # the result differs from what was streamed: from there on, as it is
    assert partials.remainder(["Hello here."], final) == final
