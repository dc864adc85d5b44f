"""Known speakers: the open-set decision's thresholds (engine.known_speaker_threshold,
engine.known_speaker_narrowband_threshold), measured on realistic speech (bench/realistic.py:
16 voices, 6 recording conditions), before and after the multi-condition enrolment and the
telephone band's voiceprints (gateway/voiceprints.py).

Half the voices are enrolled (`voiceprints.enrolment`, as POST /speakers does), from one sentence
or from three, recorded clean (`clean`) or as the tests are (`same`: a label of an earlier call);
every voice then says six other sentences under every condition. A test is what the engine
matches: a cluster's centre (the mean of its windows, of the telephone band for narrowband
audio), of three sentences together (`cluster`, about 9 s, as a voice in a conversation) or of
each alone (`utterance`, about 3 s: a voice heard for one sentence). Narrowband audio
(voiceprints.narrowband) is matched with the telephone band's voiceprints. Two folds: the
enrolled and the other half swap, so every test counts once enrolled and once not. Reported per
enrolment, condition and unit:
  false-name rate    a voice that is not enrolled given a name
  correct-name rate  an enrolled voice given its own name
`before`: the voiceprint of the audio as given alone, one threshold (the lowest at which the
false-name rate is at most 2 % in every condition). `now`: the thresholds chosen in turn, each the
lowest keeping the false-name rate at most 2 % in every condition and unit (its enrolments
pooled): the wideband one on the tests of wideband audio, then the narrowband one on those of
narrowband audio. Target: correct-name rate >= 90 % for clusters.

    python bench/known_speakers.py      # as recorded in bench/results/known_speakers.md
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import realistic  # noqa: E402  (bench/realistic.py, from the speakers work)
from common import save_results  # noqa: E402
from gateway import voiceprints  # noqa: E402
from gateway.audio import decode  # noqa: E402
from gateway.config import EngineConfig  # noqa: E402

CACHE = HERE / ".cache" / "known_speakers"
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 0.99, 0.01)]
MAX_FALSE, MIN_CORRECT = 0.02, 0.90
MODES = ("clean", "same")  # enrolled from a clean recording, or from one made as the tests are
ENROL_SENTENCES = (1, 3)
TESTS = 6  # sentences per voice and condition: two clusters of CLUSTER, and each alone
CLUSTER = 3
UNITS = ("cluster", "utterance")


@functools.cache
def audio_of(voice, text: str, condition: str, seed: int) -> np.ndarray:
    """`voice` saying `text` under `condition`, 16 kHz (the rendering cached on disk)."""
    path = CACHE / f"{voice.name}-{condition}-{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.wav"
    if not path.exists():
        realistic.utterance(voice, text, condition, path, seed=seed)
    return decode(str(path))


@dataclass(frozen=True)
class Test:
    """A cluster as the engine matches it: its centre, and whether the audio is narrowband."""

    voice: str
    condition: str
    unit: str
    centre: np.ndarray  # of the telephone band when the audio is narrowband, as the engine's
    given: np.ndarray  # of the audio as given (as the engine's were before)
    narrow: bool


def test_of(voice, texts: list[str], seeds: list[int], condition: str, unit: str) -> Test | None:
    pieces = [audio_of(voice, text, condition, seed) for text, seed in zip(texts, seeds)]
    try:
        audio, starts = voiceprints.speech_windows(pieces)
    except voiceprints.TooLittleSpeech:
        return None  # (counted: a voice of under 1.6 s of speech is not matched at all)
    narrow = voiceprints.narrowband(*voiceprints.band_energies(audio))
    given = voiceprints.embedded(audio, starts)
    centre = voiceprints.embedded(voiceprints.band_limited(audio), starts) if narrow else given  # as the engine's
    return Test(voice.name, condition, unit, centre, given, narrow)


def trial(test: Test, enrolled: dict[str, voiceprints.KnownVoice]) -> dict:
    """What a decision needs: per enrolled name, the similarity `now` (closest voiceprint of those
    compared, and whether they were the telephone band's) and `before` (the print as given)."""
    now, before = {}, {}
    for name, voice in enrolled.items():
        prints, band = voice.prints(test.narrow)
        now[name] = (float((prints @ test.centre).max()), band)
        before[name] = float(voice.voiceprint[0] @ test.given)
    return {"enrolled": test.voice in enrolled, "voice": test.voice, "now": now, "before": before,
            "narrow": test.narrow}


def decided_now(t: dict, wide: float, narrow: float) -> str | None:
    """The name the engine gives (voiceprints.match with one cluster), or None."""
    above = {name: sim - (narrow if band else wide) for name, (sim, band) in t["now"].items()}
    best = max(above, key=above.get)
    return best if above[best] >= 0 else None


def decided_before(t: dict, threshold: float) -> str | None:
    best = max(t["before"], key=t["before"].get)
    return best if t["before"][best] >= threshold else None


def rates(trials: list[dict], decide) -> dict[str, float]:
    known = [t for t in trials if t["enrolled"]]
    unknown = [t for t in trials if not t["enrolled"]]
    return {"false_name": sum(decide(t) is not None for t in unknown) / max(len(unknown), 1),
            "correct_name": sum(decide(t) == t["voice"] for t in known) / max(len(known), 1),
            "wrong_name": sum(decide(t) not in (None, t["voice"]) for t in known) / max(len(known), 1),
            "unknown_trials": len(unknown), "known_trials": len(known)}


def lowest(candidates, rows: list[list[dict]], decide_at) -> float:
    """The lowest candidate at which the false-name rate is at most MAX_FALSE in every row."""
    return next((c for c in candidates if all(rates(r, decide_at(c))["false_name"] <= MAX_FALSE for r in rows)),
                candidates[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    voices = list(realistic.VOICES)
    rng.shuffle(voices)
    halves = (voices[:len(voices) // 2], voices[len(voices) // 2:])
    sentences = list(realistic.SENTENCES)
    enrol_texts = {v.name: rng.sample(sentences, max(ENROL_SENTENCES)) for v in voices}
    test_texts = {v.name: rng.sample([s for s in sentences if s not in enrol_texts[v.name]], TESTS) for v in voices}

    enrolments = {}
    for v in voices:
        for mode in MODES:
            for cond in realistic.CONDITIONS if mode == "same" else ("clean",):
                for n in ENROL_SENTENCES:
                    pieces = [audio_of(v, text, cond, 1 + i) for i, text in enumerate(enrol_texts[v.name][:n])]
                    try:
                        e = voiceprints.enrolment(pieces)
                    except voiceprints.TooLittleSpeech:
                        continue
                    enrolments[(v.name, mode, cond, n)] = voiceprints.KnownVoice(v.name, e.wide, e.narrowband)
    tests = []
    for v in voices:
        for cond in realistic.CONDITIONS:
            seeds = [100 + i for i in range(TESTS)]
            tests += [test_of(v, test_texts[v.name][i:i + CLUSTER], seeds[i:i + CLUSTER], cond, "cluster")
                      for i in range(0, TESTS, CLUSTER)]
            tests += [test_of(v, [text], [seed], cond, "utterance") for text, seed in zip(test_texts[v.name], seeds)]
    skipped = sum(t is None for t in tests)
    tests = [t for t in tests if t is not None]
    print(f"{len(enrolments)} enrolments and {len(tests)} tests in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    rows: dict[tuple, list[dict]] = {}  # (sentences enrolled, mode, condition, unit) -> trials
    for n in ENROL_SENTENCES:
        for mode in MODES:
            for cond in realistic.CONDITIONS:
                for half in halves:
                    enrolled = {v.name: enrolments[key] for v in half
                                if (key := (v.name, mode, "clean" if mode == "clean" else cond, n)) in enrolments}
                    for test in tests:
                        if test.condition == cond:
                            rows.setdefault((n, mode, cond, test.unit), []).append(trial(test, enrolled))
    # the false-name rate is held at most MAX_FALSE in every condition (each pooling its enrolments)
    by_condition = {(cond, unit): [t for key, r in rows.items() if key[2:] == (cond, unit) for t in r]
                    for cond in realistic.CONDITIONS for unit in UNITS}
    wide = lowest(THRESHOLDS, [[t for t in r if not t["narrow"]] for r in by_condition.values()],
                  lambda c: lambda t: decided_now(t, c, 1.0))
    narrow = lowest(THRESHOLDS, [[t for t in r if t["narrow"]] for r in by_condition.values()],
                    lambda c: lambda t: decided_now(t, wide, c))
    before = lowest(THRESHOLDS, list(by_condition.values()), lambda c: lambda t: decided_before(t, c))
    now = lambda t: decided_now(t, wide, narrow)  # noqa: E731
    was = lambda t: decided_before(t, before)  # noqa: E731

    # the engine's own decision agrees (at the configured thresholds)
    cfg = EngineConfig()
    sample = next(iter(rows.values()))[0]
    test = next(t for t in tests if t.voice == sample["voice"])
    known = [enrolments[(v.name, "clean", "clean", 1)] for v in halves[0] if (v.name, "clean", "clean", 1) in enrolments]
    engine = voiceprints.match({0: test.centre}, known, cfg.known_speaker_threshold,
                               cfg.known_speaker_narrowband_threshold, test.narrow).get(0)
    assert engine == decided_now(trial(test, {k.name: k for k in known}), cfg.known_speaker_threshold,
                                 cfg.known_speaker_narrowband_threshold)

    table = {f"{n} sentence{'s' * (n > 1)} {mode} / {cond} / {unit}":
             {"before": rates(r, was), "now": rates(r, now)} for (n, mode, cond, unit), r in rows.items()}
    lines = ["| enrolled from / test condition | cluster: before false / correct | cluster: now false / correct "
             "| utterance: before | utterance: now |", "|---|---|---|---|---|"]
    cell = lambda r: f"{r['false_name']:.1%} / {r['correct_name']:.1%}"  # noqa: E731
    for n in ENROL_SENTENCES:
        for mode in MODES:
            for cond in realistic.CONDITIONS:
                c, u = rows[(n, mode, cond, "cluster")], rows[(n, mode, cond, "utterance")]
                lines.append(f"| {n} sentence{'s' * (n > 1)} {mode} / {cond} | {cell(rates(c, was))} | "
                             f"{cell(rates(c, now))} | {cell(rates(u, was))} | {cell(rates(u, now))} |")
    correct = {f"{n}/{mode}/{cond}": rates(r, now)["correct_name"] for (n, mode, cond, unit), r in rows.items()
               if unit == "cluster"}
    missed = [k for k, v in correct.items() if v < MIN_CORRECT]
    worst_false = max(rates(r, now)["false_name"] for r in by_condition.values())
    summary = (f"Chosen: wideband threshold **{wide:.2f}**, narrowband **{narrow:.2f}** (configured: "
               f"{cfg.known_speaker_threshold:.2f}, {cfg.known_speaker_narrowband_threshold:.2f}); "
               f"before, one threshold: {before:.2f}. Worst false-name rate of a condition now "
               f"{worst_false:.1%} (" + ", ".join(f"{cond} {rates(by_condition[(cond, 'cluster')], now)['false_name']:.1%}"
                                                  for cond in realistic.CONDITIONS) + " for clusters; utterances: " +
               ", ".join(f"{cond} {rates(by_condition[(cond, 'utterance')], now)['false_name']:.1%}"
                         for cond in realistic.CONDITIONS) + "). Clusters' "
               f"correct-name rate now: {min(correct.values()):.1%} at worst, "
               f"{np.mean(list(correct.values())):.1%} on average (before: "
               f"{np.mean([rates(r, was)['correct_name'] for k, r in rows.items() if k[3] == 'cluster']):.1%}); "
               + (f"below the {MIN_CORRECT:.0%} target: {', '.join(missed)}." if missed
                  else f"every cluster row meets the {MIN_CORRECT:.0%} target."))
    unknown = rows[(1, "clean", "clean", "cluster")]
    note = (f"{summary}\n\nEach row: {sum(not t['enrolled'] for t in unknown)} trials of voices not enrolled and "
            f"{sum(t['enrolled'] for t in unknown)} of enrolled ones per cluster cell (clusters of {CLUSTER} "
            f"sentences), {CLUSTER} times as many per utterance cell ({len(voices)} voices, {TESTS} test "
            f"sentences each, 2 folds; the thresholds hold the false-name rate of each condition, its four "
            f"enrolments pooled, at most {MAX_FALSE:.0%}; {skipped} tests with "
            f"under 1.6 s of speech found are not matched at all), each matched against 8 enrolled voices. "
            f"Synthetic voices (espeak-ng, bench/realistic.py): real voices differ more from each other, and the "
            f"rates under real recordings are to be measured again. {time.perf_counter() - t0:.0f} s;")
    save_results("known_speakers", "\n".join(lines), note, "python bench/known_speakers.py",
                 {"seed": args.seed, "thresholds": {"wideband": wide, "narrowband": narrow, "before": before},
                  "max_false": MAX_FALSE, "min_correct": MIN_CORRECT, "rates": table})
    print(summary)


if __name__ == "__main__":
    main()
