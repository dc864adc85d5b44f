"""The OpenAI-compatible API under /v1, driven by the official `openai` client against real
gateways: every response_format as the client's types read it, streaming, translations, the
model list, errors as the client raises them, and every request being an ordinary task (listed,
searchable, delivered, surviving a restart). The echo provider stands in for the engine: it reads
its script from the WAV's comment (tgw_echo.script_wav)."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import openai
import pysubs2
import pytest
import srt

from conftest import Gateway, count_rows, espeak, daemon_sections, test_config, to_toml, wait_delivery
from tgw_echo import script_wav

SCRIPT = "Hello, how are you today?\nWe are testing the transcription gateway."
TEXT = "Hello, how are you today? We are testing the transcription gateway."
DIALOGUE = "SPEAKER_00: Good morning.\nSPEAKER_01: Morning, shall we start?\nSPEAKER_00: Yes."
REFERENCE = "data:audio/wav;base64," + base64.b64encode(b"RIFF" + bytes(200)).decode()


@pytest.fixture
async def client():
    """The official client of a gateway's /v1 (no retries: every answer is the first)."""
    made: list[openai.AsyncOpenAI] = []

    def make(gw: Gateway, key: str = "any") -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0))
        return made[-1]

    yield make
    for oai in made:
        await oai.close()


@pytest.fixture
def speech(tmp_path):
    return script_wav(tmp_path / "speech.wav", SCRIPT)


async def newest_task(gw: Gateway) -> dict:
    return (await gw.tasks(limit=1))[0]


async def task_options(database_url: str, task_id: str) -> dict:
    raw = await count_rows(database_url, "SELECT options FROM task WHERE id = :id", id=task_id)
    return json.loads(raw) if raw else {}


# --- answers -----------------------------------------------------------------------------


async def test_json_and_text(gateway, speech, database_url, client):
    oai = client(gateway)
    answer = await oai.audio.transcriptions.create(file=speech, model="echo")
    assert isinstance(answer, openai.types.audio.Transcription)
    assert answer.text == TEXT
    assert answer.usage.type == "duration" and answer.usage.seconds == 4.0
    raw = await oai.audio.transcriptions.with_raw_response.create(file=speech, model="echo", response_format="text")
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.parse() == TEXT + "\n"
    assert (await oai.audio.transcriptions.create(file=speech, model="echo", chunking_strategy="auto")).text == TEXT
    task = await gateway.status(raw.headers["x-task-id"])
    assert task["status"] == "completed" and task["model"] == "echo"
    assert await task_options(database_url, task["task_id"]) == {}  # json and text ask the engine for nothing more


async def test_srt_and_vtt_parse_as_subtitles(gateway, speech, client):
    oai = client(gateway)
    cues = list(srt.parse(await oai.audio.transcriptions.create(file=speech, model="echo", response_format="srt")))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (0.0, 2.0, "Hello, how are you today?"), (2.0, 4.0, "We are testing the transcription gateway.")]
    vtt = await oai.audio.transcriptions.create(file=speech, model="echo", response_format="vtt")
    subs = pysubs2.SSAFile.from_string(vtt, format_="vtt")
    assert [(e.start, e.end, e.plaintext) for e in subs] == [
        (0, 2000, "Hello, how are you today?"), (2000, 4000, "We are testing the transcription gateway.")]


async def test_verbose_json_segments_and_options(gateway, speech, database_url, client):
    oai = client(gateway)
    raw = await oai.audio.transcriptions.with_raw_response.create(
        file=speech, model="echo", response_format="verbose_json", language="en", prompt="Testing, gateway.",
        temperature=0.2, chunking_strategy={"type": "server_vad", "threshold": 0.5})
    answer = raw.parse()
    assert isinstance(answer, openai.types.audio.TranscriptionVerbose)
    assert (answer.task, answer.language, answer.duration, answer.text) == ("transcribe", "english", 4.0, TEXT)
    assert answer.words is None and answer.usage.seconds == 4.0
    first, second = answer.segments
    assert (first.id, first.start, first.end, first.text) == (0, 0.0, 2.0, "Hello, how are you today?")
    assert (second.id, second.start, second.end) == (1, 2.0, 4.0)
    for segment in answer.segments:  # every field of the SDK's TranscriptionSegment is there
        assert set(openai.types.audio.TranscriptionSegment.model_fields) <= set(segment.model_dump(exclude_unset=True))
    options = await task_options(database_url, raw.headers["x-task-id"])
    assert options == {"details": True, "prompt": "Testing, gateway.", "temperature": 0.2}


