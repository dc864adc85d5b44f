"""Speaker labelling (gateway/speakers.py): the pure steps on made-up data, then the whole
pipeline on generated espeak-ng conversations through the local engine (no database)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway import speakers
from gateway.audio import SAMPLE_RATE, decode
from gateway.config import EngineConfig
from gateway.engine import LocalEngine, TranscribeRequest
from gateway.payloads import Segment, Word as PayloadWord
from gateway.speakers import Hints, TimedSegment, Turn, Word

from conftest import espeak

# Voices whose GE2E embeddings differ clearly (cosine similarity ~0.6 between them, ~0.9
# within each), and two that are nearly alike (~0.9 between them).
VOICE_A, VOICE_B = "en-us+klatt", "en+f4"
ALIKE_A, ALIKE_B = "en-us", "en+grandpa"

LINES = [
    "The committee met on a rainy afternoon to discuss the new library.",
    "I think the reading rooms should face the river and the park.",
    "What about the cost of heating such a large open space in winter?",
    "The walls will be thick, and the windows will have three layers of glass.",
]
# Said only in the monologue. A monologue must not repeat itself word for word: whisper
# takes a window whose text compresses better than 2.4:1 for a hallucinated loop and
# resamples it at rising temperatures, so its transcript would be a matter of chance.
MORE_LINES = [
    "Children will have their own floor, with low shelves and a garden outside.",
    "The architect promised us drawings before the end of next month.",
    "Parking remains a problem, because the old market square is already full.",
    "We agreed to meet again in spring, once the budget has been approved.",
]


# --- the pure steps ----------------------------------------------------------------------


def words_of(*spec: tuple[float, float, str]) -> tuple[Word, ...]:
    return tuple(Word(start, end, " " + text) for start, end, text in spec)


def test_labels_are_numbered_by_first_appearance():
    names = speakers.names_by_first_appearance([7, 7, 2, 7, 0, 2])
    assert names == {7: "SPEAKER_00", 2: "SPEAKER_01", 0: "SPEAKER_02"}
    assert speakers.names_by_first_appearance([7, 2, 0], {2: "Alice"}) == {7: "SPEAKER_00", 2: "Alice",
                                                                          0: "SPEAKER_02"}


def test_segments_are_split_where_the_words_change_speaker():
    first = TimedSegment(0.0, 4.0, " Hello there. How are you?",
                         words_of((0.0, 0.5, "Hello"), (0.5, 1.0, "there."), (2.0, 2.5, "How"),
                                  (2.5, 3.0, "are"), (3.0, 4.0, "you?")))
    second = TimedSegment(4.5, 5.5, " Fine.", words_of((4.5, 5.5, "Fine.")))
    pieces = speakers.split_at_changes([first, second], [0, 0, 1, 1, 1, 0])
    assert [(s.start_time, s.end_time, s.text, label) for s, label in pieces] == [
        (0.0, 1.0, "Hello there.", 0), (2.0, 4.0, "How are you?", 1), (4.5, 5.5, "Fine.", 0)]
    assert [[w.word.strip() for w in s.words] for s, _ in pieces] == [["Hello", "there."], ["How", "are", "you?"],
                                                                      ["Fine."]]  # each piece its own words


def test_a_segment_without_a_change_keeps_whispers_text_and_times():
    seg = TimedSegment(0.2, 2.0, " One, two.", words_of((0.3, 0.9, "One,"), (1.0, 1.8, "two.")))
    [(piece, label)] = speakers.split_at_changes([seg], [1, 1])
    assert (piece.start_time, piece.end_time, piece.text, piece.speaker, label) == (0.2, 2.0, "One, two.", None, 1)
    assert piece.words == (PayloadWord(" One,", 0.3, 0.9), PayloadWord(" two.", 1.0, 1.8))  # for word timestamps


def test_words_take_the_turn_they_fall_in_or_the_nearest():
    turns = [Turn(0.0, 2.0, 0), Turn(2.0, 3.0, 1), Turn(5.0, 6.0, 0)]
    words = words_of((0.5, 1.0, "in-first"), (2.2, 2.6, "in-second"), (3.2, 3.4, "near-second"),
                     (4.4, 4.8, "near-third"), (9.0, 9.5, "after-all"))
    assert speakers.word_labels(words, turns) == [0, 1, 1, 0, 0]


def test_piece_edges_are_trimmed_to_speech_they_overlap():
    speech = [(1.0, 3.0), (4.0, 6.0)]
    pieces = [(Segment(0.5, 3.4, "a"), 0), (Segment(3.5, 6.5, "b"), 1), (Segment(7.0, 8.0, "c"), 0),
              (Segment(2.0, 5.0, "d"), 1)]
    trimmed = speakers.trim_to_speech(pieces, speech)
    assert [(s.start_time, s.end_time) for s, _ in trimmed] == [(1.0, 3.0), (4.0, 6.0), (7.0, 8.0), (2.0, 5.0)]


def test_pieces_widen_to_the_turns_of_their_speaker_but_not_into_their_neighbours():
    turns = [Turn(0.5, 3.0, 0), Turn(3.1, 6.0, 1), Turn(6.4, 7.0, 0)]
    pieces = [(Segment(1.0, 2.5, "a"), 0), (Segment(3.6, 5.0, "b"), 1), (Segment(5.2, 5.8, "c"), 1),
              (Segment(6.5, 6.8, "d"), 0), (Segment(8.0, 9.0, "e"), 1)]
    widened = speakers.cover_turns(pieces, turns)
    assert [(s.start_time, s.end_time, label) for s, label in widened] == [
        (0.5, 3.0, 0),      # to its whole turn
        (3.1, 5.2, 1),      # from its turn's start, up to the next piece of the same turn
        (5.2, 6.0, 1),
        (6.4, 7.0, 0),
        (8.0, 9.0, 1)]      # no turn of its speaker: as it was
    overlapping = [(Segment(0.0, 2.0, "x"), 0), (Segment(1.5, 2.9, "y"), 0)]   # never narrowed
    assert [(s.start_time, s.end_time) for s, _ in speakers.cover_turns(overlapping, turns)] == [(0.0, 2.0), (1.5, 3.0)]


def test_turns_of_one_speaker_bridge_a_short_pause_but_not_a_long_one():
    windows = speakers.Windows(np.array([0.0, 2.0, 4.5]), np.array([0, 1, 2]), np.zeros((3, 256), np.float32),
                               0.5, ((0.0, 1.6), (2.0, 3.6), (4.5, 6.1)))
    assert speakers.speaker_turns(windows, np.array([0, 0, 0]), bridge=0.5, pad=0.0) == (
        Turn(0.0, 3.6, 0), Turn(4.5, 6.1, 0))
    assert speakers.speaker_turns(windows, np.array([0, 1, 1]), bridge=1.0, pad=0.0) == (
        Turn(0.0, 1.6, 0), Turn(2.0, 6.1, 1))


def test_turns_leave_out_the_pad_the_vad_put_around_speech():
    """speech_regions pads each stretch by SPEECH_PAD_S, which transcription wants but no one
    said; a stretch too short to lose it keeps it."""
    windows = speakers.Windows(np.array([0.0, 0.5, 4.0]), np.array([0, 0, 1]), np.zeros((3, 256), np.float32),
                               0.5, ((0.0, 2.1), (3.85, 4.15)))
    assert speakers.SPEECH_PAD_S == 0.1
    turns = speakers.speaker_turns(windows, np.array([0, 1, 1]), bridge=0.0)
    assert [(round(t.start, 3), round(t.end, 3), t.label) for t in turns] == [(0.1, 1.05, 0), (1.05, 2.0, 1),
                                                                             (3.85, 4.15, 1)]


def test_quiet_audio_is_raised_to_the_encoders_loudness_and_silence_stays_silence():
    quiet = np.full(1600, 0.001, np.float32)
    assert 20 * np.log10(np.sqrt(np.mean(np.square(speakers.louder(quiet))))) == pytest.approx(-30, abs=0.01)
    loud = np.full(1600, 0.5, np.float32)
    assert speakers.louder(loud) is loud
    assert not speakers.louder(np.zeros(1600, np.float32)).any()


def test_windows_slide_through_speech_and_short_stretches_get_one_centred_window():
    starts, owners = speakers.window_starts([(0.0, 3.0), (4.0, 4.8), (9.5, 10.0)], duration=10.0, step_s=0.5)
    assert starts.tolist() == [0.0, 0.5, 1.0, 1.4, 3.6, 8.4]
    assert owners.tolist() == [0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize("hints, expected", [
    (Hints(), 3), (Hints(num_speakers=5), 5), (Hints(max_speakers=2), 2), (Hints(min_speakers=4), 4),
    (Hints(min_speakers=1, max_speakers=8), 3), (Hints(num_speakers=40), 10),
])
def test_speaker_count_follows_the_threshold_within_the_hints(hints, expected):
    merges = np.array([0.05, 0.1, 0.2, 0.5, 0.7])   # two merges above 0.3: three clusters
    assert speakers.speaker_count(merges, 0.3, hints, n=10) == expected


def voices(rng: np.random.Generator, centres: list[np.ndarray], counts: list[int], spread=0.15) -> np.ndarray:
    rows = [c + spread * rng.standard_normal((n, len(c))) for c, n in zip(centres, counts)]
    out = np.concatenate(rows)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_clustering_finds_separate_voices_and_obeys_an_exact_count():
    rng = np.random.default_rng(1)
    centres = [np.eye(16)[i] + 0.3 for i in range(3)]
    emb = voices(rng, centres, [12, 9, 7])
    labels = speakers.cluster(emb, threshold=0.3)
    assert len(set(labels[:12])) == len(set(labels[12:21])) == len(set(labels[21:])) == 1
    assert len(set(labels)) == 3
    assert len(set(speakers.cluster(emb, 0.3, Hints(num_speakers=2)))) == 2


def test_a_few_odd_windows_do_not_make_a_speaker_unless_asked_for():
    rng = np.random.default_rng(2)
    a, b = np.eye(16)[0] + 0.3, np.eye(16)[1] + 0.3
    emb = voices(rng, [a, b, a + 0.8 * np.eye(16)[2]], [20, 20, 2], spread=0.05)   # two windows near voice a
    assert len(set(speakers.cluster(emb, 0.05))) == 3
    assert len(set(speakers.cluster(emb, 0.05, min_windows=4))) == 2
    assert len(set(speakers.cluster(emb, 0.05, Hints(num_speakers=3), min_windows=4))) == 3


def test_a_short_turn_of_a_voice_unlike_the_others_stays_a_speaker():
    """The dissolve rule is by distance, not by duration alone: two windows of a distinct voice
    (the second voice of a 5-second clip) stay, two windows near another voice go."""
    rng = np.random.default_rng(4)
    distinct = voices(rng, [np.eye(16)[0], np.eye(16)[1]], [8, 2], spread=0.05)
    assert len(set(speakers.cluster(distinct, 0.3, min_windows=4))) == 2
    near = voices(rng, [np.eye(16)[0], np.eye(16)[0] + 0.5 * np.eye(16)[1]], [8, 2], spread=0.05)
    assert len(set(speakers.cluster(near, 0.05, min_windows=4))) == 1


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def toward(a: np.ndarray, b: np.ndarray, distance: float) -> np.ndarray:
    """The unit vector at cosine `distance` from unit vector `a`, in the plane of a and b."""
    side = unit(b - (b @ a) * a)
    angle = np.arccos(1 - distance)
    return np.cos(angle) * a + np.sin(angle) * side


def one_stretch(embeddings: np.ndarray, speech=((0.4, 4.4),)) -> speakers.Windows:
    """Windows 0.5 s apart through one stretch of speech (a 5-second clip)."""
    n = len(embeddings)
    return speakers.Windows(np.arange(n) * 0.5 + 0.4, np.zeros(n, dtype=int), embeddings.astype(np.float32),
                            0.5, speech)


def test_two_voices_in_five_seconds_are_told_apart_by_the_windows_at_either_end():
    """The middle windows of a 5-second clip straddle the change and mix both voices, which pulls
    the average distance under the threshold (0.25 here); the windows at either end hold one voice
    each, 0.36 apart: two speakers."""
    a = np.eye(16)[0]
    b = toward(a, np.eye(16)[1], 0.36)
    emb = unit(np.stack([a, a, 0.7 * a + 0.3 * b, 0.3 * a + 0.7 * b, b, b]))
    turns = speakers.label_with_windows([], one_stretch(emb), 0.28).turns
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01"]


def test_one_voice_in_five_seconds_is_never_split():
    """Windows of one voice spread as far as 0.41 apart in a 5-second clip: the two halves that
    complete linkage finds have centres close together, so they are one speaker."""
    rng = np.random.default_rng(5)
    emb = unit(np.eye(16)[0] + 0.16 * rng.standard_normal((8, 16)))
    assert len({t.speaker for t in speakers.label_with_windows([], one_stretch(emb), 0.28).turns}) == 1


@pytest.mark.parametrize("distance, expected", [(0.16, 2), (0.25, 3)])
def test_less_than_five_seconds_of_windows_close_to_a_voice_is_not_a_speaker(distance, expected):
    """In a conversation, 4 s of windows (8) whose centre lies within CLOSE_APART of a voice's
    (a mixture at its changes) are absorbed into it, though clustering keeps them apart; as far
    as two distinct voices are, they stay: a voice that speaks little."""
    rng = np.random.default_rng(6)
    a, b = np.eye(16)[0], np.eye(16)[1]
    counts = [30, 30, 8]
    centres = [a, b, toward(a, np.eye(16)[2], distance)]
    emb = unit(np.concatenate([c + 0.02 * rng.standard_normal((k, 16)) for c, k in zip(centres, counts)]))
    regions = np.repeat([0, 1, 2], counts)
    starts = np.concatenate([np.arange(k) * 0.5 + 20 * r for r, k in enumerate(counts)])
    speech = tuple((20.0 * r, 20.0 * r + 0.5 * k + 1.1) for r, k in enumerate(counts))
    assert len(set(speakers.cluster(emb, 0.1, regions=regions))) == 3
    windows = speakers.Windows(starts, regions, emb.astype(np.float32), 0.5, speech)
    assert len({t.speaker for t in speakers.label_with_windows([], windows, 0.1).turns}) == expected


def test_one_window_of_a_voice_unlike_the_others_in_a_conversation_is_not_a_speaker():
    """A lone window (1.6 s) in a conversation is absorbed however far it lies; in a 5-second
    clip, a turn of one window stays (the short clip's rule)."""
    rng = np.random.default_rng(7)
    counts = [30, 30, 1]
    emb = unit(np.concatenate([np.eye(16)[i] + 0.02 * rng.standard_normal((k, 16)) for i, k in enumerate(counts)]))
    regions = np.repeat([0, 1, 2], counts)
    starts = np.concatenate([np.arange(k) * 0.5 + 20 * r for r, k in enumerate(counts)])
    speech = tuple((20.0 * r, 20.0 * r + 0.5 * k + 1.1) for r, k in enumerate(counts))
    windows = speakers.Windows(starts, regions, emb.astype(np.float32), 0.5, speech)
    assert len({t.speaker for t in speakers.label_with_windows([], windows, 0.28).turns}) == 2
    assert len(set(speakers.cluster(emb[-6:], 0.28, min_windows=5, short=True))) == 2


def two_voices_in_turn() -> speakers.Windows:
    """Voice a speaks 0-16 s, voice b 20-36 s, voice a again 40-56 s (30 windows each)."""
    rng = np.random.default_rng(8)
    counts, voice = [30, 30, 30], [0, 1, 0]
    emb = unit(np.concatenate([np.eye(16)[v] + 0.02 * rng.standard_normal((k, 16)) for v, k in zip(voice, counts)]))
    regions = np.repeat([0, 1, 2], counts)
    starts = np.concatenate([np.arange(k) * 0.5 + 20 * r for r, k in enumerate(counts)])
    speech = tuple((20.0 * r, 20.0 * r + 0.5 * k + 1.1) for r, k in enumerate(counts))
    return speakers.Windows(starts, regions, emb.astype(np.float32), 0.5, speech)


def test_the_timeline_names_voices_as_the_segments_do_and_one_heard_only_there_after_them():
    """Only voice b's speech was transcribed: it is SPEAKER_00 in the segments and the turns;
    voice a, heard first but never transcribed, is SPEAKER_01 in the turns."""
    said = TimedSegment(21.0, 30.0, " Nothing but b.", words_of((21.0, 25.0, "Nothing"), (25.5, 30.0, "but b.")))
    labelled = speakers.label_with_windows([said], two_voices_in_turn(), 0.28)
    assert [s.speaker for s in labelled.segments] == ["SPEAKER_00"]
    assert [(t.start_time, t.speaker) for t in labelled.turns] == [(0.1, "SPEAKER_01"), (20.1, "SPEAKER_00"),
                                                                   (40.1, "SPEAKER_01")]
    assert labelled.turns[-1].end_time == pytest.approx(56.0)   # the stretches without the VAD's pad
    named = speakers.label_with_windows([said], two_voices_in_turn(), 0.28, known=lambda centres: {
        label: "Alice" for label, centre in centres.items() if centre[0] > 0.9})
    assert [t.speaker for t in named.turns] == ["Alice", "SPEAKER_00", "Alice"]


def test_speech_that_nothing_was_transcribed_of_still_has_its_turns():
    windows = two_voices_in_turn()
    labelled = speakers.label_speakers([], [windows], 60.0, threshold=0.28)
    assert labelled.segments == () and labelled.note is None
    assert [t.speaker for t in labelled.turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]


def test_windows_straddling_a_change_between_two_others_are_transitions():
    labels = np.array([0, 0, 0, 2, 2, 1, 1, 1, 2, 0, 0, 1, 1, 1, 1, 0])
    regions = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert np.flatnonzero(speakers.transition_windows(labels, regions)).tolist() == [3, 4, 8]


def test_a_mixture_of_two_voices_at_their_changes_is_not_a_third_voice():
    rng = np.random.default_rng(3)
    a, b = np.eye(16)[0] + 0.1, np.eye(16)[1] + 0.1
    mixed = (a + b) / 2
    centres, counts = [a, mixed, b, mixed, a, mixed, b], [8, 2, 8, 2, 8, 2, 8]
    emb = voices(rng, centres, counts, spread=0.03)
    one_stretch = np.zeros(len(emb), dtype=int)
    assert len(set(speakers.cluster(emb, 0.1))) == 3            # without time, the mixture looks like a voice
    labels = speakers.cluster(emb, 0.1, regions=one_stretch)
    assert len(set(labels)) == 2
    assert len(set(labels[:8])) == len(set(labels[10:18])) == 1 and labels[0] != labels[10]
    assert len(set(speakers.cluster(emb, 0.1, Hints(min_speakers=3), regions=one_stretch))) == 3


def test_a_mixture_at_the_edges_of_stretches_near_one_voice_is_not_a_voice():
    """Windows that straddle the start or end of turns (a voice and the next one's first sound,
    with no pause long enough to split the stretch) gather into a small cluster near one voice;
    each such run borders only one other voice, so it is no transition, but half its windows
    border another voice within their stretch: dissolved. A voice as small and as close whose
    short turns border another voice with a third of their windows (runs of 3, a quick
    exchange), or whose replies are stretches of their own, stays; so does a far voice."""
    rng = np.random.default_rng(9)
    a, b, far = np.eye(16)[0], np.eye(16)[1], np.eye(16)[3]
    close = toward(a, np.eye(16)[2], 0.2)          # 0.2 from a: under BORDER_APART, over CLOSE_APART

    def clip(small, run=2, stretch_of_its_own=False):
        layout = [(a, 10, 0), (small, run, 0), (b, 10, 1), (small, run, 2), (b, 10, 2), (a, 10, 3), (small, run, 3)]
        if stretch_of_its_own:  # the small cluster's windows each in a stretch of their own
            layout = [(c, k, r) for (c, k, r) in layout if c is not small] + [(small, run, 4 + i) for i in range(3)]
        emb = unit(np.concatenate([c + 0.02 * rng.standard_normal((k, 16)) for c, k, _ in layout]))
        regions = np.concatenate([[r] * k for _, k, r in layout])
        order = np.argsort(regions, kind="stable")
        return emb[order], regions[order]

    emb, regions = clip(close)
    assert len(set(speakers.cluster(emb, 0.1, min_windows=5))) == 3        # without time: a third voice
    assert len(set(speakers.cluster(emb, 0.1, min_windows=5, regions=regions))) == 2
    assert len(set(speakers.cluster(emb, 0.1, Hints(min_speakers=3), 5, regions))) == 3
    for small, run, own in ((close, 3, False), (close, 2, True), (far, 2, False)):
        emb, regions = clip(small, run, own)
        assert len(set(speakers.cluster(emb, 0.1, min_windows=5, regions=regions))) == 3, (run, own)


def test_smoothing_removes_a_stray_window_but_keeps_a_short_reply():
    labels = np.array([0, 0, 1, 0, 0, 1, 0])
    regions = np.array([0, 0, 0, 0, 0, 1, 2])      # window 5 is alone in its stretch of speech
    assert speakers.smooth(labels, regions).tolist() == [0, 0, 0, 0, 0, 1, 0]


# --- the whole pipeline on generated audio -----------------------------------------------


def conversation(tmp: Path, name: str, turns: list[tuple[str, str]], gaps: list[float]) -> tuple[Path, list]:
    """The turns spoken by their voices, one after the other with the given pauses; with the
    reference (start, end, voice) of each turn."""
    audio, reference, at = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)], [], 0.3
    for i, (voice, text) in enumerate(turns):
        said = decode(str(espeak(text, tmp / f"{name}-{i}.wav", voice=voice)))
        gap = gaps[i] if i < len(gaps) else 0.3
        reference.append((at, at + len(said) / SAMPLE_RATE, voice))
        audio += [said, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        at += (len(said) + int(gap * SAMPLE_RATE)) / SAMPLE_RATE
    return write_wav(tmp / f"{name}.wav", np.concatenate(audio)), reference


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def engine():
    eng = LocalEngine(EngineConfig())
    yield eng
    eng.close()


async def label(engine: LocalEngine, path: Path, **hints):
    return await engine.transcribe(TranscribeRequest(path=str(path), speaker=True, hints=Hints(**hints)),
                                   lambda f: None)


def voice_at(reference, t: float) -> str | None:
    return next((v for start, end, v in reference if start - 0.3 <= t <= end + 0.3), None)


def runs(labels: list[str]) -> list[str]:
    return [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]


async def test_labels_alternate_where_the_voices_alternate(engine, tmp_path):
    turns = [(VOICE_A, LINES[0]), (VOICE_B, LINES[1]), (VOICE_A, LINES[2]), (VOICE_B, LINES[3])]
    wav, reference = conversation(tmp_path, "alternate", turns, gaps=[0.6, 0.1, 0.6])  # one quick exchange
    outcome = await label(engine, wav)
    assert outcome.speaker_note is None
    assert runs([s.speaker for s in outcome.segments]) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00", "SPEAKER_01"]
    named = {VOICE_A: "SPEAKER_00", VOICE_B: "SPEAKER_01"}
    for seg in outcome.segments:   # no segment spans a change: each sits in a turn of its voice
        assert seg.speaker == named[voice_at(reference, (seg.start_time + seg.end_time) / 2)], seg


async def test_one_long_monologue_is_one_speaker(engine, tmp_path):
    wav, _ = conversation(tmp_path, "monologue", [(VOICE_A, " ".join(LINES + MORE_LINES))], gaps=[])
    outcome = await label(engine, wav)
    assert outcome.speaker_note is None
    assert len(outcome.segments) > 1
    assert {s.speaker for s in outcome.segments} == {"SPEAKER_00"}


async def test_two_distinct_voices_in_five_seconds_are_two_speakers(engine, tmp_path):
    """Each voice has less speech than MIN_SPEAKER_S: the voices' distance decides, not their duration."""
    turns = [(VOICE_A, "The train was late again this morning."), (VOICE_B, "Did you get my message?")]
    wav, reference = conversation(tmp_path, "five", turns, gaps=[0.4])
    assert reference[-1][1] < 5.5
    outcome = await label(engine, wav)
    assert runs([s.speaker for s in outcome.segments]) == ["SPEAKER_00", "SPEAKER_01"], outcome.segments


async def test_one_voice_in_five_seconds_is_one_speaker(engine, tmp_path):
    turns = [(VOICE_B, "The train was late again this morning."), (VOICE_B, "Did you get my message?")]
    wav, _ = conversation(tmp_path, "five-one", turns, gaps=[0.4])
    outcome = await label(engine, wav)
    assert outcome.segments and {s.speaker for s in outcome.segments} == {"SPEAKER_00"}


async def stopped(engine: LocalEngine, req: TranscribeRequest, when) -> list[float]:
    """The progress `engine` reported for `req`, closed (as on SIGTERM) at the first fraction
    `when` holds true of; the job must stop with EngineStopped."""
    from gateway.engine import EngineStopped

    seen: list[float] = []

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        if when(fraction):
            engine.close()

    try:
        with pytest.raises(EngineStopped):
            await engine.transcribe(req, on_progress)
    finally:
        engine.close()
    return seen


async def test_labelling_reports_progress_per_batch_and_stops_there_when_the_engine_closes(tmp_path):
    """Embedding the windows after sequential decoding (batch_size 0): progress moves after each
    batch, and a closing engine (SIGTERM) stops the job at the next batch instead of finishing it."""
    from gateway.engine import TRANSCRIBED

    wav, _ = conversation(tmp_path, "monologue", [(VOICE_A, " ".join(LINES + MORE_LINES))], gaps=[])
    engine = LocalEngine(EngineConfig(speaker_step_s=0.1, batch_size=0))  # 35 s of speech: 3 batches of windows
    seen = await stopped(engine, TranscribeRequest(path=str(wav), speaker=True),
                         lambda fraction: fraction > TRANSCRIBED)  # the first batch of windows is embedded
    labelling = [f for f in seen if f > TRANSCRIBED]
    assert seen == sorted(seen) and labelling and max(labelling) < 0.95, seen  # stopped about a tenth in


async def test_labelling_beside_batched_decoding_stops_with_it_when_the_engine_closes(tmp_path):
    """With batched decoding the windows are embedded on a thread beside the decoder: a closing
    engine stops the job at the decoder's next batch, and the embedding beside it at its next."""
    from gateway.engine import TRANSCRIBED

    wav, _ = conversation(tmp_path, "monologue", [(VOICE_A, " ".join(LINES + MORE_LINES))], gaps=[])
    engine = LocalEngine(EngineConfig(speaker_step_s=0.1, batch_size=1))  # windows of 35 s: batches of one
    seen = await stopped(engine, TranscribeRequest(path=str(wav), speaker=True),
                         lambda fraction: fraction > 0)  # the first window is decoded
    assert seen == sorted(seen) and 0 < max(seen) < TRANSCRIBED, seen
    beside = engine._vad._threads  # the engine's pool the embedding ran on
    deadline = time.monotonic() + 10  # the embedding stops at its next batch of windows
    while any(t.is_alive() for t in beside) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert beside and not any(t.is_alive() for t in beside)


async def test_audio_shorter_than_the_embedding_window_is_one_speaker_with_a_note(engine, tmp_path):
    wav = espeak("Yes, thanks.", tmp_path / "short.wav")
    outcome = await label(engine, wav)
    assert outcome.segments and {s.speaker for s in outcome.segments} == {"SPEAKER_00"}
    assert outcome.speaker_note.startswith("speaker labelling skipped: the audio (")
    assert "shorter than the 1.6 s embedding window; all segments are SPEAKER_00" in outcome.speaker_note


async def test_less_speech_than_a_window_in_longer_audio_is_one_speaker_with_a_note(engine, tmp_path):
    wav, _ = conversation(tmp_path, "brief", [(VOICE_B, "Yes.")], gaps=[3.0])
    outcome = await label(engine, wav)
    assert outcome.segments and {s.speaker for s in outcome.segments} == {"SPEAKER_00"}
    assert outcome.speaker_note == ("speaker labelling skipped: there is less speech than the 1.6 s "
                                    "embedding window; all segments are SPEAKER_00")


async def test_silence_only_gives_no_segments_and_says_why(engine, tmp_path):
    wav = tmp_path / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(wav), "trim", "0", "4"], check=True)
    outcome = await label(engine, wav)
    assert outcome.success and outcome.segments == ()
    assert outcome.speaker_note == "speaker labelling skipped: no speech was transcribed"


