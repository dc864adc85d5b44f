"""Batched decoding (gateway/batching.py, engine.batch_size): the windows it cuts, what it does
where faster-whisper's batched pipeline falls short of the sequential decoder (a window's
unfinished end, a window that fails the quality checks), with a scripted pipeline; then the
real engine on a short conversation: timestamps, words, progress per batch, stopping."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import faster_whisper
import numpy as np
import pytest
from faster_whisper.transcribe import Segment, Word

from gateway import batching, untranscribed
from gateway.config import EngineConfig
from gateway.engine import LocalEngine, TranscribeRequest
from gateway.options import TaskOptions

from conftest import LONG_SPEECH
from test_speakers import LINES, MORE_LINES, VOICE_A, VOICE_B, conversation, stopped


def W(*pieces: tuple[float, float]) -> batching.Window:
    return batching.Window(tuple(pieces))


def test_stretches_of_speech_are_packed_into_windows_with_their_pauses_shortened():
    regions = [(0.5, 8.0), (8.0, 12.0), (13.0, 20.0), (21.0, 27.0), (28.0, 30.0),  # fills 27 s
               (31.0, 35.0), (39.0, 40.0),  # a pause of 4 s: a new window
               (40.5, 75.0)]  # longer than a window alone: cut
    assert batching.packed(regions, 27.0) == [W((0.5, 8.0), (8.0, 12.0), (13.0, 20.0)),
                                              W((21.0, 27.0), (28.0, 30.0), (31.0, 35.0)),  # not 6 s alone
                                              W((39.0, 40.0)), W((40.5, 67.5))]  # after a long pause: alone


def test_a_short_window_after_a_full_one_takes_speech_from_its_end():
    """A second or two of speech alone in a window gives Whisper little to go on (the last
    second of German after English was heard as English words of good probability); within a
    run of speech the last window takes stretches from the one before while it is short."""
    regions = [(float(i), i + 0.8) for i in range(30)]  # 30 stretches of 0.8 s, 0.2-s pauses
    windows = batching.packed(regions, 27.0)
    assert [len(w.pieces) for w in windows] == [19, 11]  # greedily 27 and 3; now the last is 10.8 s
    assert windows[0].end < windows[1].start and sum(len(w.pieces) for w in windows) == 30
    assert batching.packed([(0.0, 26.0), (26.5, 27.5)], 27.0) == [W((0.0, 26.0)), W((26.5, 27.5))]  # nothing to move


def test_times_in_a_window_map_back_to_the_audio():
    window = W((0.5, 8.0), (8.0, 12.0), (13.0, 20.0))
    assert window.at == pytest.approx((0.0, 7.5, 11.7)) and window.length == pytest.approx(18.7)  # 1-s pause as 0.2 s
    assert ([window.to_audio(t) for t in (0.0, 7.6, 11.5, 11.8, 18.7, 25.0)]
            == pytest.approx([0.5, 8.1, 12.0, 13.1, 20.0, 20.0]))
    assert len(window.after(11.8).pieces) == 1 and window.after(11.8).pieces[0] == pytest.approx((13.1, 20.0))
    assert window.after(5.0) == W((5.5, 8.0), (8.0, 12.0), (13.0, 20.0))


def test_each_window_is_followed_by_silence_to_30_s():
    """The pipeline pads the log-mel of a window shorter than 30 s with zeros, which is not
    silence: tiny.en transcribed such windows worse ('that leaves us very' became 'at least must
    marry'). Each window is given as its audio followed by true silence (docs/ARCHITECTURE.md)."""
    audio = np.arange(70 * 16000, dtype=np.float32) + 1
    out = batching.padded(audio, [W((0.0, 20.0)), W((50.0, 55.0), (56.0, 60.0))])
    assert len(out) == 60 * 16000
    assert np.array_equal(out[:20 * 16000], audio[:20 * 16000]) and not out[20 * 16000:30 * 16000].any()
    second = out[30 * 16000:]
    assert np.array_equal(second[:5 * 16000], audio[50 * 16000:55 * 16000])
    assert not second[5 * 16000:int(5.2 * 16000)].any()  # the pause, shortened
    assert np.array_equal(second[int(5.2 * 16000):int(9.2 * 16000)], audio[56 * 16000:60 * 16000])
    assert not second[int(9.2 * 16000):].any()


def segment(start: float, end: float, text: str, seek: int, avg_logprob: float = -0.2) -> Segment:
    """A segment of the words of `text`, as likely as the segment's log-probability says, unless its
    text says "guess" (words of probability 0.1 in a window whose log-probability is fine)."""
    words = text.split() or [text]
    probability = 0.1 if words[0] == "guess" else float(np.exp(avg_logprob))
    step = (end - start) / len(words)
    return Segment(id=0, seek=seek, start=start, end=end, text=text, tokens=[1], avg_logprob=avg_logprob,
                   compression_ratio=1.2, no_speech_prob=0.01, temperature=0.0,
                   words=[Word(start + i * step, start + (i + 1) * step, w, probability) for i, w in enumerate(words)])


@dataclass
class Script:
    """What a scripted pipeline answers for each window (start, end), and what it was asked."""

    answers: dict[tuple[float, float], list[tuple[float, float, str, float]]]
    alone: list[tuple] = field(default_factory=list)  # the sequential decoder's, window-relative: (start,
    # end, text) or (start, end, text, seek of its chunk, log-probability)
    calls: list[list[tuple[float, float]]] = field(default_factory=list)
    alone_calls: list[dict] = field(default_factory=list)


class FakeModel:
    frames_per_second = 100

    def __init__(self, script: Script):
        self.script = script

    def transcribe(self, audio, vad_filter, **settings):
        self.script.alone_calls.append({"seconds": len(audio) / 16000, **settings})
        return [segment(*(entry if len(entry) > 3 else (*entry, 0))) for entry in self.script.alone], None


def scripted_pipeline(script: Script):
    """The pipeline, answering the script's segments of the windows batching.padded was given last
    (each 30 s of the padded audio is one window)."""
    class Pipeline:
        def __init__(self, model):
            self.model = model

        def transcribe(self, audio, clip_timestamps, batch_size, without_timestamps, language=None, **settings):
            windows = script.calls[-1]
            assert without_timestamps is False and batch_size == len(windows) == len(audio) // (30 * 16000)
            assert clip_timestamps == [{"start": 30.0 * i, "end": 30.0 * (i + 1)} for i in range(len(windows))]
            out = [segment(a - w.start + 30 * i, b - w.start + 30 * i, text, batching._seek(self.model, 30 * i), lp)
                   for i, w in enumerate(windows) for a, b, text, lp in script.answers.get(w, [])]
            assert settings["word_timestamps"] is True  # always, for the quality checks
            return iter(out), type("Info", (), {"language": language or "en"})()
    return Pipeline


def decode(monkeypatch, script: Script, windows, batch_size=8, **settings):
    """(start, end, text) of each segment batching.batched gives of `windows` with the scripted
    pipeline, and the language."""
    segments, language = decoded(monkeypatch, script, windows, batch_size, **settings)
    return [(s.start, s.end, s.text) for s in segments], language


def decoded(monkeypatch, script: Script, windows, batch_size=8, **settings):
    padded = batching.padded

    def recorded(audio, windows):
        script.calls.append(list(windows))
        return padded(audio, windows)

    monkeypatch.setattr(batching, "padded", recorded)
    monkeypatch.setattr(faster_whisper, "BatchedInferencePipeline", scripted_pipeline(script))
    segments, language = batching.batched(FakeModel(script), np.zeros(100 * 16000, np.float32), windows,
                                          batch_size, {"language": None, "beam_size": 5, **settings})
    return list(segments), language


def test_the_end_of_a_window_the_pipeline_leaves_undecoded_is_decoded_in_the_next_batch(monkeypatch):
    """faster-whisper's batched pipeline drops a window's unfinished last segment (text after the
    last timestamp), and Whisper sometimes ends a window's text early: the sequential decoder would
    have decoded the rest in its next window. Here it joins the next batch, and the segments still
    come in time order. A segment running past its window's end is cut there."""
    windows = [W((0.0, 25.0)), W((30.0, 40.0)), W((45.0, 50.0))]
    script = Script({windows[0]: [(0.0, 6.0, "one", -0.2), (6.0, 12.0, "two", -0.2)],
                     W((12.0, 25.0)): [(12.0, 24.5, "three", -0.2)],
                     windows[1]: [(30.0, 41.0, "four", -0.2)],  # past its window's end
                     windows[2]: [(45.0, 49.5, "five", -0.2)]})
    got, _ = decode(monkeypatch, script, windows, batch_size=2)
    assert got == [(0.0, 6.0, "one"), (6.0, 12.0, "two"), (12.0, 24.5, "three"), (30.0, 40.0, "four"),
                   (45.0, 49.5, "five")]
    assert script.calls == [windows[:2], [W((12.0, 25.0)), windows[2]]]


def test_what_is_left_of_a_window_is_decoded_again_at_most_twice(monkeypatch):
    windows = [W((0.0, 25.0))]
    script = Script({windows[0]: [(0.0, 5.0, "one", -0.2)], W((5.0, 25.0)): [(5.0, 10.0, "two", -0.2)],
                     W((10.0, 25.0)): [(10.0, 15.0, "three", -0.2)], W((15.0, 25.0)): [(15.0, 20.0, "four", -0.2)]})
    got, _ = decode(monkeypatch, script, windows)
    assert [text for _, _, text in got] == ["one", "two", "three"]
    assert script.calls == [windows, [W((5.0, 25.0))], [W((10.0, 25.0))]]

    silent = Script({windows[0]: [(0.0, 5.0, "one", -0.2)]})  # nothing more in what is left: not speech
    got, _ = decode(monkeypatch, silent, windows)
    assert [text for _, _, text in got] == ["one"] and silent.calls == [windows, [W((5.0, 25.0))]]


def test_a_window_failing_the_quality_checks_is_decoded_alone_with_the_fallback_temperatures(monkeypatch):
    windows = [W((0.0, 20.0)), W((30.0, 50.0))]
    answers = {windows[0]: [(0.0, 19.0, "fine", -0.2)], windows[1]: [(30.0, 49.0, "garbled", -1.6)]}
    script = Script(answers, alone=[(0.5, 18.0, "clear")])
    got, _ = decode(monkeypatch, script, windows)
    assert got == [(0.0, 19.0, "fine"), (30.5, 48.0, "clear")]  # in the file's times
    assert script.alone_calls == [{"seconds": 20.0, "language": "en", "beam_size": 5, "word_timestamps": True,
                                   "temperature": (0.2, 0.4, 0.6, 0.8, 1.0)}]  # the fallback after 0, tried

    asked = Script(answers, alone=[(0.5, 18.0, "clear")])  # a task's own temperature: as sequential, no fallback
    got, _ = decode(monkeypatch, asked, windows, temperature=0.4)
    assert got == [(0.0, 19.0, "fine"), (30.0, 49.0, "garbled")] and not asked.alone_calls


def test_a_short_chunk_after_a_failed_one_in_a_window_decoded_alone_is_dropped(monkeypatch):
    """The sequential decoder goes on from a failed chunk's last timestamp: the last seconds of
    tests/test_language.py's German, heard alone at 0.2, passed as "So, I can fight indoors and
    out in Smite and Stock." (about 1 run in 8). A chunk after a failed one that starts SHORT_S or
    more before the window's end is kept, and so is a short one after a chunk that passed."""
    windows = [W((0.0, 20.0)), W((30.0, 56.7))]
    answers = {windows[0]: [(0.0, 19.0, "fine", -0.2)], windows[1]: [(30.0, 56.0, "garbled", -1.6)]}
    guess = Script(answers, alone=[(0.0, 23.4, "nothing", 0, -3.9), (23.4, 26.5, "so I can fight", 2340, -0.8)])
    got, _ = decode(monkeypatch, guess, windows)
    assert got == [(0.0, 19.0, "fine"), (30.0, 53.4, "nothing")]  # the engine drops the failed chunk's segment

    early = Script(answers, alone=[(0.0, 12.0, "nothing", 0, -3.9), (12.0, 26.5, "then clear words", 1200, -0.3)])
    got, _ = decode(monkeypatch, early, windows)
    assert got[1:] == [(30.0, 42.0, "nothing"), (42.0, 56.5, "then clear words")]

    passed = Script(answers, alone=[(0.0, 23.4, "clear", 0, -0.3), (23.4, 26.5, "and the end", 2340, -0.4)])
    got, _ = decode(monkeypatch, passed, windows)
    assert got[1:] == [(30.0, 53.4, "clear"), (53.4, 56.5, "and the end")]


def test_sequential_decoding_drops_a_short_last_chunk_after_a_failed_one_too():
    """engine.batch_size 0: faster-whisper decodes the whole file (its speech, after VAD) chunk
    after chunk, and its last seconds after a failed chunk are heard alone as in a window decoded
    alone; the engine drops them, and keeps the chunks a passing one is followed by."""
    class Sequential(FakeModel):
        def transcribe(self, audio, vad_filter, **settings):
            return (iter(segment(*entry) for entry in self.script.alone),
                    type("Info", (), {"language": "en", "duration_after_vad": 56.7})())

    engine = LocalEngine(EngineConfig(batch_size=0))
    req, audio = TranscribeRequest(path="x.wav"), np.zeros(60 * 16000, np.float32)
    try:
        guess = Script({}, alone=[(0.0, 30.0, "clear", 0, -0.3), (30.0, 53.4, "nothing", 3000, -3.9),
                                  (53.4, 56.5, "so I can fight", 5340, -0.8)])
        timed, _ = engine.timed_segments(Sequential(guess), audio, req, lambda f: None)
        assert [s.text for s in timed] == ["clear"]
        passed = Script({}, alone=[(0.0, 53.4, "clear", 0, -0.3), (53.4, 56.5, "and the end", 5340, -0.4)])
        timed, _ = engine.timed_segments(Sequential(passed), audio, req, lambda f: None)
        assert [s.text for s in timed] == ["clear", "and the end"]
    finally:
        engine.close()


def test_a_chunk_s_segments_are_given_as_they_come_not_once_the_next_chunk_is_decoded():
    """Sequential decoding reports progress, texts and stopping per segment: none waits for the
    decoder's next chunk."""
    read = []

    def decoder():
        for entry in [(0.0, 5.0, "one", 0, -0.3), (5.0, 9.0, "two", 0, -0.3), (30.0, 35.0, "three", 3000, -0.3)]:
            read.append(entry[2])
            yield segment(*entry)

    kept = batching.heard_after_failure(decoder(), 35.0, 100)
    assert next(kept).text == "one" and read == ["one"]
    assert next(kept).text == "two" and read == ["one", "two"]
    assert [s.text for s in kept] == ["three"]


def test_a_window_whose_words_are_guesses_fails_though_its_figure_passes(monkeypatch):
    """The pipeline's figure counts the timestamp tokens: tiny.en heard 21 s of German as
    nothing, then two short segments, at -0.16; their words said -1.7. Such a window is decoded
    alone with the fallback temperatures, as the sequential decoder's checks would have it."""
    windows = [W((0.0, 20.0)), W((30.0, 50.0))]
    script = Script({windows[0]: [(0.0, 19.0, "fine fine", -0.2)],
                     windows[1]: [(45.0, 47.0, "guess guess", -0.16), (47.0, 49.0, "guess", -0.16)]},
                    alone=[(0.5, 18.0, "clear")])
    got, _ = decode(monkeypatch, script, windows)
    assert got == [(0.0, 19.0, "fine fine"), (30.5, 48.0, "clear")] and len(script.alone_calls) == 1


def test_a_segment_of_guesses_in_a_window_that_passes_is_given_its_own_figure_not_decoded_again(monkeypatch):
    """The pipeline's log-probability is its window's: a segment of guessed words (German after
    English) in a window that passes carries its own words' figure, so the engine drops it as it
    drops a failed window's; decoding the window again at temperature 0 would give the same.
    Fewer than MIN_JUDGED words say too little to judge ("Sure." on a telephone line)."""
    windows = [W((0.0, 20.0)), W((30.0, 50.0))]
    fine = "one two three four five six seven eight nine"  # enough sure words: the window passes
    guessed = Script({windows[0]: [(0.0, 9.0, fine, -0.2), (9.0, 19.0, "guess guess guess", -0.2)],
                      windows[1]: [(30.0, 39.0, "fine fine fine", -0.2), (39.0, 40.0, "guess", -0.2)]},
                     alone=[(0.5, 9.0, "clear")])
    segments, _ = decoded(monkeypatch, guessed, windows)
    figures = [(s.text, round(s.avg_logprob, 2)) for s in segments]
    assert figures == [(fine, -0.2), ("guess guess guess", round(float(np.log(0.1)), 2)),
                       ("fine fine fine", -0.2), ("guess", -0.2)]
    assert not guessed.alone_calls and untranscribed.failed(segments[1].avg_logprob, 1.0)


def test_a_window_heard_as_one_text_again_and_again_is_kept_up_to_the_loop_and_the_rest_decoded_again(monkeypatch):
    """The pipeline's compression ratio is each segment's: tiny.en heard German after English as
    "Good morning to you." 16 times, segment after segment, each passing. The window's whole text
    fails the check (as the sequential decoder's does); what came before the loop is kept, and the
    rest of the window is decoded again, as the sequential decoder's next window would begin there."""
    window = W((0.0, 28.0))
    loop = [(5.0 + i, 6.0 + i, "Good morning to you.", -0.2) for i in range(16)]
    script = Script({window: [(0.0, 5.0, "fine words said here", -0.2)] + loop,
                     window.after(5.0): [(6.0, 8.0, "clear words", -0.2)]})
    got, _ = decode(monkeypatch, script, [window])
    assert got == [(0.0, 5.0, "fine words said here"), (6.0, 8.0, "clear words")]
    assert script.calls[1] == [window.after(5.0)] and not script.alone_calls


def test_a_window_whose_whole_text_loops_without_repeating_a_segment_fails_the_checks():
    varied = [segment(i, i + 1.0, "la " * (3 + i), 0) for i in range(12)]  # fine one by one
    assert not any(untranscribed.failed(s.avg_logprob, s.compression_ratio) for s in varied)
    assert batching.unlooped(varied) == varied and batching.failed(varied)
    assert not batching.failed([segment(0.0, 1.0, "Yes.", 0), segment(1.0, 2.0, "Yes.", 0)])


def test_words_are_aligned_when_asked_or_when_a_window_is_doubtful():
    """Aligning a batch's words is a pass of the decoder over every window; words are wanted by
    the checks only where the pipeline's figure is low or the text is thin for the time
    (docs/ARCHITECTURE.md, "Quality checks by the words too")."""
    assert not batching.doubtful(-0.25, 90, 27.0, -0.36)  # clean speech: about 3 tokens a second
    assert batching.doubtful(-0.5, 90, 27.0, -0.5)  # a telephone line, noise: the words may fail
    assert batching.doubtful(-0.25, 90, 27.0, -0.5)  # a window of a poor recording's batch
    assert batching.doubtful(-0.16, 8, 21.0, -0.16)  # 21 s of German heard as "I'm feeling like" twice


def test_a_short_segment_sampled_at_a_fallback_temperature_is_judged_by_its_words():
    """A text sampled at a fallback temperature passes with the figure of its sampling: the
    German of tests/test_language.py heard at 0.6 as " A.t." at -0.98, again and again; its words,
    from the model itself, are guesses. However few its words, such a segment takes their figure;
    at temperature 0, fewer than MIN_JUDGED words are still not judged."""
    sampled = replace(segment(4.9, 5.2, "guess", 0, -0.98), temperature=0.6)
    assert untranscribed.failed(batching.judged(sampled).avg_logprob, 1.0)
    greedy = segment(4.9, 5.2, "guess", 0, -0.98)
    assert batching.judged(greedy).avg_logprob == -0.98
    sure = replace(segment(4.9, 5.2, "Sure.", 0, -0.5), temperature=0.6)  # its words as likely: kept
    assert not untranscribed.failed(batching.judged(sure).avg_logprob, 1.0)


def test_windows_go_in_batches_of_equal_size_in_the_language_of_the_first(monkeypatch):
    windows = [W((float(10 * i), float(10 * i + 9))) for i in range(5)]
    script = Script({w: [(w.start, w.end - 0.5, f"w{i}", -0.2)] for i, w in enumerate(windows)})
    got, language = decode(monkeypatch, script, windows, batch_size=2)
    assert [text for _, _, text in got] == ["w0", "w1", "w2", "w3", "w4"] and language == "en"
    assert script.calls == [windows[:2], windows[2:4], windows[4:]]

    script = Script({w: [(w.start, w.end - 0.5, f"w{i}", -0.2)] for i, w in enumerate(windows)})
    decode(monkeypatch, script, windows, batch_size=4)
    assert script.calls == [windows[:3], windows[3:]]  # not 4 and 1


# --- the real engine -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """About 45 s of two voices taking turns with pauses: two windows or more."""
    lines = LINES + MORE_LINES
    turns = [((VOICE_A, VOICE_B)[i % 2], line) for i, line in enumerate(lines)]
    wav, _ = conversation(tmp_path_factory.mktemp("talk"), "talk", turns, gaps=[0.8] * (len(turns) - 1))
    return wav


async def test_batched_decoding_keeps_timestamps_words_and_progress_per_batch(talk, monkeypatch):
    batches = []
    real = faster_whisper.BatchedInferencePipeline.transcribe
    monkeypatch.setattr(faster_whisper.BatchedInferencePipeline, "transcribe",
                        lambda self, audio, **kw: batches.append(kw["clip_timestamps"]) or real(self, audio, **kw))
    engine = LocalEngine(EngineConfig(batch_size=1))
    seen: list[float] = []
    try:
        outcome = await engine.transcribe(TranscribeRequest(path=str(talk), options=TaskOptions(word_timestamps=True)),
                                          seen.append)
    finally:
        engine.close()
    assert len(batches) >= 2  # one window a batch
    segments = outcome.segments
    assert segments and all(0 <= s.start_time < s.end_time <= outcome.duration for s in segments)
    assert all(s.end_time - s.start_time <= 30 for s in segments)
    assert [s.start_time for s in segments] == sorted(s.start_time for s in segments)
    for s in segments:
        assert s.words and all(s.start_time <= w.start_time <= w.end_time <= s.end_time for w in s.words), (s.start_time, s.end_time, [(w.start_time, w.end_time) for w in s.words][-3:])
    text = " ".join(s.text for s in segments).lower()
    assert all(line.split()[1].lower().strip(",.") in text for line in LINES + MORE_LINES)  # nothing dropped
    assert seen == sorted(seen) and any(0.1 < f < 0.9 for f in seen), seen  # progress as the batches finish


async def test_a_closing_engine_stops_batched_decoding_at_the_next_batch(talk):
    seen = await stopped(LocalEngine(EngineConfig(batch_size=1)), TranscribeRequest(path=str(talk)),
                         lambda fraction: fraction > 0)  # the first window is decoded
    assert 0 < max(seen) < 0.9, seen


async def test_clean_speech_is_decoded_without_aligning_words_no_one_asked_for(long_speech_wav, monkeypatch):
    """Aligning words costs a tenth of the time; clean speech passes the window's checks, so its
    words are aligned only when a task or speaker labelling asks (the test above)."""
    aligned = []
    real = faster_whisper.WhisperModel.add_word_timestamps
    monkeypatch.setattr(faster_whisper.WhisperModel, "add_word_timestamps",
                        lambda self, segments, *rest: aligned.append(len(segments)) or real(self, segments, *rest))
    engine = LocalEngine(EngineConfig(batch_size=8))
    try:
        outcome = await engine.transcribe(TranscribeRequest(path=str(long_speech_wav)), lambda fraction: None)
    finally:
        engine.close()
    text = " ".join(s.text for s in outcome.segments)
    said, heard = (set(re.findall(r"[a-z']+", t.lower())) for t in (LONG_SPEECH, text))
    assert len(said & heard) > 0.9 * len(said)  # nothing dropped: bench/results/engine.md measures 7 % WER
    assert not aligned and not any(s.words for s in outcome.segments)
