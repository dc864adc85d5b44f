"""Known speakers against real gateways: enrolment (from a file, part of an asset, a label of a
task), listing, deletion, naming a task's speakers (result, search index, subtitle files), and
known_speakers / known_speaker_names[] matching voices in the engine's labels. Voices are
espeak-ng's: three that GE2E tells apart clearly (cosine similarity 0.56-0.67 between them,
0.94-0.95 between two sentences of one; measured when this file was written). The echo provider
runs the tasks whose transcript only needs labels; whisper runs only where the engine names voices."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import av
import numpy as np
import openai
import pytest

from conftest import ECHO, count_rows, espeak
from gateway import voiceprints
from gateway.audio import SAMPLE_RATE, decode

ALICE, BOB, CAROL = "en-us+klatt", "en+m7", "en+f4"  # Carol is never enrolled; Alice and Carol: as tests/test_speakers.py
LINES = ["The committee met on a rainy afternoon to discuss the new library.",
         "I think the reading rooms should face the river and the park.",
         "What about the cost of heating such a large open space in winter?",
         "The walls will be thick, and the windows will have three layers of glass."]
ENROL_LINE = "Parking remains a problem, because the old market square is already full of cars."


def write_wav(path: Path, samples: np.ndarray, comment: str | None = None, rate: int = SAMPLE_RATE) -> Path:
    """Mono WAV of `samples` at `rate`, with a `comment` (the echo provider's script) when given."""
    with av.open(str(path), "w", format="wav") as out:
        if comment is not None:
            out.metadata["comment"] = comment
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def clip(tmp: Path, voice: str, text: str) -> np.ndarray:
    return decode(str(espeak(text, tmp / f"{voice}-{abs(hash(text))}.wav", voice)))


def conversation(tmp: Path, turns: list[tuple[str, str]], name: str, pause_s: float = 0.6) -> Path:
    silence = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)
    parts = [p for voice, text in turns for p in (clip(tmp, voice, text), silence)]
    return write_wav(tmp / name, np.concatenate(parts))


def slotted(tmp: Path, turns: list[tuple[str, str, str]], name: str) -> Path:
    """For the echo provider: each (label, voice, text) said in a 2 s slot (cut or padded), the
    script in the comment, so its segment i (2i to 2i + 2 s) is that voice."""
    slot = 2 * SAMPLE_RATE
    parts = [np.pad(a := clip(tmp, voice, text)[:slot], (0, slot - len(a))) for _, voice, text in turns]
    script = "\n".join(f"{label}: {text}" for label, _, text in turns)
    return write_wav(tmp / name, np.concatenate(parts), comment=script)


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> dict[str, Path]:
    """Each voice saying ENROL_LINE alone: what is enrolled."""
    tmp = tmp_path_factory.mktemp("voices")
    return {voice: espeak(ENROL_LINE, tmp / f"{voice}.wav", voice) for voice in (ALICE, BOB, CAROL)}


async def enrol_file(gw, name: str, path: Path, filename: str = "voice.wav") -> tuple[int, dict]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", path.read_bytes(), filename=filename, content_type="audio/wav")
    return await gw.call("POST", "/speakers", data=form)


async def stored_prints(database_url: str, speaker_id: str) -> np.ndarray:
    """The speaker's voiceprints (of the audio as given, with noise, with echo), one per row."""
    raw = await count_rows(database_url, "SELECT embedding FROM speaker WHERE id = :id", id=speaker_id)
    return voiceprints.from_bytes(bytes(raw))


async def stored_voiceprint(database_url: str, speaker_id: str) -> np.ndarray:
    """The speaker's voiceprint of the audio as given."""
    return (await stored_prints(database_url, speaker_id))[0]


def voiceprint_of(path: Path) -> np.ndarray:
    return voiceprints.embedded(*voiceprints.speech_windows([decode(str(path))]))


def stored_files(gw) -> list[Path]:
    return [p for p in Path(gw.config.storage.dir).rglob("*") if p.is_file()]


# --- enrolment ---------------------------------------------------------------------------


