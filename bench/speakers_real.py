"""Speaker labelling on realistic speech (bench/realistic.py), per recording condition.

The set: in each condition of realistic.CONDITIONS, the clips of SHAPES (dialogues of 2-5
speakers with short turns, backchannels, split sentences and overlaps; three 5-second two-voice
clips; a monologue; two 5-second clips of one voice), each from a seed of its own. Two splits by seed: `tune` (seeds from 1000),
on which the labelling is tuned, and `held-out` (seeds from 0), reported beside it.

Each clip is transcribed once by the local engine's model (tiny.en) with word timestamps, as a
speaker=true task is, and once without, as a plain one; both transcripts and their CPU times are
cached under bench/.cache/realistic/transcripts/ by the audio's content, since only the labelling
changes between runs. Then the labelling pipeline of gateway/speakers.py (VAD, embedding,
clustering, labels) runs on the clip. Reported per condition and split, from the labelled
segments the API returns and from the speaker turns it adds with speaker_turns=true: DER
(pyannote.metrics, overlap counted) at collar 0 and 0.25 s, its missed speech, false alarm and
confusion at collar 0, the share of clips with the right number of speakers (for the turns:
every speaker the result names); for the segments also the share of the reference speech
that no segment whisper kept covers (untranscribed: labelling widens a segment to its
speaker's turns, but cannot make a segment where whisper gave none, so up to that much of the
segments' missed speech is whisper's), and the CPU time (this process's) of labelled / plain
(held-out split only: the tuning split is transcribed once, with word timestamps).
Targets (issue 17): DER <= 10 % at collar 0.25 and <= 15 % at collar 0, missed speech at
collar 0 < 8 %, right count >= 90 %, labelling time <= 1.25x.

    python bench/speakers_real.py                 # both splits, saved as results/speakers-real
    python bench/speakers_real.py --split tune    # the tuning split only, not saved
    python bench/speakers_real.py --sweep         # DER and count per clustering threshold (tune)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import realistic  # noqa: E402
from speakers import annotation, hypothesis, save, timeline  # noqa: E402  (bench/speakers.py)

from gateway import speakers  # noqa: E402
from gateway.audio import decode  # noqa: E402
from gateway.config import EngineConfig  # noqa: E402
from gateway.engine import LocalEngine, TranscribeRequest  # noqa: E402

CLIPS = realistic.CACHE / "clips"
TRANSCRIPTS = realistic.CACHE / "transcripts"
SPLITS = {"tune": 1000, "held-out": 0}
SHAPES = (("dialogue", 2), ("dialogue", 3), ("dialogue", 4), ("dialogue", 5), ("backchannel", 2),
          ("backchannel", 4), ("overlap", 2), ("overlap", 3), ("short", 2), ("short", 2), ("short", 2),
          ("monologue", 1), ("short", 1), ("short", 1))
THRESHOLDS = [0.22, 0.24, 0.26, 0.28, 0.3, 0.32, 0.34, 0.36]


def clip_set(split: str, conditions=realistic.CONDITIONS) -> list[realistic.Clip]:
    """The clips of a split: every shape in every condition, each from its own seed."""
    first = SPLITS[split]
    return [realistic.conversation(first + 100 * c + i, n, condition, CLIPS, kind)
            for c, condition in enumerate(realistic.CONDITIONS) if condition in conditions
            for i, (kind, n) in enumerate(SHAPES)]


# --- transcripts, cached -------------------------------------------------------------------


def transcribe(engine: LocalEngine, model, clip: realistic.Clip, speaker: bool) -> tuple[list, float]:
    """(timed segments, CPU seconds) of the engine's transcription of the clip, as a task with
    `speaker` gets it (speaker=true asks whisper for word timestamps); cached by content."""
    digest = hashlib.sha1(clip.path.read_bytes()).hexdigest()[:20]
    cached = TRANSCRIPTS / f"{digest}-{'words' if speaker else 'plain'}.json"
    if cached.exists():
        saved = json.loads(cached.read_text())
        segments = [speakers.TimedSegment(s["start"], s["end"], s["text"],
                                          tuple(speakers.Word(*w) for w in s["words"])) for s in saved["segments"]]
        return segments, saved["cpu"]
    audio = decode(str(clip.path))
    cpu = time.process_time()
    segments, _ = engine.timed_segments(model, audio, TranscribeRequest(path=str(clip.path), speaker=speaker),
                                        lambda f: None)
    cpu = time.process_time() - cpu
    TRANSCRIPTS.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    partial.write_text(json.dumps({"cpu": cpu, "segments": [
        {"start": s.start, "end": s.end, "text": s.text, "words": [(w.start, w.end, w.text) for w in s.words]}
        for s in segments]}))
    partial.replace(cached)   # only a whole transcript lands in the cache
    return segments, cpu


@dataclass
class Prepared:
    clip: realistic.Clip
    timed: list
    cpu_plain: float           # whisper without word timestamps, and the VAD (a plain task's work)
    cpu_words: float           # whisper with word timestamps
    cpu_vad: float
    audio: np.ndarray = field(repr=False)


def prepare(clips: list[realistic.Clip], timing: bool) -> list[Prepared]:
    """Each clip's transcripts (and, with `timing`, the plain one's CPU time: else 0)."""
    engine = LocalEngine(EngineConfig())
    model = engine.models.load()
    out = []
    for n, clip in enumerate(clips, 1):
        cpu_plain = transcribe(engine, model, clip, speaker=False)[1] if timing else 0.0
        timed, cpu_words = transcribe(engine, model, clip, speaker=True)
        audio = decode(str(clip.path))
        cpu = time.process_time()
        speakers.speech_regions(audio)
        cpu_vad = time.process_time() - cpu
        out.append(Prepared(clip, timed, cpu_plain + cpu_vad if timing else 0.0, cpu_words, cpu_vad, audio))
        print(f"  prepared {n}/{len(clips)} {clip.path.name}", file=sys.stderr, end="\r")
    engine.close()
    print(file=sys.stderr)
    return out


# --- labelling and its measures ------------------------------------------------------------


@dataclass
class Run:
    labelled: speakers.Labelled
    cpu_label: float           # VAD, embedding, clustering, labels


def label(encoder, item: Prepared, cfg: EngineConfig, windows=None) -> tuple[Run, object]:
    """The labelling pipeline on a prepared clip (as label_speakers runs it in the engine);
    `windows` (from an earlier call) skips the embedding."""
    cpu = time.process_time()
    if windows is None:
        windows = speakers.find_windows(encoder, item.audio, cfg.speaker_step_s)
    if isinstance(windows, str):
        labelled = speakers.all_one_speaker(item.timed, windows)
    else:
        labelled = speakers.label_with_windows(item.timed, windows, cfg.speaker_threshold)
    return Run(labelled, time.process_time() - cpu), windows


def untranscribed(clip: realistic.Clip, timed: list) -> tuple[float, float]:
    """(seconds of the clip's reference speech that no transcribed segment covers, seconds of
    reference speech)."""
    from pyannote.core import Segment, Timeline

    speech = Timeline([Segment(start, end) for start, end, _ in clip.turns]).support()
    said = Timeline([Segment(s.start, s.end) for s in timed if s.end > s.start]).support()
    covered = speech.crop(said, mode="intersection").duration() if said else 0.0
    return speech.duration() - covered, speech.duration()


class Scores:
    """DER at collar 0 and 0.25 and its parts at collar 0, of the labelled segments and of the
    speaker turns (what a speaker_turns=true task gets beside them); the share of clips with the
    right number of speakers in each; the speech whisper left untranscribed; CPU."""

    def __init__(self):
        from pyannote.metrics.diarization import DiarizationErrorRate

        self.der = {(what, collar): DiarizationErrorRate(collar=collar, skip_overlap=False)
                    for what in ("segments", "turns") for collar in (0.0, 0.25)}
        self.right = {"segments": 0, "turns": 0}
        self.clips = 0
        self.untranscribed = self.speech = 0.0
        self.cpu_plain = self.cpu_labelled = 0.0

    def add(self, item: Prepared, run: Run) -> dict:
        clip, name = item.clip, item.clip.path.stem
        ref = annotation(clip.turns)
        hyps = {"segments": hypothesis(run.labelled.segments), "turns": timeline(run.labelled.turns)}
        ders = {(what, collar): metric(ref, hyps[what], uri=name) for (what, collar), metric in self.der.items()}
        heard = {"segments": {s.speaker for s in run.labelled.segments}}
        heard["turns"] = heard["segments"] | {t.speaker for t in run.labelled.turns}   # all the result names
        for what, found in heard.items():
            self.right[what] += len(found) == len(clip.speakers)
        self.clips += 1
        missing, speech = untranscribed(clip, item.timed)
        self.untranscribed += missing
        self.speech += speech
        labelled = item.cpu_words + run.cpu_label
        self.cpu_plain += item.cpu_plain
        self.cpu_labelled += labelled
        return {"clip": name, "speakers": len(clip.speakers), "found": len(heard["segments"]),
                "found_with_turns": len(heard["turns"]), "der0": round(ders["segments", 0.0], 4),
                "der25": round(ders["segments", 0.25], 4), "turns_der0": round(ders["turns", 0.0], 4),
                "turns_der25": round(ders["turns", 0.25], 4), "cpu_plain": round(item.cpu_plain, 3),
                "cpu_labelled": round(labelled, 3)}

    def summary(self) -> dict:
        out = {}
        for what in ("segments", "turns"):
            parts = self.der[what, 0.0].accumulated_
            total = parts["total"] or 1.0
            out[what] = {"der0": abs(self.der[what, 0.0]), "der25": abs(self.der[what, 0.25]),
                         "missed0": parts["missed detection"] / total, "false_alarm0": parts["false alarm"] / total,
                         "confusion0": parts["confusion"] / total, "right": self.right[what] / max(self.clips, 1)}
        return {**out, "untranscribed": self.untranscribed / (self.speech or 1.0), "clips": self.clips,
                "speech_s": round(self.der["segments", 0.0].accumulated_["total"], 1),
                "cpu_ratio": self.cpu_labelled / self.cpu_plain if self.cpu_plain else None}


def evaluate(prepared: list[Prepared], cfg: EngineConfig, encoder, windows: dict | None = None) -> dict:
    """Scores per condition, per kind and over all, and the rows of the clips; `windows`
    (clip name -> Windows) is filled on the first call and reused after (for sweeps)."""
    groups: dict[str, Scores] = {}
    rows = []
    for item in prepared:
        name = item.clip.path.stem
        run, found = label(encoder, item, cfg, None if windows is None else windows.get(name))
        if windows is not None:
            windows[name] = found
        for group in ("all", item.clip.condition, f"kind:{item.clip.kind}"):
            row = groups.setdefault(group, Scores()).add(item, run)
        rows.append(row)
    return {"groups": {g: s.summary() for g, s in groups.items()}, "rows": rows}


# --- report --------------------------------------------------------------------------------


def table(results: dict[str, dict]) -> str:
    """Per split and group (all, each condition, each kind): the segments' figures, then the
    turns' (a task with speaker_turns=true)."""
    order = ["all", *realistic.CONDITIONS, *(f"kind:{k}" for k in realistic.KINDS)]
    rows = [(split, group, g) for split, result in results.items() for group in order
            if (g := result["groups"].get(group)) is not None]
    lines = ["The labelled segments (every speaker=true task):", "",
             "| split | group | clips | DER c0.25 | DER c0 | missed c0 | false alarm c0 | confusion c0 "
             "| right count | untranscribed | CPU labelled / plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, group, g in rows:
        lines.append(f"| {split} | {group.removeprefix('kind:')} | {g['clips']} | {figures(g['segments'])} "
                     f"| {g['untranscribed']:.1%} | {'-' if (ratio := g['cpu_ratio']) is None else f'{ratio:.2f}x'} |")
    lines += ["", "The speaker turns (speaker_turns=true; right count: every speaker the result names):", "",
              "| split | group | clips | DER c0.25 | DER c0 | missed c0 | false alarm c0 | confusion c0 "
              "| right count |", "|---|---|---|---|---|---|---|---|---|"]
    for split, group, g in rows:
        lines.append(f"| {split} | {group.removeprefix('kind:')} | {g['clips']} | {figures(g['turns'])} |")
    return "\n".join(lines)


def figures(g: dict) -> str:
    return (f"{g['der25']:.1%} | {g['der0']:.1%} | {g['missed0']:.1%} | {g['false_alarm0']:.1%} "
            f"| {g['confusion0']:.1%} | {g['right']:.0%}")


def sweep(prepared: list[Prepared], cfg: EngineConfig, encoder) -> str:
    windows: dict = {}
    lines = ["| threshold | DER c0.25 | DER c0 | missed c0 | confusion c0 | right count "
             "| turns: DER c0.25 | DER c0 | missed c0 | confusion c0 | right count |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for threshold in THRESHOLDS:
        g = evaluate(prepared, cfg.model_copy(update={"speaker_threshold": threshold}), encoder, windows)["groups"]["all"]
        lines.append(f"| {threshold} | " + " | ".join(
            f"{x['der25']:.1%} | {x['der0']:.1%} | {x['missed0']:.1%} | {x['confusion0']:.1%} | {x['right']:.0%}"
            for x in (g["segments"], g["turns"])) + " |")
        print(lines[-1], file=sys.stderr)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=[*SPLITS, "both"], default="both")
    parser.add_argument("--condition", action="append", choices=realistic.CONDITIONS,
                        help="only these conditions (repeatable); not saved")
    parser.add_argument("--sweep", action="store_true", help="DER per clustering threshold on the tuning split")
    parser.add_argument("--rows", action="store_true", help="print each clip's figures")
    args = parser.parse_args()
    cfg = EngineConfig()
    encoder = speakers.load_encoder()
    conditions = tuple(args.condition or realistic.CONDITIONS)
    if args.sweep:
        print(sweep(prepare(clip_set("tune", conditions), timing=False), cfg, encoder))
        return
    splits = list(SPLITS) if args.split == "both" else [args.split]
    results = {split: evaluate(prepare(clip_set(split, conditions), timing=split == "held-out"), cfg, encoder)
               for split in splits}
    if args.rows:
        for split, result in results.items():
            for row in result["rows"]:
                print(split, row)
    md = table(results)
    print(md)
    if args.split == "both" and not args.condition:
        save("speakers-real", "bench/speakers_real.py (realistic set: bench/realistic.py)", md,
             {"threshold": cfg.speaker_threshold, "step_s": cfg.speaker_step_s,
              "results": {s: {"groups": r["groups"], "clips": r["rows"]} for s, r in results.items()}},
             "python bench/speakers_real.py")


if __name__ == "__main__":
    main()
