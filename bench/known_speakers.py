"""Known speakers: the open-set decision's threshold (engine.known_speaker_threshold), measured
on realistic speech (bench/realistic.py: 16 voices, 6 recording conditions).

Half the voices are enrolled, each from one utterance (clean; with --same also recorded as the
test is); every voice then says other sentences under every condition, and each test utterance's voiceprint (the
gateway's own `voiceprints.voiceprint`, which is also how a cluster's centre is made: the mean of
its windows) is matched against the enrolled ones (`voiceprints.match`). Two folds: the enrolled
and the other half swap, so every test utterance counts once enrolled and once not. Reported per
enrolment, condition and threshold:
  false-name rate    a voice that is not enrolled given a name
  correct-name rate  an enrolled voice given its own name
  wrong-name rate    an enrolled voice given another's name
The threshold chosen is the lowest at which the false-name rate is at most 2 % in every row
(enrolment and condition); target at it: correct-name rate >= 90 %.

    python bench/known_speakers.py --tests 3 --same   # as recorded in bench/results/known_speakers.md
    python bench/known_speakers.py                    # clean enrolment only, 4 test sentences
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import realistic  # noqa: E402  (bench/realistic.py, from the speakers work)
from common import save_results  # noqa: E402
from gateway import voiceprints  # noqa: E402
from gateway.audio import decode  # noqa: E402

CACHE = HERE / ".cache" / "known_speakers"
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 0.96, 0.01)]
CLEAN, SAME = "clean", "same"  # enrolled from a clean utterance, or from one recorded as the tests are
MAX_FALSE, MIN_CORRECT = 0.02, 0.90


@functools.cache
def voiceprint_of(voice, text: str, condition: str, seed: int) -> np.ndarray:
    """The voiceprint of `voice` saying `text` under `condition` (the rendering cached on disk)."""
    path = CACHE / f"{voice.name}-{condition}-{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.wav"
    if not path.exists():
        realistic.utterance(voice, text, condition, path, seed=seed)
    return voiceprints.voiceprint([decode(str(path))])


def decide(test: np.ndarray, enrolled: dict[str, np.ndarray]) -> tuple[str, float]:
    """The closest enrolled name and its similarity."""
    names = list(enrolled)
    alike = np.stack([enrolled[n] for n in names]) @ test
    return names[int(np.argmax(alike))], float(alike.max())


def rates(trials: list[tuple[bool, str, str, float]], threshold: float) -> dict[str, float]:
    """trials: (enrolled?, true name, closest name, similarity)."""
    known = [t for t in trials if t[0]]
    unknown = [t for t in trials if not t[0]]
    named = lambda t: t[3] >= threshold  # noqa: E731
    return {"false_name": sum(map(named, unknown)) / len(unknown),
            "correct_name": sum(1 for t in known if named(t) and t[2] == t[1]) / len(known),
            "wrong_name": sum(1 for t in known if named(t) and t[2] != t[1]) / len(known),
            "unknown_trials": len(unknown), "known_trials": len(known)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=4, help="test sentences per voice and condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--same", action="store_true", help="also enrol from utterances recorded as the tests are")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    voices = list(realistic.VOICES)
    rng.shuffle(voices)
    halves = (voices[:len(voices) // 2], voices[len(voices) // 2:])
    sentences = list(realistic.SENTENCES)
    enrol_text = {v.name: sentences[i % len(sentences)] for i, v in enumerate(voices)}
    test_texts = {v.name: rng.sample([s for s in sentences if s != enrol_text[v.name]], args.tests) for v in voices}

    enrolments = (CLEAN, SAME) if args.same else (CLEAN,)
    prints = {(mode, cond, v.name): voiceprint_of(v, enrol_text[v.name], "clean" if mode == CLEAN else cond, 1)
              for mode in enrolments for cond in realistic.CONDITIONS for v in voices}
    tests = {(cond, v.name, i): voiceprint_of(v, text, cond, 100 + i)
             for cond in realistic.CONDITIONS for v in voices for i, text in enumerate(test_texts[v.name])}
    print(f"{len(prints)} enrolment and {len(tests)} test voiceprints in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)

    trials: dict[tuple[str, str], list] = {}
    for mode in enrolments:
        for cond in realistic.CONDITIONS:
            out = trials.setdefault((mode, cond), [])
            for enrolled_half in halves:
                enrolled = {v.name: prints[(mode, cond, v.name)] for v in enrolled_half}
                for (c, name, _), vector in tests.items():
                    if c == cond:
                        out.append((name in enrolled, name, *decide(vector, enrolled)))
    table = {f"{mode}/{cond}": {str(t): rates(ts, t) for t in THRESHOLDS} for (mode, cond), ts in trials.items()}

    ok = [t for t in THRESHOLDS if all(by_t[str(t)]["false_name"] <= MAX_FALSE for by_t in table.values())]
    chosen = ok[0] if ok else THRESHOLDS[-1]
    check = voiceprints.match({0: tests[(realistic.CONDITIONS[0], voices[0].name, 0)]},
                              [voiceprints.KnownVoice(v.name, prints[("clean", "clean", v.name)]) for v in halves[0]],
                              chosen)  # the engine's own decision agrees with `decide` at the threshold
    assert (check.get(0) is not None) == (decide(tests[(realistic.CONDITIONS[0], voices[0].name, 0)],
                                                 {v.name: prints[("clean", "clean", v.name)] for v in halves[0]})[1]
                                          >= chosen)

    shown = sorted({chosen, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9} & set(THRESHOLDS))
    lines = ["| enrolled from / test condition | " + " | ".join(f"t={t:.2f} false / correct" for t in shown) + " |",
             "|---|" + "---|" * len(shown)]
    for key, by_t in table.items():
        cells = [f"{by_t[str(t)]['false_name']:.1%} / {by_t[str(t)]['correct_name']:.1%}" for t in shown]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    at = {key: by_t[str(chosen)] for key, by_t in table.items()}
    worst_false = max(r["false_name"] for r in at.values())
    correct = {k: r["correct_name"] for k, r in at.items()}
    missed = [k for k in at if correct[k] < MIN_CORRECT]
    trial_counts = next(iter(at.values()))
    summary = (f"Chosen threshold: **{chosen:.2f}** (the lowest at which the false-name rate is at most "
               f"{MAX_FALSE:.0%} in every row; worst there {worst_false:.1%}). Correct-name rate at it: " +
               ", ".join(f"{k} {correct[k]:.1%}" for k in at) +
               (f". Below the {MIN_CORRECT:.0%} target: {', '.join(missed)}." if missed
                else f"; every row meets the {MIN_CORRECT:.0%} target."))
    note = (f"{summary}\n\nEach cell: {trial_counts['unknown_trials']} trials of voices not enrolled and "
            f"{trial_counts['known_trials']} of enrolled ones ({len(voices)} voices, {args.tests} test sentences "
            f"each, 2 folds), each a voiceprint of one test utterance (as a cluster's centre is made) matched "
            f"against 8 enrolled voiceprints, each from one other sentence. `same`: enrolled from an utterance "
            f"recorded in the test's condition (with --same). Synthetic voices (espeak-ng, bench/realistic.py): real voices "
            f"differ more from each other, and the rates under real recordings are to be measured again. "
            f"{time.perf_counter() - t0:.0f} s;")
    save_results("known_speakers", "\n".join(lines), note,
                 f"python bench/known_speakers.py --tests {args.tests}" + (" --same" if args.same else ""),
                 {"tests": args.tests, "seed": args.seed, "chosen_threshold": chosen, "max_false": MAX_FALSE,
                  "min_correct": MIN_CORRECT, "rates": table})
    print(summary)


if __name__ == "__main__":
    main()