async def test_enrol_from_a_file_list_and_delete(gateway, voices, database_url):
    status, body = await enrol_file(gateway, " Alice ", voices[ALICE])
    assert status == 200, body
    alice = body["data"]
    assert alice["name"] == "Alice" and alice["speaker_id"].startswith("spk_")
    assert stored_files(gateway) == []  # the voiceprint is kept, never the audio
    prints = await stored_prints(database_url, alice["speaker_id"])
    assert prints.shape == (3, voiceprints.DIMENSIONS)  # as given, with noise, with echo
    assert float(prints[0] @ voiceprint_of(voices[ALICE])) > 0.99  # the same file: the same voiceprint
    assert 0.7 < float(prints[1] @ prints[0]) < 0.99 and 0.7 < float(prints[2] @ prints[0]) < 0.99
    band = voiceprints.from_bytes(bytes(await count_rows(database_url, "SELECT narrowband FROM speaker WHERE id = :id",
                                                         id=alice["speaker_id"])))
    assert band.shape == (2, voiceprints.DIMENSIONS)  # of the telephone band: as given, with noise
    audio, starts = voiceprints.speech_windows([decode(str(voices[ALICE]))])
    assert float(band[0] @ voiceprints.embedded(voiceprints.band_limited(audio), starts)) > 0.99  # its speech
    assert 0.7 < float(band[0] @ prints[0]) < 0.99 and 0.7 < float(band[1] @ band[0]) < 0.99
    status, body = await enrol_file(gateway, "Bob", voices[BOB])
    bob = body["data"]

    status, body = await gateway.call("GET", "/speakers")
    assert status == 200
    assert [(s["speaker_id"], s["name"], s["encoder"]) for s in body["data"]["items"]] == [
        (alice["speaker_id"], "Alice", voiceprints.ENCODER), (bob["speaker_id"], "Bob", voiceprints.ENCODER)]

    status, body = await gateway.call("DELETE", f"/speakers/{alice['speaker_id']}")
    assert (status, body["data"]) == (200, {"speaker_id": alice["speaker_id"], "deleted": True})
    status, body = await gateway.call("DELETE", f"/speakers/{alice['speaker_id']}")
    assert status == 404 and body["msg"] == f"speaker {alice['speaker_id']!r} not found"
    status, body = await gateway.call("GET", "/speakers")
    assert [s["name"] for s in body["data"]["items"]] == ["Bob"]
    assert await count_rows(database_url, "SELECT count(*) FROM speaker") == 1


async def test_enrol_from_part_of_an_asset(gateway, tmp_path, voices, database_url):
    both = conversation(tmp_path, [(ALICE, LINES[0]), (BOB, LINES[1])], "both.wav", pause_s=1.0)
    alice_s = len(clip(tmp_path, ALICE, LINES[0])) / SAMPLE_RATE
    asset_id = await gateway.upload(both)
    ids = {}
    for name, span in (("Alice", {"end_time": alice_s}), ("Bob", {"start_time": alice_s + 0.5})):
        status, body = await gateway.call("POST", "/speakers", json={"name": name, "asset_id": asset_id, **span})
        assert status == 200, body
        ids[name] = body["data"]["speaker_id"]
    alice, bob = voiceprint_of(voices[ALICE]), voiceprint_of(voices[BOB])
    first = await stored_voiceprint(database_url, ids["Alice"])
    second = await stored_voiceprint(database_url, ids["Bob"])
    assert first @ alice > 0.85 > first @ bob  # each part is its own voice
    assert second @ bob > 0.85 > second @ alice
    assert [p.name for p in stored_files(gateway)] == [asset_id]  # the asset stays, as it was


