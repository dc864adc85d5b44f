"""Reading audio in bounded memory (gateway/audio.py): the length measured from metadata and
while decoding, the audio handed to the engine in blocks, and the engine's work (times,
speaker labels, progress) joined across blocks."""

from __future__ import annotations

import subprocess
import tracemalloc

import numpy as np
import pytest

from gateway import audio, speakers
from gateway.config import EngineConfig
from gateway.engine import LocalEngine, TranscribeRequest

from test_audio_limits import TEN_HOURS, bombs  # noqa: F401 (a fixture)
from test_speakers import LINES, VOICE_A, VOICE_B, conversation, runs


# --- the limit, before and while decoding ------------------------------------------------


def test_the_limit_is_read_from_metadata_then_enforced_while_decoding(bombs):
    with pytest.raises(audio.AudioTooLong) as declared:
        audio.measure(str(bombs["declared"]), 14400)
    assert str(declared.value) == ("the audio is longer than server.max_audio_s (14400 s): "
                                   "its metadata declares 36000 s")
    with pytest.raises(audio.AudioTooLong) as undeclared:
        audio.measure(str(bombs["undeclared"]), 14400)
    assert str(undeclared.value) == "the audio is longer than server.max_audio_s (14400 s): decoding passed 14400 s"
    with pytest.raises(audio.AudioTooLong) as lying:
        audio.measure(str(bombs["lying"]), 14400)
    assert str(lying.value) == ("the audio is longer than server.max_audio_s (14400 s): "
                                "decoding passed 14400 s (its metadata declares 60 s)")
    assert audio.measure(str(bombs["lying"]), TEN_HOURS + 1) == pytest.approx(TEN_HOURS)


def test_decoding_holds_one_block_whatever_the_files_length(bombs):
    """An hour of audio is 230 MB of float32 in one array; in blocks of 10 minutes the decoder
    holds the block it fills and the one its consumer works on (38 MB each), whatever the length."""
    block_s, seen = 600, []
    tracemalloc.start()
    try:
        for block in audio.blocks(str(bombs["undeclared"]), block_s):
            seen.append((block.offset, block.duration))
            if len(seen) == 6:  # an hour is enough
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [offset for offset, _ in seen] == pytest.approx(np.cumsum([0] + [d for _, d in seen[:-1]]))
    assert all(block_s - audio.CUT_SEARCH_S <= d <= block_s for _, d in seen)  # cut within its last 10 s
    assert peak < 2.5 * block_s * audio.SAMPLE_RATE * 4, f"peak {peak / 2**20:.0f} MB"


def test_a_block_ends_at_the_quietest_moment_near_its_end():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.5, 0.5, 40 * audio.SAMPLE_RATE).astype(np.float32)
    noise[int(33.2 * audio.SAMPLE_RATE):int(33.5 * audio.SAMPLE_RATE)] = 0  # a pause 7 s before the end
    noise[int(10 * audio.SAMPLE_RATE):int(12 * audio.SAMPLE_RATE)] = 0      # too early to be looked at
    cut = audio.quiet_cut(noise) / audio.SAMPLE_RATE
    assert 33.2 <= cut <= 33.5


def test_blocks_together_are_the_whole_decoded_audio(tmp_path, speech_wav):
    long = tmp_path / "long.wav"
    subprocess.run(["sox", str(speech_wav), str(long), "repeat", "19"], check=True)  # about 80 s
    pieces = list(audio.blocks(str(long), 30))
    assert len(pieces) >= 3 and all(20 <= p.duration <= 30 for p in pieces[:-1])  # cut in a pause before 30 s
    assert 3 <= pieces[-1].duration <= 33
    assert [p.offset for p in pieces] == pytest.approx(np.cumsum([0] + [p.duration for p in pieces[:-1]]))
    assert np.array_equal(np.concatenate([p.samples for p in pieces]), audio.decode(str(long)))


# --- the engine, block by block ----------------------------------------------------------


async def test_labels_and_times_run_across_blocks(tmp_path):
    """Speaker labelling clusters the voice windows of every block together: the same voices get
    the same labels on either side of a block's end, and every time is the file's."""
    turns = [(VOICE_A, LINES[0]), (VOICE_B, LINES[1]), (VOICE_A, LINES[2]), (VOICE_B, LINES[3])] * 2
    wav, _ = conversation(tmp_path, "blocks", turns, gaps=[0.6] * 7)
    second = [b.offset for b in audio.blocks(str(wav), 30)][1]  # about 36 s: two blocks of 30 s
    engine = LocalEngine(EngineConfig(block_s=30))
    seen: list[float] = []
    try:
        outcome = await engine.transcribe(TranscribeRequest(path=str(wav), speaker=True), seen.append)
    finally:
        engine.close()
    assert outcome.speaker_note is None
    assert runs([s.speaker for s in outcome.segments]) == ["SPEAKER_00", "SPEAKER_01"] * 4
    starts = [s.start_time for s in outcome.segments]
    assert starts == sorted(starts) and outcome.segments[-1].end_time <= outcome.duration
    assert outcome.segments[-1].start_time > second  # from the second block, in the file's time
    assert seen == sorted(seen) and any(0.2 < f < 0.8 for f in seen), seen


def test_clustering_hours_of_speech_holds_a_bounded_number_of_distances():
    """Four hours of speech are ~29,000 voice windows: all their pairwise distances would be
    3.3 GB. At most MAX_CLUSTERED windows are clustered, the others go to the nearest centre."""
    rng = np.random.default_rng(0)
    voices = rng.normal(size=(3, 256))
    n = 8000  # 256 MB of distances between all of them
    truth = np.repeat(np.arange(3), n // 3 + 1)[:n]
    embeddings = voices[truth] + rng.normal(scale=0.15, size=(n, 256))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    tracemalloc.start()
    try:
        labels = speakers.cluster(embeddings, 0.28, regions=truth)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert len(set(labels)) == 3
    assert all(len(set(labels[truth == v])) == 1 for v in range(3))  # each voice one cluster
