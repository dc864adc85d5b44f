"""Speech the English-only model cannot transcribe is never dropped silently: the task's status
and its stored result (the callback's data.data) carry a `note` naming the time span; with
nothing to note the payload is exactly what it always was (no `note` key)."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import espeak
from gateway import untranscribed

ENGLISH = " ".join([
    "Good morning everyone, and thank you for coming to the quarterly review.",
    "Today we are going to talk about the weather in London and the plans for the next quarter.",
    "The budget has been approved and the team will start working on the new project next Monday.",
    "Please send your reports before Friday so that we can review them together.",
    "We will meet again next week at the same time in the large room on the second floor.",
])
GERMAN_SENTENCES = [
    "Guten Morgen zusammen, und vielen Dank, dass Sie alle zu dieser Besprechung gekommen sind.",
    "Heute sprechen wir über das Wetter in Berlin und die Pläne für das nächste Quartal.",
    "Das Budget wurde genehmigt und das Team beginnt am nächsten Montag mit der Arbeit an dem neuen Projekt.",
    "Bitte schicken Sie Ihre Berichte vor Freitag, damit wir sie gemeinsam prüfen können.",
    "Wir treffen uns nächste Woche zur gleichen Zeit im großen Raum im zweiten Stock.",
]
GERMAN = " ".join(GERMAN_SENTENCES)
SPAN = re.compile(r"from (\d+\.\d) s to (\d+\.\d) s")


def seconds(path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True, text=True).stdout)


@pytest.fixture(scope="module")
def english_then_german(tmp_path_factory):
    """About a minute: half English, then half German; (file, where the German starts, length)."""
    d = tmp_path_factory.mktemp("lang")
    en, de = espeak(ENGLISH, d / "en.wav"), espeak(GERMAN, d / "de.wav", voice="de")
    out = d / "en-de.wav"
    subprocess.run(["sox", str(en), str(de), str(out)], check=True)
    return out, seconds(en), seconds(out)


@pytest.mark.any_database
async def test_english_then_german_keeps_the_english_and_notes_the_german(start_gateway, webhook,
                                                                            english_then_german):
    path, german_at, length = english_then_german
    assert 50 < length < 75
    gw = await start_gateway(webhooks={"urls": [webhook.url]})
    task = await gw.wait(await gw.submit(asset_id=await gw.upload(path)), timeout=300)
    assert task["status"] == "completed", task
    note = task["note"]
    assert note and "English only" in note, task
    spans = [(float(a), float(b)) for a, b in SPAN.findall(note)]
    assert len(spans) == 1, note
    (start, end), = spans
    assert abs(start - german_at) < 2.0 and end > length - 2.0, (note, german_at, length)
    result = task["result"]
    assert result["note"] == note
    words = " ".join(s["text"] for s in result["data"]).lower()
    assert "budget" in words and "friday" in words  # the English half is all there
    assert all(s["end_time"] <= german_at + 1.0 for s in result["data"]), result["data"]
    sent = (await webhook.wait_for(1))[0].json()
    assert sent["data"]["data"]["note"] == note


@pytest.mark.any_database
async def test_german_only_audio_is_said_not_to_be_english(start_gateway, tmp_path):
    path = espeak(" ".join(GERMAN_SENTENCES[:2]), tmp_path / "de.wav", voice="de")  # about 10 s
    gw = await start_gateway()
    task = await gw.wait(await gw.submit(asset_id=await gw.upload(path)), timeout=300)
    assert task["status"] == "completed", task
    assert task["note"].startswith("the audio does not seem to be in English"), task
    assert task["result"]["data"] == []  # the model's guesses are not passed off as what was said
    assert task["result"]["note"] == task["note"]


@pytest.mark.any_database
async def test_english_audio_has_no_note_and_the_payload_no_note_key(start_gateway, webhook, speech_wav):
    gw = await start_gateway(webhooks={"urls": [webhook.url]})
    task = await gw.wait(await gw.submit(asset_id=await gw.upload(speech_wav)), timeout=300)
    assert task["status"] == "completed" and task["result"]["data"], task
    assert (task["provider"], task["model"]) == ("local", "whisper-1")  # the default model is the engine's
    assert task["note"] is None
    assert "note" not in task["result"]
    sent = (await webhook.wait_for(1))[0].json()
    assert set(sent["data"]["data"]) == {"data", "usage_metadata"}


def callback_body(task_id: str, **extra) -> dict:
    return {"code": "0000", "message": "SUCCESS", "task_id": task_id,
            "data": {"msg": "transcription completed", "success": True, "data": {
                "data": [{"start_time": 0.0, "end_time": 1.0, "text": "Hello.", "speaker": None}],
                "usage_metadata": {"duration": 30.0, "model": "whisper-1", "output_tokens": 0,
                                   "prompt_tokens": 0}, **extra}}}


async def test_a_workers_note_arrives_through_the_callback_door_and_is_kept(start_gateway, speech_wav):
    """A worker on another machine reports over POST /callbacks/local: its note is stored (and so
    sent on: webhooks get the stored result); a result without one stays without."""
    gw = await start_gateway(worker=False)
    asset = await gw.upload(speech_wav)
    noted, plain = await gw.submit(asset_id=asset), await gw.submit(asset_id=asset)
    note = "speech from 2.0 s to 30.0 s could not be transcribed: the model transcribes English only"
    for task_id, extra in ((noted, {"note": note}), (plain, {})):
        status, body = await gw.call("POST", "/callbacks/local", json=callback_body(task_id, **extra))
        assert status == 200 and body["data"]["outcome"] == "accepted", body
    task = await gw.status(noted)
    assert task["note"] == note and task["result"]["note"] == note
    task = await gw.status(plain)
    assert task["note"] is None and "note" not in task["result"]
    status, page = await gw.call("GET", "/transcriptions")
    assert {t["task_id"]: t["note"] for t in page["data"]["items"]} == {noted: note, plain: None}
    status, body = await gw.call("POST", "/callbacks/local", json=callback_body(noted, note="other"))
    assert status == 409, body  # the note is part of the result: a different one is a conflict


# --- the plain functions ---------------------------------------------------------------------


def test_speech_no_segment_covers_is_found_joined_and_measured():
    speech = [(0.0, 10.0), (10.5, 20.0), (21.0, 21.4), (30.0, 40.0)]
    segments = [(0.2, 9.8), (30.0, 35.0)]
    got = untranscribed.uncovered(speech, segments)
    # 10.5..20 and 21..21.4 are joined (0.6 s apart); 35.5..40 is the tail of the last stretch
    assert [(round(a, 1), round(b, 1)) for a, b, _ in got] == [(10.5, 21.4), (35.5, 40.0)]
    assert round(got[0][2], 1) == round(9.5 + 0.4, 1)


def test_a_breath_between_segments_is_not_reported():
    assert untranscribed.uncovered([(0.0, 5.0), (5.2, 5.9), (6.5, 9.0)], [(0.0, 5.0), (6.5, 9.0)]) == []


def test_the_note_names_the_spans_and_counts_the_rest():
    spans = [(float(i * 10), i * 10 + 2.0, 2.0) for i in range(7)]
    speech = [(0.0, 100.0)]
    text = untranscribed.note(spans, speech, english_only=True)
    assert text.startswith("speech from 0.0 s to 2.0 s, from 10.0 s to 12.0 s")
    assert "and 2 more stretches (4.0 s of speech)" in text and "English only" in text
    assert untranscribed.note([], speech, english_only=True) is None
    assert untranscribed.note([(0.0, 9.5, 9.5)], [(0.0, 10.0)], english_only=True).startswith(
        "the audio does not seem to be in English")
    assert "could not make out words" in untranscribed.note([(0.0, 9.5, 9.5)], [(0.0, 10.0)], english_only=False)


def test_a_window_that_failed_at_every_temperature_is_failed():
    assert untranscribed.failed(-1.46, 1.6)      # French through tiny.en
    assert untranscribed.failed(-0.3, 10.2)      # a looping guess
    assert not untranscribed.failed(-0.19, 1.6)  # English