async def test_bad_enrolments_are_refused_and_store_nothing(gateway, tmp_path, voices, database_url, speech_script):
    text_asset = await gateway.upload(speech_script)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(3 * SAMPLE_RATE, np.float32))
    cases = [
        (lambda: enrol_file(gateway, "", voices[ALICE]), "name: is empty; give the speaker's name"),
        (lambda: enrol_file(gateway, "x" * 65, voices[ALICE]), "name: is 65 characters long; at most 64"),
        (lambda: enrol_file(gateway, "Al\nice", voices[ALICE]), "name: holds a control character"),
        (lambda: enrol_file(gateway, "SPEAKER_01", voices[ALICE]), "name: is how unnamed voices are labelled"),
        (lambda: enrol_file(gateway, "Alice", speech_script), "file: the file could not be decoded as audio"),
        (lambda: enrol_file(gateway, "Alice", silent), "file: 0.0 s of speech was found; a voiceprint needs"),
        (lambda: gateway.call("POST", "/speakers", json={"asset_id": text_asset}), "name: is required"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice"}), "body: asset_id or task_id is required"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "asset_id": "re_1", "task_id": "t"}),
         "body: give exactly one of asset_id or task_id"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "asset_id": "re_1"}),
         "asset_id: no asset 're_1'; upload the file first"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "asset_id": text_asset}),
         "asset_id: the file could not be decoded as audio"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "asset_id": text_asset, "start_time": 3,
                                                         "end_time": 2}),
         "body: start_time (3) must be before end_time (2)"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "task_id": "f" * 32}),
         "body: speaker is required with task_id"),
        (lambda: gateway.call("POST", "/speakers", json={"name": "Alice", "colour": "blue", "asset_id": text_asset}),
         "colour: unknown field"),
    ]
    for call, message in cases:
        status, body = await call()
        assert (status, body["success"]) == (400, False), body
        assert body["msg"].startswith(message), (message, body["msg"])
    status, body = await gateway.call("POST", "/speakers", json={"name": "Alice", "task_id": "f" * 32,
                                                                 "speaker": "SPEAKER_00"})
    assert status == 404 and body["msg"] == f"task {'f' * 32!r} not found"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    status, body = await enrol_file(gateway, "Alice", empty)
    assert (status, body["msg"]) == (400, "file is empty"), body
    assert await count_rows(database_url, "SELECT count(*) FROM speaker") == 0
    assert [p.name for p in stored_files(gateway)] == [text_asset]  # no enrolment's audio left behind


# --- a task's labels ---------------------------------------------------------------------


async def echo_dialogue(gw, tmp_path) -> str:
    """A completed echo task: SPEAKER_00 is Alice's voice, SPEAKER_01 Bob's, two segments each."""
    turns = [("SPEAKER_00", ALICE, "Good morning, shall we start the meeting now?"),
             ("SPEAKER_01", BOB, "Yes, the numbers for the quarter are ready."),
             ("SPEAKER_00", ALICE, "Then tell us about the new library first."),
             ("SPEAKER_01", BOB, "The reading rooms will face the river park.")]
    task_id = await gw.submit(asset_id=await gw.upload(slotted(tmp_path, turns, "dialogue.wav")), model=ECHO,
                              speaker=True)
    task = await gw.wait(task_id)
    assert task["status"] == "completed", task
    return task_id


async def plugins_delivered(gw, task_id: str) -> None:
    """Wait until the task's plugin deliveries (search, srt) are done."""
    for _ in range(300):
        plugins = [d for d in (await gw.status(task_id))["deliveries"] if d["kind"] == "plugin"]
        if plugins and all(d["status"] == "delivered" for d in plugins):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"plugin deliveries not delivered: {plugins}")


async def search_speakers(gw, q: str, **params) -> list[str]:
    status, body = await gw.call("GET", "/search", params={"q": q, **params})
    assert status == 200, body
    return [hit["speaker"] for hit in body["data"]["items"]]


async def test_enrol_from_a_task_label(gateway, tmp_path, voices, database_url):
    task_id = await echo_dialogue(gateway, tmp_path)
    status, body = await gateway.call("POST", "/speakers", json={"name": "Bob", "task_id": task_id,
                                                                 "speaker": "SPEAKER_01"})
    assert status == 200, body
    bob = await stored_voiceprint(database_url, body["data"]["speaker_id"])
    assert bob @ voiceprint_of(voices[BOB]) > 0.85 > bob @ voiceprint_of(voices[ALICE])
    status, body = await gateway.call("POST", "/speakers", json={"name": "Bob", "task_id": task_id,
                                                                 "speaker": "SPEAKER_07"})
    assert status == 400 and body["msg"] == (f"speaker: task {task_id} has no speaker 'SPEAKER_07'; its speakers "
                                             "are SPEAKER_00, SPEAKER_01")
    assert await count_rows(database_url, "SELECT count(*) FROM speaker") == 1


