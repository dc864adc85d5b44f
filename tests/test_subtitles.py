"""Subtitles: cue conventions, real parsers (pysubs2, srt), ffmpeg conversion, the srt plugin's
atomic idempotent files, and the same renderings served by the API."""

from __future__ import annotations

import asyncio
import re
import subprocess

import pysubs2
import pytest
import srt as srt_lib

from conftest import ECHO
from gateway.payloads import Segment
from gateway.subtitles import MAX_CHARS, MAX_CUE_S, make_cues, to_srt, to_vtt

LONG = ("This is a deliberately long segment that goes on and on about the quarterly numbers, "
        "the launch schedule, the budget for the new servers and everything else that was said "
        "in a meeting that nobody wanted to attend on a rainy Monday morning in November.")

SEGMENTS = [
    Segment(0.0, 2.0, "Hello there.", "SPEAKER_00"),
    Segment(1.8, 20.0, LONG, "SPEAKER_01"),  # overlaps the previous one and is far too long for a cue
    Segment(20.0, 21.5, "Thanks, bye.", "SPEAKER_00"),
]


def test_cues_follow_subtitle_conventions():
    cues = make_cues(SEGMENTS)
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2
        assert all(len(line) <= MAX_CHARS for line in cue.lines), cue.lines
        assert cue.end - cue.start <= MAX_CUE_S + 1e-6
        assert cue.end > cue.start
    for a, b in zip(cues, cues[1:]):
        assert a.end <= b.start  # no overlap
    words = " ".join(" ".join(c.lines) for c in cues).split()
    expected = " ".join(f"{s.speaker}: {s.text}" for s in SEGMENTS).split()
    labels = [w for w in words if w.startswith("SPEAKER_")]
    assert labels == ["SPEAKER_00:", "SPEAKER_01:", "SPEAKER_00:"]  # named at each change of speaker
    assert make_cues([Segment(0, 1, "a", "SPEAKER_00"), Segment(1, 2, "b", "SPEAKER_00")])[1].lines == ("b",)
    assert [w for w in words if not w.startswith("SPEAKER_")] == [w for w in expected if not w.startswith("SPEAKER_")]
    assert cues[-1].end == 21.5


def test_a_word_too_long_for_a_cue_is_broken_across_cues():
    word = "x" * 21_000  # one "word" of 21,000 characters: 500 lines of 42 if it stayed one cue
    segments = [Segment(0.0, 3.0, "Before it.", None), Segment(3.0, 9.0, f"a {word} b", "SPEAKER_00")]
    cues = make_cues(segments)
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2 and all(len(line) <= MAX_CHARS for line in cue.lines), cue.lines
    for a, b in zip(cues, cues[1:]):
        assert a.start < a.end <= b.start
    text = "".join("".join(c.lines) for c in cues).replace(" ", "")
    assert text == "Beforeit." + "SPEAKER_00:" + "a" + word + "b"  # every character kept, in order
    assert len(list(srt_lib.parse(to_srt(segments)))) == len(cues)


def test_parsers_read_what_we_write(tmp_path):
    srt_text = to_srt(SEGMENTS)
    parsed = list(srt_lib.parse(srt_text))
    assert len(parsed) == len(make_cues(SEGMENTS))
    assert parsed[0].content == "SPEAKER_00: Hello there." and parsed[0].end.total_seconds() == 2.0

    vtt_path = tmp_path / "x.vtt"
    vtt_path.write_text(to_vtt(SEGMENTS))
    subs = pysubs2.load(str(vtt_path))
    assert subs[0].plaintext == "Hello there."
    assert len(subs) == len(parsed)
    assert "<v SPEAKER_01>" in vtt_path.read_text()

    srt_path = tmp_path / "x.srt"
    srt_path.write_text(srt_text)
    assert len(pysubs2.load(str(srt_path))) == len(parsed)
    ass = tmp_path / "x.ass"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(srt_path), str(ass)], check=True)
    assert "Dialogue:" in ass.read_text()
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n"


async def test_srt_plugin_writes_files_and_api_serves_the_same(start_gateway, speech_script, tmp_path):
    out = tmp_path / "subs"
    gw = await start_gateway(plugins={"srt": {"output_dir": str(out), "formats": ["srt", "vtt", "txt"]}})
    task_id = await gw.submit(asset_id=await gw.upload(speech_script), model=ECHO)
    await gw.wait(task_id)
    files = {ext: out / f"{task_id}.{ext}" for ext in ("srt", "vtt", "txt")}
    for _ in range(100):
        if all(p.exists() for p in files.values()):
            break
        await asyncio.sleep(0.05)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files.values())  # no temp files
    for ext, path in files.items():
        async with gw.http.get(f"{gw.base}/transcriptions/{task_id}/transcript.{ext}") as resp:
            assert resp.status == 200
            assert await resp.text() == path.read_text()
    cues = list(srt_lib.parse(files["srt"].read_text()))
    assert "gateway" in " ".join(c.content for c in cues).lower()
    ass = tmp_path / "t.ass"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(files["srt"]), str(ass)], check=True)

    # A repeated delivery rewrites the same bytes.
    before = {ext: p.read_bytes() for ext, p in files.items()}
    status, _ = await gw.call("POST", f"/transcriptions/{task_id}/redeliver", params={"target": "plugin:srt"})
    assert status == 200
    for _ in range(100):
        if (await gw.status(task_id))["deliveries"] and all(
                d["status"] == "delivered" and d["attempts"] == 1 for d in (await gw.status(task_id))["deliveries"]):
            break
        await asyncio.sleep(0.05)
    assert {ext: p.read_bytes() for ext, p in files.items()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files.values())

    async with gw.http.get(f"{gw.base}/transcriptions/{task_id}/transcript.json") as resp:
        assert (await resp.json())["usage_metadata"]["model"] == ECHO


async def test_transcript_endpoint_errors(start_gateway, speech_wav):
    gateway = await start_gateway(providers={"echo": {"delay_s": 600}})  # its task is surely unfinished
    status, body = await gateway.call("GET", "/transcriptions/" + "0" * 32 + "/transcript.srt")
    assert status == 404
    status, body = await gateway.call("GET", "/transcriptions/" + "0" * 32 + "/transcript.doc")
    assert status == 404 and body["msg"] == "no transcript format 'doc'; use one of srt, vtt, txt, json"
    task_id = await gateway.submit(asset_id=await gateway.upload(speech_wav), model=ECHO)
    status, body = await gateway.call("GET", f"/transcriptions/{task_id}/transcript.srt")
    assert status == 409, body  # still running: the answer says so
    assert re.fullmatch(f"task {task_id} is (queued|processing); a transcript exists once it is completed",
                        body["msg"]), body


def test_subtitle_files_are_replaced_whole(tmp_path):
    """write_atomic puts a new file in place by a rename: a reader of the old one keeps reading
    it whole, a write that fails half-way leaves the old file, and no temp file stays behind."""
    from gateway.subtitles import write_atomic

    target = tmp_path / "deep" / "a.srt"
    write_atomic(target, "x")
    with open(target) as reader:
        write_atomic(target, "y")
        assert reader.read() == "x"  # the old file, not rewritten under its reader
    assert target.read_text() == "y"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "z" * 10_000 + "\ud800")  # fails while writing
    assert target.read_text() == "y" and [p.name for p in target.parent.iterdir()] == ["a.srt"]