async def test_voices_that_sound_alike_still_get_valid_labels(engine, tmp_path):
    turns = [(ALIKE_A, LINES[0]), (ALIKE_B, LINES[1]), (ALIKE_A, LINES[2])]
    wav, _ = conversation(tmp_path, "alike", turns, gaps=[0.5, 0.5])
    for hints in ({}, {"num_speakers": 2}):
        outcome = await label(engine, wav, **hints)
        names = [s.speaker for s in outcome.segments]
        assert outcome.speaker_note is None and names[0] == "SPEAKER_00"
        assert sorted(set(names)) == [f"SPEAKER_{i:02d}" for i in range(len(set(names)))]
        assert len(set(names)) <= 2


# --- through the API ---------------------------------------------------------------------


@pytest.mark.any_database
async def test_speaker_true_labels_segments_through_the_api(gateway, webhook, tmp_path):
    turns = [(VOICE_A, LINES[0]), (VOICE_B, LINES[1]), (VOICE_A, LINES[2])]
    wav, _ = conversation(tmp_path, "api", turns, gaps=[0.6, 0.6])
    task_id = await gateway.submit(asset_id=await gateway.upload(wav), speaker=True, max_speakers=4,
                                   callback_url=webhook.url)
    task = await gateway.wait(task_id, timeout=120)
    assert task["status"] == "completed" and task["speaker_note"] is None
    segments = task["result"]["data"]
    assert runs([s["speaker"] for s in segments]) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    body = (await webhook.wait_for(1))[0].json()   # the callback contract, unchanged
    assert set(body) == {"code", "message", "data", "task_id"}
    assert set(body["data"]["data"]) == {"data", "usage_metadata"}
    assert body["data"]["data"]["data"] == segments
    assert all(set(s) == {"start_time", "end_time", "text", "speaker"} for s in segments)