async def test_naming_a_tasks_speakers(gateway, tmp_path, voices, database_url):
    task_id = await echo_dialogue(gateway, tmp_path)
    srt = tmp_path / "subtitles" / f"{task_id}.srt"  # the srt plugin's output_dir under test_config
    await plugins_delivered(gateway, task_id)
    before = await gateway.status(task_id)
    assert "SPEAKER_00" in srt.read_text()

    status, body = await gateway.call("POST", f"/transcriptions/{task_id}/speakers", json={"SPEAKER_00": "Alice"})
    assert status == 200, body
    data = body["data"]
    assert (data["renamed"], data["not_enrolled"], data["plugins_failed"]) == ({"SPEAKER_00": "Alice"}, {}, [])
    [enrolled] = data["enrolled"]
    assert enrolled["name"] == "Alice"
    alice = await stored_voiceprint(database_url, enrolled["speaker_id"])
    assert alice @ voiceprint_of(voices[ALICE]) > 0.85 > alice @ voiceprint_of(voices[BOB])

    after = await gateway.status(task_id)
    assert [s["speaker"] for s in after["result"]["data"]] == ["Alice", "SPEAKER_01", "Alice", "SPEAKER_01"]
    assert [s["text"] for s in after["result"]["data"]] == [s["text"] for s in before["result"]["data"]]
    assert await search_speakers(gateway, "library") == ["Alice"]
    assert await search_speakers(gateway, "library", speaker="SPEAKER_00") == []
    assert "Alice" in srt.read_text() and "SPEAKER_00" not in srt.read_text()
    status, text = await transcript_text(gateway, task_id)
    assert status == 200 and "Alice" in text

    status, body = await gateway.call("POST", f"/transcriptions/{task_id}/speakers", json={"Alice": "Alice Smith"})
    assert status == 200 and body["data"]["renamed"] == {"Alice": "Alice Smith"}
    after = await gateway.status(task_id)
    assert [s["speaker"] for s in after["result"]["data"]][:1] == ["Alice Smith"]


async def test_naming_a_voice_heard_only_in_the_speaker_turns(gateway, tmp_path, voices, database_url):
    """Carol's replies were not transcribed: she is in the turns only. Naming her renames her
    turns and enrols her voice from them; the segments' speakers are renamed with the turns."""
    turns = [("SPEAKER_00", ALICE, "Good morning, shall we start the meeting now?"),
             ("SPEAKER_01", CAROL, "[Yes, the numbers for the quarter are ready.]"),
             ("SPEAKER_01", CAROL, "[The reading rooms will face the river park.]"),
             ("SPEAKER_00", ALICE, "Then tell us about the new library first.")]
    task_id = await gateway.submit(asset_id=await gateway.upload(slotted(tmp_path, turns, "heard.wav")), model=ECHO,
                                   speaker=True, speaker_turns=True)
    task = await gateway.wait(task_id)
    assert [s["speaker"] for s in task["result"]["data"]] == ["SPEAKER_00", "SPEAKER_00"]
    assert task["result"]["turns"] == [{"start_time": 0.0, "end_time": 2.0, "speaker": "SPEAKER_00"},
                                       {"start_time": 2.0, "end_time": 6.0, "speaker": "SPEAKER_01"},
                                       {"start_time": 6.0, "end_time": 8.0, "speaker": "SPEAKER_00"}]

    status, body = await gateway.call("POST", f"/transcriptions/{task_id}/speakers",
                                      json={"SPEAKER_00": "Alice", "SPEAKER_01": "Carol"})
    assert status == 200, body
    enrolled = {e["name"]: e["speaker_id"] for e in body["data"]["enrolled"]}
    carol = await stored_voiceprint(database_url, enrolled["Carol"])
    # 4 s of her voice (two cut sentences) against another sentence of it: less alike than
    # longer enrolments are, and far from Alice's
    assert carol @ voiceprint_of(voices[CAROL]) > 0.75 > 0.6 > carol @ voiceprint_of(voices[ALICE])
    result = (await gateway.status(task_id))["result"]
    assert [t["speaker"] for t in result["turns"]] == ["Alice", "Carol", "Alice"]
    assert [s["speaker"] for s in result["data"]] == ["Alice", "Alice"]