async def test_word_granularity_alone_gives_words_without_segments(gateway, speech, database_url, client):
    raw = await client(gateway).audio.transcriptions.with_raw_response.create(
        file=speech, model="echo", response_format="verbose_json", timestamp_granularities=["word"])
    answer = raw.parse()
    assert answer.segments is None and answer.words is not None
    assert await task_options(database_url, raw.headers["x-task-id"]) == {"details": True, "word_timestamps": True}
    both = await client(gateway).audio.transcriptions.create(
        file=speech, model="echo", response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert len(both.segments) == 2 and both.words is not None


async def test_verbose_json_words_and_details_from_the_provider(gateway, speech, client):
    answer = await client(gateway).audio.transcriptions.create(
        file=speech, model="echo", response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert [w.word for w in answer.words] == TEXT.split()
    assert answer.words[0].start == 0.0 and answer.words[-1].end == 4.0
    assert answer.segments[1].avg_logprob == -0.25 and answer.segments[1].tokens == [50364, 2425, 50464]
    assert answer.segments[1].seek == 200


async def test_diarized_json_letters_speakers(gateway, tmp_path, database_url, client):
    dialogue = script_wav(tmp_path / "dialogue.wav", DIALOGUE)
    reference = espeak("Good morning, this is the agent speaking to you.", tmp_path / "agent.wav")
    raw = await client(gateway).audio.transcriptions.with_raw_response.create(
        file=dialogue, model="echo", response_format="diarized_json", known_speaker_names=["agent"],
        known_speaker_references=["data:audio/wav;base64," + base64.b64encode(reference.read_bytes()).decode()])
    answer = raw.parse()
    assert isinstance(answer, openai.types.audio.TranscriptionDiarized)
    assert [(s.speaker, s.text) for s in answer.segments] == [
        ("A", "Good morning."), ("B", "Morning, shall we start?"), ("A", "Yes.")]
    assert answer.segments[1].type == "transcript.text.segment" and answer.task == "transcribe"
    task = await gateway.status(raw.headers["x-task-id"])
    assert task["speaker"] is True
    [known] = (await task_options(database_url, task["task_id"]))["known_speakers"]  # its voiceprint, not its audio
    assert known["name"] == "agent" and len(base64.b64decode(known["voiceprint"])) == 3 * 1024  # 3 x 256 float32
    assert len(base64.b64decode(known["narrowband"])) == 2 * 1024


async def test_diarized_json_needs_a_provider_that_labels_speakers(start_gateway, speech, client):
    gw = await start_gateway(engine={"speaker_labels": False})
    with pytest.raises(openai.BadRequestError) as refused:
        await client(gw).audio.transcriptions.create(file=speech, model="whisper-1", response_format="diarized_json")
    assert refused.value.body["param"] == "response_format"
    assert "cannot give" in refused.value.message
    assert await gw.tasks() == []


async def test_stream_sends_deltas_then_done(gateway, speech, client):
    stream = await client(gateway).audio.transcriptions.create(file=speech, model="echo", stream=True)
    events = [event async for event in stream]
    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert "".join(e.delta for e in deltas) == TEXT
    assert done.type == "transcript.text.done" and done.text == TEXT and done.usage.type == "tokens"


async def test_stream_sends_the_first_text_while_the_task_still_runs(start_gateway, tmp_path, client):
    """Each segment's text goes out as it is decoded (the echo provider tells one segment per
    step of its delay_s, as the engine tells each decoded window), not once the task is done."""
    gw = await start_gateway(providers={"echo": {"delay_s": 8}})
    lines = ["One.", "Two.", "Three.", "Four."]
    stream = await client(gw).audio.transcriptions.with_raw_response.create(
        file=script_wav(tmp_path / "four.wav", "\n".join(lines)), model="echo", stream=True)
    task_id = stream.headers["x-task-id"]
    events = aiter(stream.parse())
    first = await anext(events)
    assert first.type == "transcript.text.delta" and first.delta == "One."
    assert (await gw.status(task_id))["status"] == "processing"  # the rest is still being "decoded"
    *deltas, done = [first] + [event async for event in events]
    assert "".join(e.delta for e in deltas) == " ".join(lines) == done.text
    assert (await gw.status(task_id))["status"] == "completed"


async def test_stream_of_a_failing_task_raises(start_gateway, speech, client):
    gw = await start_gateway(providers={"echo": {"fail": "the echo refuses, as configured"}})
    stream = await client(gw).audio.transcriptions.create(file=speech, model="echo", stream=True)
    with pytest.raises(openai.APIError, match="the echo refuses, as configured"):
        _ = [event async for event in stream]


# --- translations ------------------------------------------------------------------------
# (the `openai` package marks audio.translations as deprecated; it is still OpenAI's API)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_translation_refused_by_the_english_only_model(gateway, speech, client):
    with pytest.raises(openai.BadRequestError) as refused:
        await client(gateway).audio.translations.create(file=speech, model="whisper-1")
    assert refused.value.body["param"] == "model" and refused.value.body["code"] == "model_not_translating"
    assert "English-only" in refused.value.message and "engine.model_path" in refused.value.message
    assert "echo" in refused.value.message  # the alias served elsewhere
    assert await gateway.tasks() == []


GERMAN = "Guten Morgen. Das Wetter ist heute sehr schön, und wir gehen in den Park."


@pytest.mark.any_database
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_a_multilingual_model_translates_and_transcribes_the_language_asked(start_gateway, multilingual_model,
                                                                                  tmp_path, client):
    gw = await start_gateway(engine={"model_path": str(multilingual_model), "speaker_labels": False})
    german = espeak(GERMAN, tmp_path / "german.wav", voice="de", speed=150)
    oai = client(gw)
    translated = await oai.audio.translations.create(file=german, model="whisper-1", response_format="verbose_json")
    assert isinstance(translated, openai.types.audio.TranslationVerbose)
    words = set(re.findall(r"[a-z]+", translated.text.lower()))
    assert {"morning", "weather", "park"} <= words and not {"guten", "wetter", "heute"} & words, translated.text
    assert translated.language == "english" and translated.segments  # as OpenAI: the language it is in
    said = await oai.audio.transcriptions.create(file=german, model="whisper-1", language="de")
    assert "Guten Morgen" in said.text and "Park" in said.text, said.text  # the language reached the engine


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_translation_is_a_task_asking_to_translate(gateway, speech, database_url, client):
    raw = await client(gateway).audio.translations.with_raw_response.create(
        file=speech, model="echo", response_format="verbose_json", prompt="In English.")
    answer = raw.parse()
    assert isinstance(answer, openai.types.audio.TranslationVerbose)
    assert (answer.language, answer.text, len(answer.segments)) == ("english", TEXT, 2)
    assert await task_options(database_url, raw.headers["x-task-id"]) == {
        "details": True, "prompt": "In English.", "translate": True}
    plain = await client(gateway).audio.translations.create(file=speech, model="echo")
    assert isinstance(plain, openai.types.audio.Translation) and plain.text == TEXT


# --- models ------------------------------------------------------------------------------


async def test_models_list_every_alias(start_gateway, client):
    gw = await start_gateway(providers={"echo": {"models": {"echo": "echo", "echo-2": "echo"}}})
    oai = client(gw)
    listed = [m async for m in oai.models.list()]
    assert [(m.id, m.object, m.owned_by) for m in listed] == [
        ("echo", "model", "echo"), ("echo-2", "model", "echo"), ("whisper-1", "model", "local")]
    assert all(isinstance(m.created, int) for m in listed)
    one = await oai.models.retrieve("echo-2")
    assert (one.id, one.owned_by) == ("echo-2", "echo")
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.models.retrieve("gpt-4o-transcribe")
    assert missing.value.body["param"] == "model" and missing.value.body["code"] == "model_not_found"


# --- errors ------------------------------------------------------------------------------


async def test_api_keys_apply_under_v1(start_gateway, speech, client):
    gw = await start_gateway(server={"api_keys": ["k-v1"], "allow_private_hosts": ["127.0.0.1"]})
    with pytest.raises(openai.AuthenticationError) as wrong:
        await client(gw, "k-wrong").models.list()
    assert wrong.value.body == {"message": "invalid API key", "type": "invalid_request_error", "param": None,
                                "code": "invalid_api_key"}
    async with gw.http.get(gw.url + "/v1/models") as resp:  # no key at all
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    answer = await client(gw, "k-v1").audio.transcriptions.create(file=speech, model="echo")
    assert answer.text == TEXT


async def test_bad_requests_answer_openai_errors_and_store_nothing(start_gateway, speech, tmp_path, client):
    gw = await start_gateway(server={"max_upload_mb": 0.02, "allow_private_hosts": ["127.0.0.1"]})
    oai = client(gw)

    async def refused(status: int, **kw) -> dict:
        with pytest.raises(openai.APIStatusError) as err:
            await oai.audio.transcriptions.create(**{"file": speech, "model": "echo", **kw})
        assert err.value.status_code == status, err.value.body
        assert err.value.body["type"] == "invalid_request_error"
        return err.value.body

    body = await refused(400, model="whisper-9")
    assert (body["param"], body["code"]) == ("model", "model_not_found")
    assert "valid models: echo, whisper-1" in body["message"]
    body = await refused(400, file=("notes.txt", b"not audio at all"))
    assert body["param"] == "file" and "is not audio" in body["message"]
    body = await refused(400, response_format="docx")
    assert body["message"] == "response_format: must be one of json, text, srt, verbose_json, vtt, diarized_json"
    body = await refused(400, timestamp_granularities=["word"])
    assert body == {"message": "timestamp_granularities: only with response_format verbose_json",
                    "type": "invalid_request_error", "param": "timestamp_granularities", "code": None}
    body = await refused(400, temperature=1.5)
    assert body["param"] == "temperature"
    body = await refused(400, language="xx")
    assert body["param"] == "language" and "unknown language code 'xx'" in body["message"]
    body = await refused(400, response_format="diarized_json", known_speaker_names=["agent"],
                         known_speaker_references=["data:text/plain;base64,aGk="])
    assert body["param"] == "known_speaker_references" and "data URL of audio" in body["message"]
    body = await refused(400, response_format="diarized_json", known_speaker_names=["agent"],
                         known_speaker_references=["data:audio/wav;base64,@@@"])
    assert "not valid base64" in body["message"]
    body = await refused(400, known_speaker_names=["agent", "customer"], known_speaker_references=[REFERENCE])
    assert body["param"] == "known_speaker_names"
    body = await refused(400, stream=True, response_format="srt")
    assert body["param"] == "stream"
    big = script_wav(tmp_path / "big.wav", SCRIPT, seconds=1.0)  # 32 KB against 20 KB
    body = await refused(413, file=big)
    assert body["param"] == "file" and "server.max_upload_mb" in body["message"]
    async with gw.http.post(gw.url + "/v1/audio/transcriptions", data={"model": "echo"}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "file"  # not multipart
    async with gw.http.get(gw.url + "/v1/nope") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["message"] == "no such endpoint: GET /v1/nope"
    async with gw.http.get(gw.url + "/v1/models", headers={"Expect": "tea"}) as resp:  # refused by aiohttp itself
        assert resp.status == 417 and (await resp.json())["error"]["type"] == "invalid_request_error"
    assert await gw.tasks() == []
    assert await count_rows(gw.config.database.url, "SELECT count(*) FROM asset") == 0
    assert not [p for p in (tmp_path / "assets").rglob("re_*")]


async def test_a_failed_task_is_an_openai_error(start_gateway, speech, client):
    gw = await start_gateway(providers={"echo": {"fail": "bad input, as configured"}})
    with pytest.raises(openai.BadRequestError) as failed:  # code 4000: the input's fault
        await client(gw).audio.transcriptions.create(file=speech, model="echo")
    assert failed.value.body["message"] == "transcription failed: bad input, as configured"
    assert (await newest_task(gw))["status"] == "failed"


async def test_a_task_outlasting_the_wait_answers_504_naming_it(start_gateway, speech, client):
    gw = await start_gateway(server={"sync_timeout_s": 0.3, "allow_private_hosts": ["127.0.0.1"]},
                             providers={"echo": {"delay_s": 2}})
    with pytest.raises(openai.APIStatusError) as late:
        await client(gw).audio.transcriptions.create(file=speech, model="echo")
    task_id = (await newest_task(gw))["task_id"]
    assert late.value.status_code == 504 and late.value.body["code"] == "timeout"
    assert f"/serve/api/v2/transcriptions/{task_id}" in late.value.message
    assert (await gw.wait(task_id))["status"] == "completed"  # it went on


async def test_a_client_that_leaves_does_not_cancel_the_task(start_gateway, speech, client):
    gw = await start_gateway(providers={"echo": {"delay_s": 1.5}})
    waiting = asyncio.create_task(client(gw).audio.transcriptions.create(file=speech, model="echo"))
    task = await gw.wait((await _first_task(gw))["task_id"], until=("processing",))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await gw.wait(task["task_id"]))["status"] == "completed"


async def _first_task(gw: Gateway, timeout: float = 30) -> dict:
    for _ in range(int(timeout / 0.05)):
        if tasks := await gw.tasks(limit=1):
            return tasks[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no task was created")


# --- a task like any other ---------------------------------------------------------------


async def test_a_v1_request_is_a_task_like_any_other(start_gateway, speech, webhook, tmp_path, client):
    gw = await start_gateway(webhooks={"urls": [webhook.url]})
    raw = await client(gw).audio.transcriptions.with_raw_response.create(file=speech, model="echo")
    task_id = raw.headers["x-task-id"]
    assert [t["task_id"] for t in await gw.tasks()] == [task_id]
    await wait_delivery(gw, task_id, "delivered")
    (hook,) = webhook.received
    assert hook.json()["task_id"] == task_id
    assert [s["text"] for s in hook.json()["data"]["data"]["data"]] == SCRIPT.splitlines()
    task = await gw.status(task_id)
    assert {d["target"] for d in task["deliveries"]} >= {webhook.url, "plugin:search", "plugin:srt"}
    for _ in range(100):  # the plugins' deliveries, beside the webhook's
        if all(d["status"] == "delivered" for d in (await gw.status(task_id))["deliveries"]):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"not all delivered: {(await gw.status(task_id))['deliveries']}")
    found = (await gw.get("/search", q="transcription gateway"))["items"]
    assert [hit["task_id"] for hit in found] == [task_id]
    assert (tmp_path / "subtitles" / f"{task_id}.srt").read_text().startswith("1\n00:00:00,000 --> 00:00:02,000")


@pytest.mark.slow
async def test_a_v1_task_survives_a_daemon_restart(tmp_path, database_url, daemon_factory, speech, webhook, client):
    sections = daemon_sections(tmp_path, database_url, providers={"echo": {"delay_s": 4}},
                               webhooks={"urls": [webhook.url]}, jobs={"lease_s": 2, "poll_s": 0.2})
    daemon = daemon_factory(to_toml(sections))
    daemon.start()
    base = f"http://127.0.0.1:{daemon.port}"
    import aiohttp

    async with aiohttp.ClientSession() as http:
        gw = Gateway(url=base, http=http)
        await gw.wait_ready()
        waiting = asyncio.create_task(client(gw).audio.transcriptions.create(file=speech, model="echo"))
        task_id = (await gw.wait((await _first_task(gw))["task_id"], until=("processing",)))["task_id"]
        daemon.kill()
        with pytest.raises(openai.APIConnectionError):
            await waiting
        daemon.start()
        await gw.wait_ready()
        task = await gw.wait(task_id, timeout=60)
        assert task["status"] == "completed" and task["attempts"] == 2
        await wait_delivery(gw, task_id, "delivered")
    assert [r.json()["task_id"] for r in webhook.received] == [task_id]


async def test_a_gateway_fronting_another_through_its_v1(start_gateway, tmp_path, speech):
    """front (openai provider, alias "front") -> back's /v1 (echo): the back's transcript comes back."""
    back_dir = tmp_path / "back"
    back_dir.mkdir()
    back = await start_gateway(config=test_config(back_dir, f"sqlite:///{back_dir / 'gateway.db'}"))
    front = await start_gateway(providers={"openai": {"base_url": back.url + "/v1", "models": {"front": "echo"}}})
    task_id = await front.submit(asset_id=await front.upload(speech), model="front")
    task = await front.wait(task_id)
    assert task["status"] == "completed" and task["provider"] == "openai"
    assert [s["text"] for s in task["result"]["data"]] == SCRIPT.splitlines()
    (upstream,) = await back.tasks()
    assert (upstream["model"], upstream["provider"], upstream["status"]) == ("echo", "echo", "completed")