def covered(reference: list, turns: list[dict]) -> float:
    """The share of the reference's speech that the turns cover."""
    said = sum(end - start for start, end, _ in reference)
    return sum(max(0.0, min(end, t["end_time"]) - max(start, t["start_time"]))
               for start, end, _ in reference for t in turns) / said


async def test_speaker_turns_cover_the_speech_and_come_in_every_answer(gateway, webhook, tmp_path):
    """speaker_turns=true: the sync answer, the status's result and the signed callback all carry
    the turns; they cover the voices' speech, each turn of the right voice, named as the
    segments are."""
    turns = [(VOICE_A, LINES[0]), (VOICE_B, LINES[1]), (VOICE_A, LINES[2])]
    wav, reference = conversation(tmp_path, "turns", turns, gaps=[0.8, 0.8])
    status, body = await gateway.call("POST", "/transcriptions/sync-generate-audio", json={
        "asset_id": await gateway.upload(wav), "speaker": True, "speaker_turns": True, "callback_url": webhook.url})
    assert status == 200, body
    spoken = body["data"]["turns"]
    assert covered(reference, spoken) > 0.9, spoken   # the reference holds espeak-ng's trailing silence
    assert runs([t["speaker"] for t in spoken]) == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"], spoken
    named = {VOICE_A: "SPEAKER_00", VOICE_B: "SPEAKER_01"}
    for t in spoken:
        assert t["speaker"] == named[voice_at(reference, (t["start_time"] + t["end_time"]) / 2)], t
    assert {i["speaker"] for i in body["data"]["items"]} == {"SPEAKER_00", "SPEAKER_01"}
    task = await gateway.status(body["data"]["task_id"])
    assert task["result"]["turns"] == spoken
    assert (await webhook.wait_for(1))[0].json()["data"]["data"]["turns"] == spoken


@pytest.mark.any_database
async def test_when_labelling_cannot_be_done_the_status_says_why(gateway, tmp_path):
    wav = espeak("Yes, thanks.", tmp_path / "short.wav")
    status, body = await gateway.call("POST", "/transcriptions/sync-generate-audio",
                                      json={"asset_id": await gateway.upload(wav), "speaker": True})
    assert status == 200, body
    assert body["data"]["items"] and {i["speaker"] for i in body["data"]["items"]} == {"SPEAKER_00"}
    task = await gateway.status(body["data"]["task_id"])
    assert "shorter than the 1.6 s embedding window; all segments are SPEAKER_00" in task["speaker_note"]
    plain = await gateway.wait(await gateway.submit(asset_id=await gateway.upload(wav)))
    assert plain["speaker_note"] is None and {s["speaker"] for s in plain["result"]["data"]} == {None}