async def test_a_name_of_the_longest_length_is_searchable(gateway, tmp_path):
    """A name may have 64 characters (known_speakers.MAX_NAME): renaming a label to one reaches
    the search index on every backend (its speaker column held 32 characters on PostgreSQL)."""
    from gateway.known_speakers import MAX_NAME

    name = "Dr. Alexandra Konstantinidou-Papadopoulou, Head of Research (UK)"
    assert len(name) == MAX_NAME
    task_id = await echo_dialogue(gateway, tmp_path)
    await plugins_delivered(gateway, task_id)
    status, body = await gateway.call("POST", f"/transcriptions/{task_id}/speakers", json={"SPEAKER_00": name})
    assert status == 200 and body["data"]["plugins_failed"] == [], body
    assert await search_speakers(gateway, "library") == [name]


async def transcript_text(gw, task_id: str) -> tuple[int, str]:
    async with gw.http.get(f"{gw.base}/transcriptions/{task_id}/transcript.srt") as resp:
        return resp.status, await resp.text()


async def test_bad_renames_are_refused_and_change_nothing(gateway, tmp_path, database_url, speech_script):
    task_id = await echo_dialogue(gateway, tmp_path)
    before = await count_rows(database_url, "SELECT result_json FROM task WHERE id = :id", id=task_id)
    cases = [({"SPEAKER_09": "Zed"}, f"SPEAKER_09: task {task_id} has no speaker 'SPEAKER_09'"),
             ({"SPEAKER_00": ""}, "SPEAKER_00: the name is empty"),
             ({"SPEAKER_00": "y" * 65}, "SPEAKER_00: the name is 65 characters long"),
             ({"SPEAKER_00": "a\tb"}, "SPEAKER_00: the name holds a control character"),
             ({"SPEAKER_00": 7}, "SPEAKER_00: the name must be a string"),
             ({}, "body must be a JSON object of labels and names"),
             (["SPEAKER_00"], "body must be a JSON object of labels and names")]
    for body_in, message in cases:
        status, body = await gateway.call("POST", f"/transcriptions/{task_id}/speakers", json=body_in)
        assert status == 400 and body["msg"].startswith(message), (message, body)
    status, body = await gateway.call("POST", f"/transcriptions/{'0' * 32}/speakers", json={"SPEAKER_00": "A"})
    assert status == 404
    unlabelled = await gateway.submit(asset_id=await gateway.upload(speech_script), model=ECHO)
    await gateway.wait(unlabelled)
    status, body = await gateway.call("POST", f"/transcriptions/{unlabelled}/speakers", json={"SPEAKER_00": "A"})
    assert status == 409 and "without speaker=true" in body["msg"]
    assert await count_rows(database_url, "SELECT result_json FROM task WHERE id = :id", id=task_id) == before
    assert await count_rows(database_url, "SELECT count(*) FROM speaker") == 0


# --- known speakers in requests ----------------------------------------------------------


async def test_known_speakers_requests_are_checked(gateway, voices, speech_script):
    asset_id = await gateway.upload(speech_script)
    await enrol_file(gateway, "Alice", voices[ALICE])
    cases = [({"known_speakers": ["Alice"]}, "known_speakers: only meaningful with speaker=true"),
             ({"speaker": True, "known_speakers": ["Zed"]}, "known_speakers: no enrolled speaker named 'Zed'"),
             ({"speaker": True, "known_speakers": []}, "known_speakers: Value error, is an empty list"),
             ({"speaker": True, "known_speakers": "Alice"}, "known_speakers: Value error, must be a list"),
             ({"speaker": True, "known_speakers": False}, "known_speakers: Value error, must be a list")]
    for extra, message in cases:
        status, body = await gateway.call("POST", "/transcriptions/async-generate-audio",
                                          json={"asset_id": asset_id, "model": ECHO, **extra})
        assert status == 400 and body["msg"].startswith(message), (message, body)
    assert await gateway.tasks() == []


async def test_known_speakers_name_matching_voices(gateway, tmp_path, voices):
    """The engine: Alice and Bob enrolled; a conversation of Alice and Carol (never enrolled)."""
    ids = {}
    for name, voice in (("Alice", ALICE), ("Bob", BOB)):
        ids[name] = (await enrol_file(gateway, name, voices[voice]))[1]["data"]["speaker_id"]
    talk = conversation(tmp_path, [(ALICE, LINES[0]), (CAROL, LINES[1]), (ALICE, LINES[2]), (CAROL, LINES[3])],
                        "talk.wav")
    asset_id = await gateway.upload(talk)
    task_id = await gateway.submit(asset_id=asset_id, speaker=True, known_speakers=True)
    task = await gateway.wait(task_id, timeout=300)
    assert task["status"] == "completed", task
    said = [(s["speaker"], s["text"]) for s in task["result"]["data"]]
    assert runs([who for who, _ in said]) == ["Alice", "SPEAKER_01", "Alice", "SPEAKER_01"], said  # Bob unheard

    await gateway.call("DELETE", f"/speakers/{ids['Alice']}")
    task_id = await gateway.submit(asset_id=asset_id, speaker=True, known_speakers=True)
    task = await gateway.wait(task_id, timeout=300)
    assert {s["speaker"] for s in task["result"]["data"]} == {"SPEAKER_00", "SPEAKER_01"}, task["result"]


