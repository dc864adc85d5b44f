"""Speaker labelling quality and cost on synthetic conversations of espeak-ng voices.

Conversations of 2, 3 and 4 voices (turns of 1-8 s; half the changes after a pause of
0.3-1.2 s, half quick exchanges of 0-0.15 s) and single-voice clips are built from a seed,
with their reference turns written as RTTM under bench/.cache/speakers/. Each clip goes
through the local engine (LocalEngine.transcribe, the code a task runs) with speaker=false
and with speaker=true, alternating which runs first. Reported:
  DER (pyannote.metrics, collar 0.25 s, overlap counted) per number of speakers, from the
  labelled segments the API returns; the share of clips with the right number of speakers;
  WER of the transcript without and with labelling; time with labelling / without.
Targets: DER <= 10 %, right count >= 90 %, WER unchanged, time ratio <= 1.3.

    python bench/speakers.py            # 8 conversations per speaker count + 4 single voices,
                                        # each run twice with and twice without labelling
    python bench/speakers.py --quick    # 2 per count + 2 single voices, once each
    python bench/speakers.py --sweep --per-count 24   # DER and count accuracy per clustering
                                        # threshold on other seeds (the tuning set), saved as
                                        # speakers-sweep
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway import speakers  # noqa: E402
from gateway.config import EngineConfig  # noqa: E402
from gateway.audio import SAMPLE_RATE, decode  # noqa: E402
from gateway.engine import LocalEngine, TranscribeRequest  # noqa: E402

RESULTS = HERE / "results"
CACHE = HERE / ".cache" / "speakers"
VOICES = ["en-us", "en+f4", "en-us+klatt", "en+Andy", "en+belinda"]
COLLAR = 0.25
TEST_SEED, TUNE_SEED = 0, 1000   # the reported clips and the tuning clips never share a seed
THRESHOLDS = [0.24, 0.25, 0.26, 0.27, 0.28, 0.29, 0.3, 0.31, 0.32]

CORPUS = """
The committee met on a rainy afternoon to discuss the plans for the new library building.
Most of the members agreed that the reading rooms should face the river and the park.
A few people worried about the cost of heating such a large open space in the winter.
The architect explained that the walls would be thick and the windows would have three layers of glass.
After a long debate the group voted to keep the old clock tower and to build around it.
Children from the local school had sent drawings of what they hoped the building would look like.
One drawing showed a slide from the top floor straight down into the garden below.
Everybody laughed, but the architect said she would think about a smaller version of the idea.
The budget would be reviewed again in the spring, once the engineers had finished their survey.
Until then the old library would stay open every day except Sunday and public holidays.
Volunteers offered to help move the books, which would take at least three full weekends.
The head librarian thanked everyone and promised to send a summary of the meeting by Friday.
On the way home several members stopped at the bakery to talk about the vote over coffee.
Some of them still thought the tower should become a small museum about the history of the town.
Others wanted a cafe on the roof, with a view of the hills and the old railway bridge.
In the end they agreed to ask the whole town in a short survey before the summer.
""".split()


@dataclass(frozen=True)
class Clip:
    name: str
    speakers: int
    wav: Path
    rttm: Path
    turns: tuple[tuple[float, float, str], ...]   # reference (start, end, voice)
    text: str


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of the text, 16 kHz mono, leading and trailing silence cut; cached."""
    key = hashlib.sha1(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    path = CACHE / "turns" / f"{key}.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
    audio = decode(str(path))
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio[:0]


def turn_text(rng: random.Random) -> str:
    """3 to 20 consecutive words of the corpus: 1-8 s of speech at espeak's pace."""
    n = rng.randint(3, 20)
    at = rng.randrange(len(CORPUS) - n)
    return " ".join(CORPUS[at:at + n]).rstrip(".,") + "."


def build_clip(seed: int, n_speakers: int, n_turns: int) -> Clip:
    """A conversation (or, with one speaker, a monologue) with its reference turns, cached."""
    rng = random.Random(seed * 100 + n_speakers)
    voices = rng.sample(VOICES, n_speakers)
    name = f"{n_speakers}spk-{seed}"
    order = [voices[i % n_speakers] for i in range(n_speakers)]   # everyone speaks early on
    while len(order) < n_turns:
        order.append(rng.choice([v for v in voices if v != order[-1] or n_speakers == 1]))
    pieces, turns, texts, at = [], [], [], 0.5
    pieces.append(np.zeros(int(0.5 * SAMPLE_RATE), np.float32))
    for voice in order:
        text = turn_text(rng)
        audio = speak(text, voice, rng.randint(150, 180))
        turns.append((round(at, 3), round(at + len(audio) / SAMPLE_RATE, 3), voice))
        texts.append(text)
        gap = rng.uniform(0.3, 1.2) if rng.random() < 0.5 else rng.uniform(0.0, 0.15)
        pieces += [audio, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        at += (len(audio) + int(gap * SAMPLE_RATE)) / SAMPLE_RATE
    wav, rttm = CACHE / f"{name}.wav", CACHE / f"{name}.rttm"
    write_wav(wav, np.concatenate(pieces))
    rttm.write_text("".join(f"SPEAKER {name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {v} <NA> <NA>\n"
                            for s, e, v in turns))
    return Clip(name, n_speakers, wav, rttm, tuple(turns), " ".join(texts))


def write_wav(path: Path, audio: np.ndarray) -> None:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def clips(first_seed: int, per_count: int, singles: int) -> list[Clip]:
    out = [build_clip(first_seed + i, n, n_turns=12) for n in (2, 3, 4) for i in range(per_count)]
    return out + [build_clip(first_seed + i, 1, n_turns=5) for i in range(singles)]


# --- measures ------------------------------------------------------------------------------


def annotation(rows):
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for start, end, who in rows:
        if end > start:
            ann[Segment(start, end)] = who
    return ann


def reference(clip: Clip):
    return annotation(clip.turns)


def hypothesis(segments) -> object:
    return annotation((s.start_time, s.end_time, s.speaker) for s in segments)


def timeline(turns) -> object:
    return annotation((t.start_time, t.end_time, t.speaker) for t in turns)


def normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def transcript(segments) -> str:
    return normalise_text(" ".join(s.text for s in segments))


def new_der():
    from pyannote.metrics.diarization import DiarizationErrorRate

    return DiarizationErrorRate(collar=COLLAR, skip_overlap=False)


# --- runs ----------------------------------------------------------------------------------


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0     # CPU seconds of this process (all threads): less sensitive to other load

    def __iadd__(self, other: "Timing") -> "Timing":
        self.wall += other.wall
        self.cpu += other.cpu
        return self


async def run_engine(engine: LocalEngine, clip: Clip, speaker: bool) -> tuple[tuple, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = await engine.transcribe(TranscribeRequest(path=str(clip.wav), speaker=speaker), lambda f: None)
    return outcome.segments, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def timeline_der(metric, clip: Clip, cfg: EngineConfig) -> float:
    """DER of the speaker timeline alone (no transcript): what the voices say, whisper aside."""
    windows = speakers.find_windows(speakers.load_encoder(), decode(str(clip.wav)),
                                     cfg.speaker_step_s)
    if isinstance(windows, str):
        return metric(reference(clip), annotation([]), uri=clip.name)
    turns = speakers.label_with_windows([], windows, cfg.speaker_threshold).turns
    return metric(reference(clip), timeline(turns), uri=clip.name)


async def evaluate(all_clips: list[Clip], cfg: EngineConfig, repeats: int) -> dict:
    """Each clip with and without labelling, `repeats` times each in the order plain, labelled,
    labelled, plain, ... (so drifts in machine load fall on both sides)."""
    import jiwer

    engine = LocalEngine(cfg)
    await run_engine(engine, all_clips[0], True)  # warm-up: both models loaded, not counted
    counts = sorted({c.speakers for c in all_clips})
    ders = {n: new_der() for n in counts}
    timeline_ders = {n: new_der() for n in counts}
    rows, refs, plain_hyps, labelled_hyps = [], [], [], []
    for clip in all_clips:
        outputs, spent = {}, {False: Timing(), True: Timing()}
        for speaker in [flag for i in range(repeats) for flag in ((False, True), (True, False))[i % 2]]:
            outputs[speaker], timing = await run_engine(engine, clip, speaker)
            spent[speaker] += timing
        labelled = outputs[True]
        der = ders[clip.speakers](reference(clip), hypothesis(labelled), uri=clip.name)
        der_timeline = timeline_der(timeline_ders[clip.speakers], clip, cfg)
        found = len({s.speaker for s in labelled})
        refs.append(normalise_text(clip.text))
        plain_hyps.append(transcript(outputs[False]))
        labelled_hyps.append(transcript(labelled))
        rows.append({"clip": clip.name, "speakers": clip.speakers, "found": found, "der": round(der, 4),
                     "der_timeline": round(der_timeline, 4), "audio_s": round(clip.turns[-1][1] + 0.5, 2),
                     **{f"{kind}_{side}": round(getattr(spent[flag], kind) / repeats, 3)
                        for kind in ("wall", "cpu") for side, flag in (("plain", False), ("labelled", True))}})
        r = rows[-1]
        print(f"  {clip.name:8s} found {found}  DER {der:6.1%} (timeline {der_timeline:6.1%})  "
              f"wall {r['wall_plain']:.2f} -> {r['wall_labelled']:.2f} s, "
              f"cpu {r['cpu_plain']:.2f} -> {r['cpu_labelled']:.2f} s", file=sys.stderr)
    engine.close()
    return {"rows": rows, "der": {n: abs(m) for n, m in ders.items()},
            "der_timeline": {n: abs(m) for n, m in timeline_ders.items()},
            "wer_plain": jiwer.wer(refs, plain_hyps), "wer_labelled": jiwer.wer(refs, labelled_hyps)}


def ratios(rows: list[dict], kind: str) -> tuple[float, float]:
    """Labelled / plain time: of the totals, and the median of the clips' ratios."""
    total = sum(r[f"{kind}_labelled"] for r in rows) / sum(r[f"{kind}_plain"] for r in rows)
    return total, statistics.median(r[f"{kind}_labelled"] / r[f"{kind}_plain"] for r in rows)


def report(result: dict, cfg: EngineConfig, repeats: int, load: tuple[float, float]) -> tuple[str, dict]:
    rows = result["rows"]
    conv = [r for r in rows if r["speakers"] > 1]
    singles = [r for r in rows if r["speakers"] == 1]
    right = sum(r["found"] == r["speakers"] for r in conv)
    right_single = sum(r["found"] == 1 for r in singles)
    wall, wall_median = ratios(rows, "wall")
    cpu, cpu_median = ratios(rows, "cpu")
    der, der_timeline = result["der"], result["der_timeline"]
    summary = {
        "der_segments": {str(n): round(v, 4) for n, v in der.items()},
        "der_timeline": {str(n): round(v, 4) for n, v in der_timeline.items()},
        "count_right_conversations": [right, len(conv)], "count_right_single": [right_single, len(singles)],
        "wer_plain": round(result["wer_plain"], 4), "wer_labelled": round(result["wer_labelled"], 4),
        "time_ratio_wall": round(wall, 3), "time_ratio_wall_median": round(wall_median, 3),
        "time_ratio_cpu": round(cpu, 3), "time_ratio_cpu_median": round(cpu_median, 3),
        "repeats": repeats, "load_average_before_after": load,
        "threshold": cfg.speaker_threshold, "step_s": cfg.speaker_step_s, "clips": rows,
    }
    n_per = " / ".join(str(sum(r["speakers"] == n for r in rows)) for n in (2, 3, 4))
    audio_min = sum(r["audio_s"] for r in rows) / 60
    md = "\n".join([
        "| | 2 speakers | 3 speakers | 4 speakers | single voice |",
        "|---|---|---|---|---|",
        f"| clips | {n_per.replace(' / ', ' | ')} | {len(singles)} |",
        "| DER, returned segments | " + " | ".join(f"{der[n]:.1%}" for n in (2, 3, 4, 1)) + " |",
        "| DER, speaker timeline | " + " | ".join(f"{der_timeline[n]:.1%}" for n in (2, 3, 4, 1)) + " |",
        "| right number of speakers | " + " | ".join(
            f"{sum(r['found'] == n for r in rows if r['speakers'] == n)}/{sum(r['speakers'] == n for r in rows)}"
            for n in (2, 3, 4, 1)) + " |",
        "",
        "| right count, all conversations | WER without labels | WER with labels "
        "| time with / without (wall: total, median clip) | (CPU: total, median clip) |",
        "|---|---|---|---|---|",
        f"| {right}/{len(conv)} ({right / len(conv):.0%}) | {result['wer_plain']:.2%} | {result['wer_labelled']:.2%} "
        f"| {wall:.2f}x, {wall_median:.2f}x | {cpu:.2f}x, {cpu_median:.2f}x |",
        "",
        f"{audio_min:.1f} min of audio; each clip run {repeats}x with and {repeats}x without labelling, "
        f"alternating; load average {load[0]:.1f} before, {load[1]:.1f} after (2 cores: others' work "
        "on the machine inflates wall times; CPU time is this process's own). "
        "Targets: DER <= 10 %, right count >= 90 %, WER unchanged, time <= 1.3x. "
        f"engine.speaker_threshold = {cfg.speaker_threshold}, engine.speaker_step_s = {cfg.speaker_step_s}; "
        f"collar {COLLAR} s. DER of the returned segments includes whisper's own timing and dropped "
        "words; DER of the timeline is the voices alone (VAD stretches shared among the windows).",
    ])
    return md, summary


def sweep(all_clips: list[Clip], cfg: EngineConfig) -> tuple[str, dict]:
    """DER and count accuracy per threshold; transcription and embeddings computed once per clip."""
    engine = LocalEngine(cfg)
    asyncio.run(engine.load())
    encoder = speakers.load_encoder()
    prepared = []
    for clip in all_clips:
        audio = decode(str(clip.wav))
        timed, _ = engine.timed_segments(engine.models.load(), audio, TranscribeRequest(path=str(clip.wav), speaker=True),
                                         lambda f: None)
        prepared.append((clip, timed, speakers.find_windows(encoder, audio, cfg.speaker_step_s)))
    table = {}
    for threshold in THRESHOLDS:
        ders = {(kind, n): new_der() for kind in ("segments", "timeline") for n in (2, 3, 4)}
        right = 0
        for clip, timed, windows in prepared:
            labelled = speakers.label_with_windows(timed, windows, threshold)
            right += len({s.speaker for s in labelled.segments}) == clip.speakers
            if clip.speakers > 1:
                ders["segments", clip.speakers](reference(clip), hypothesis(labelled.segments), uri=clip.name)
                ders["timeline", clip.speakers](reference(clip), timeline(labelled.turns), uri=clip.name)
        table[threshold] = {"der": {f"{kind} {n}": abs(m) for (kind, n), m in ders.items()},
                            "right": right / len(prepared)}
    md = ["| threshold | DER segments 2 / 3 / 4 spk | DER timeline 2 / 3 / 4 spk | right count (all clips) |",
          "|---|---|---|---|"]
    for t, r in table.items():
        md.append(f"| {t} | " + " / ".join(f"{r['der'][f'segments {n}']:.1%}" for n in (2, 3, 4))
                  + " | " + " / ".join(f"{r['der'][f'timeline {n}']:.1%}" for n in (2, 3, 4))
                  + f" | {r['right']:.0%} |")
    engine.close()
    return "\n".join(md), {str(t): {"der": {k: round(v, 4) for k, v in r["der"].items()},
                                   "right": round(r["right"], 4)} for t, r in table.items()}


def environment() -> dict:
    from importlib.metadata import version

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "faster_whisper": version("faster-whisper"),
            "torch": version("torch"), "resemblyzer": version("resemblyzer")}


def save(name: str, title: str, md: str, data: dict, command: str) -> None:
    env = environment()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(
        f"# {title}\n\n{md}\n\nMachine: {env['cpus']} CPUs, Python {env['python']}, faster-whisper "
        f"{env['faster_whisper']}, torch {env['torch']}, resemblyzer {env['resemblyzer']}; {env['date']}.\n"
        f"Reproduce: `{command}`\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({**data, **env}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 conversations per count, 2 single voices")
    parser.add_argument("--sweep", action="store_true", help="tune: DER per threshold on the tuning seeds")
    parser.add_argument("--per-count", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each clip per side (not with --quick)")
    args = parser.parse_args()
    if not shutil.which("espeak-ng"):
        sys.exit("needs espeak-ng (apt-get install espeak-ng)")
    per_count = args.per_count or (2 if args.quick else 8)
    singles = 2 if args.quick else 4
    cfg = EngineConfig()
    command = " ".join(["python bench/speakers.py", *sys.argv[1:]])
    if args.sweep:
        md, data = sweep(clips(TUNE_SEED, per_count, singles), cfg)
        print(md)
        save("speakers-sweep", "bench/speakers.py --sweep (tuning seeds)", md, {"thresholds": data}, command)
        return
    repeats = 1 if args.quick else args.repeats
    load_before = os.getloadavg()[0]
    result = asyncio.run(evaluate(clips(TEST_SEED, per_count, singles), cfg, repeats))
    md, summary = report(result, cfg, repeats, (round(load_before, 2), round(os.getloadavg()[0], 2)))
    print(md)
    save("speakers", "bench/speakers.py", md, summary, command)


if __name__ == "__main__":
    main()