async def test_voices_enrolled_from_clean_recordings_are_named_on_a_telephone_call(gateway, tmp_path, voices):
    """Alice and Bob enrolled from clean files; a call of Alice and Carol (never enrolled) at 8 kHz,
    300-3,400 Hz: the call is narrowband, so it is matched with the telephone band's voiceprints
    (GE2E puts the voice on the line further from its clean self than the threshold allows)."""
    for name, voice in (("Alice", ALICE), ("Bob", BOB)):
        assert (await enrol_file(gateway, name, voices[voice]))[0] == 200
    talk = decode(str(conversation(tmp_path, [(ALICE, LINES[0]), (CAROL, LINES[1]), (ALICE, LINES[2]),
                                              (CAROL, LINES[3])], "wide.wav")))
    call = write_wav(tmp_path / "call.wav", voiceprints.band_limited(talk)[::2], rate=SAMPLE_RATE // 2)
    task_id = await gateway.submit(asset_id=await gateway.upload(call), speaker=True, known_speakers=["Alice", "Bob"])
    task = await gateway.wait(task_id, timeout=300)
    assert task["status"] == "completed", task
    said = [(s["speaker"], s["text"]) for s in task["result"]["data"]]
    # tiny.en hears the narrow band less well (it may drop a sentence): who said what is checked
    assert {who for who, text in said if "library" in text} == {"Alice"}, said
    assert {who for who, text in said if "river" in text} == {"SPEAKER_01"}, said
    assert {who for who, _ in said} == {"Alice", "SPEAKER_01"}, said


def runs(labels: list[str]) -> list[str]:
    return [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]


def data_url(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


async def test_openai_known_speaker_references(gateway, tmp_path, voices, database_url):
    talk = conversation(tmp_path, [(CAROL, LINES[0]), (ALICE, LINES[1]), (CAROL, LINES[2]), (ALICE, LINES[3])],
                        "talk.wav")
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="any", max_retries=0) as oai:
        raw = await oai.audio.transcriptions.with_raw_response.create(
            file=talk, model="whisper-1", response_format="diarized_json",
            known_speaker_names=["Alice", "Bob"], known_speaker_references=[data_url(voices[ALICE]),
                                                                            data_url(voices[BOB])])
        answer = raw.parse()
        assert isinstance(answer, openai.types.audio.TranscriptionDiarized)
        said = [(s.speaker, s.text) for s in answer.segments]
        assert runs([who for who, _ in said]) == ["A", "Alice", "A", "Alice"], said  # Carol, the first voice: A
        options = json.loads(await count_rows(database_url, "SELECT options FROM task WHERE id = :id",
                                              id=raw.headers["x-task-id"]))
        assert [k["name"] for k in options["known_speakers"]] == ["Alice", "Bob"]  # voiceprints, not the audio
        assert all(len(base64.b64decode(k["voiceprint"])) == 3 * 4 * voiceprints.DIMENSIONS
                   and len(base64.b64decode(k["narrowband"])) == 2 * 4 * voiceprints.DIMENSIONS
                   for k in options["known_speakers"])

        silent = write_wav(tmp_path / "silent.wav", np.zeros(3 * SAMPLE_RATE, np.float32))
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.audio.transcriptions.create(file=talk, model="whisper-1", response_format="diarized_json",
                                                  known_speaker_names=["Alice"],
                                                  known_speaker_references=[data_url(silent)])
        assert refused.value.body["param"] == "known_speaker_references"
        assert refused.value.body["message"].startswith("known_speaker_references[0]: 0.0 s of speech was found")
    assert len(await gateway.tasks()) == 1
