"""The local engine against faster-whisper called directly, sequential and batched, with the word error rate.

In one run, on each of two recordings of --minutes from a known text (cached in bench/.cache/):
a conversation of two espeak-ng voices taking turns, with pauses (results/engine.md); and
two-speaker telephone dialogues of bench/realistic.py, voices varied in pitch, rate and formants,
with short turns and overlaps, over a 300-3,400 Hz, 8-kHz G.711 line (results/engine-telephone.md):
  (a) sequential: faster-whisper's `WhisperModel.transcribe` in this process (what the self-hosted
      peers run): the bundled model and the engine's settings (device, compute type, threads, beam
      size, VAD); decode the file, read all segments;
  (b) batched:    faster-whisper's `BatchedInferencePipeline.transcribe` directly, batch_size =
      engine.batch_size, with segment timestamps (`without_timestamps=False`);
  (c) gateway:    `python -m gateway serve` (temporary SQLite database, engine at its defaults):
      upload + async-generate-audio with a `callback_url`, until the signed callback arrives at a
      loopback receiver in this process (bench/e2e.py's Gateway);
  (d) speakers:   the same with `speaker: true` (targets: d/c <= 1.25).
Each side is warmed up once; then the runs go round the sides. Printed: median (min) of each side,
(c)/(a) (target <= 0.45), (c)/(b) (target <= 1.05), (d)/(c), and each side's WER against the text.

Then the accuracy set: five minutes and more of espeak-ng speech (four voices, a file each, pauses
between sentences), the test suite's clips and the telephone dialogues, each transcribed by the engine in this process
with batch_size = 0 (sequential) and batch_size = engine.batch_size; the WER of each file (target:
batched <= sequential + 1 point).

    python bench/engine.py                  # 3 minutes, 3 runs per side; bench/results/engine.md,
                                            # engine-telephone.md (and .json)
    python bench/engine.py --also-10        # and again on 10 minutes (engine-10min.md, .json)
    python bench/engine.py --quick          # 1 run per side (smoke test; same audio)
    python bench/engine.py --sweep          # engine time by batch_size (0 4 8 16) on 3 minutes and
                                            # on short clips: engine-sweep.md, .json

Needs espeak-ng and sox on PATH. Exits with status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from common import isolate, save_results
from e2e import CACHE, Direct, Gateway, audio_seconds
from texts import LONG_SPEECH, SENTENCE  # tests/texts.py (common puts tests/ on the path): the suite's clips
from wer import wer

import realistic  # bench/realistic.py: the speaker bench's realistic speech

TARGETS = {"gateway/sequential": 0.45, "gateway/batched": 1.05, "speakers/gateway": 1.25}
WER_SLACK = 0.01  # batched may be this much worse than sequential (1 point)
SPEED = 165
CONVERSATION = ("en-us", "en-gb+f3")
ACCURACY_VOICES = ("en-us", "en-gb", "en-gb+f3", "en-us+m3")
PER_FILE = 16  # sentences of each accuracy file
GAPS = (0.4, 0.9, 1.5)  # pauses after sentences, in turn

SENTENCES = [
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "Before we start, can we look at the release schedule for next month?",
    "The release candidate is due at the end of the week, and testing takes a few days.",
    "That leaves us very little time for the documentation and the translations.",
    "I suggest we freeze the features on Friday and spend the rest of the time on polish.",
    "The support team also asked for a summary of the known issues before the launch.",
    "I will write that summary today and share it with everyone this afternoon.",
    "The next topic is the budget for the new servers in the second quarter.",
    "We asked for three machines, but finance approved only two of them so far.",
    "Then we should move the search index to the new hardware first, because it needs it most.",
    "The old database server can stay where it is until the summer.",
    "What about the customer who reported slow uploads last Tuesday?",
    "We found the cause: their proxy limited every connection to a single megabyte per second.",
    "So nothing on our side needs to change, but we should explain it in the help pages.",
    "The same question came up twice in the forum, so a short article would help.",
    "I can write it, if someone from operations reviews the technical details.",
    "Send it to me by Thursday and I will read it the same day.",
    "Let us also remember to renew the certificates before they expire in June.",
    "The weather forecast says it will rain all weekend, so the picnic is cancelled.",
    "My brother bought a small boat and wants to sail along the coast this summer.",
    "The library downtown stays open late on Wednesdays and has a quiet reading room.",
    "She planted tomatoes, beans and a row of sunflowers behind the garage.",
    "The train to the airport leaves every twenty minutes from the main station.",
    "Please remember to switch off the lights and lock the door when you leave.",
    "The museum has a new exhibition about the history of maps and navigation.",
    "He spent the whole evening fixing the bicycle and then rode it around the block.",
    "Our neighbours are painting their house a bright shade of yellow.",
    "The children built a castle of sand and watched the tide wash it away.",
    "A good cup of coffee in the morning makes the long meeting much easier.",
    "The recipe needs two eggs, a cup of flour and a little bit of butter.",
    "The mountain road was closed after the storm brought down several trees.",
    "We watched an old film about a detective who solves crimes in a foggy city.",
    "The bakery on the corner sells fresh bread until it runs out around noon.",
    "Most of the students finished the exam early and went outside to enjoy the sun.",
    "The orchestra rehearsed the symphony for weeks before the opening night.",
    "Nothing else from me. Thank you all, and have a good rest of the week.",
]


# --- audio -------------------------------------------------------------------------------


def said(voice: str, text: str, speed: int) -> Path:
    """One sentence as espeak-ng says it (22.05 kHz WAV), cached by its content."""
    key = hashlib.sha256(json.dumps([voice, text, speed]).encode()).hexdigest()[:16]
    out = CACHE / "sentences" / f"{key}.wav"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".part.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(partial), text], check=True)
        partial.replace(out)  # only a complete file lands in the cache
    return out


def spoken(name: str, lines: list[tuple[str, str]], speed: int = SPEED) -> tuple[Path, str]:
    """`lines` ((voice, sentence) pairs) spoken in turn at `speed` words a minute with GAPS between
    them, as one 16 kHz mono WAV cached by its content; and the text said."""
    key = hashlib.sha256(json.dumps([lines, speed, GAPS]).encode()).hexdigest()[:12]
    out = CACHE / f"engine-{name}-{key}.wav"
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            gaps = [Path(tmp) / f"gap{g}.wav" for g in GAPS]
            for g, gap in zip(GAPS, gaps):
                subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(gap), "trim", "0", str(g)], check=True)
            parts = [str(p) for i, (voice, text) in enumerate(lines)
                     for p in (said(voice, text, speed), gaps[i % len(gaps)])]
            whole = Path(tmp) / "all.wav"
            subprocess.run(["sox", *parts, "-r", "16000", "-c", "1", str(whole)], check=True)
            whole.replace(out)
    return out, " ".join(text for _, text in lines)


def conversation(minutes: float) -> tuple[Path, str]:
    """Two voices taking turns through SENTENCES (again and again) for at least `minutes`."""
    lines: list[tuple[str, str]] = []
    seconds = 0.0
    while seconds < minutes * 60:
        n = len(lines)
        lines.append((CONVERSATION[n % 2], SENTENCES[n % len(SENTENCES)]))
        seconds += audio_seconds(said(*lines[-1], SPEED)) + GAPS[n % len(GAPS)]
    return spoken(f"talk{minutes:g}min", lines)


def telephone_call(minutes: float) -> tuple[Path, str]:
    """Two-speaker dialogues of bench/realistic.py (voices varied in pitch, rate and formants;
    short turns, backchannels, split sentences, overlaps) over a telephone line (300-3,400 Hz,
    8 kHz, G.711), one after another for at least `minutes`; and the text said."""
    out = CACHE / "realistic-calls"
    clips, seconds, seed = [], 0.0, 5000  # seeds of their own: not the speaker bench's
    while seconds < minutes * 60:
        clips.append(realistic.conversation(seed, 2, "telephone", out, "dialogue"))
        seconds, seed = seconds + clips[-1].duration, seed + 1
    wav = CACHE / f"engine-telephone{minutes:g}min-v{realistic.VERSION}.wav"
    if not wav.exists():
        partial = wav.with_suffix(".part.wav")
        subprocess.run(["sox", *[str(c.path) for c in clips], str(partial)], check=True)
        partial.replace(wav)
    return wav, " ".join(c.text for c in clips)


AUDIO = {"conversation": (conversation, "two espeak-ng voices taking turns, with pauses"),
         "telephone": (telephone_call, "two-speaker telephone dialogues (bench/realistic.py: varied voices, "
                                       "short turns, overlaps; 300-3,400 Hz, 8 kHz, G.711)")}


def accuracy_set() -> list[tuple[str, Path, str]]:
    """(name, wav, text): a file per voice of ACCURACY_VOICES, PER_FILE sentences each (the voices
    start at different sentences), then the test suite's clips."""
    out = []
    for v, voice in enumerate(ACCURACY_VOICES):
        lines = [(voice, SENTENCES[(v * 9 + i) % len(SENTENCES)]) for i in range(PER_FILE)]
        out.append((voice, *spoken(f"wer-{voice}", lines)))
    for name, text in (("tests: speech_wav", SENTENCE), ("tests: long_speech_wav", LONG_SPEECH)):
        out.append((name, *spoken(name.split()[-1], [("en-us", text)], speed=160)))  # as conftest.espeak
    out.append(("telephone dialogues", *telephone_call(3)))
    return out


# --- the sides ---------------------------------------------------------------------------


class Batched(Direct):
    """(b): faster-whisper's batched pipeline directly, as its README shows it, with segment timestamps."""

    name = "batched"

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def _transcribe(self, path: Path) -> list[str]:
        from faster_whisper import BatchedInferencePipeline
        from faster_whisper.audio import decode_audio

        audio = decode_audio(str(path), sampling_rate=16000)
        segments, _ = BatchedInferencePipeline(self.model).transcribe(
            audio, beam_size=self.cfg.beam_size, batch_size=self.batch_size, without_timestamps=False)
        return [s.text.strip() for s in segments if s.text.strip()]


class Speakers:
    """(d): the gateway of (c), asked for speaker labels."""

    name = "speakers"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def run(self, path: Path) -> list[str]:
        return await self.gateway.run(path, speaker=True)


async def measure(audio: Path, runs: int, workdir: Path, batch_size: int) -> dict:
    sequential, batched = Direct(), Batched(batch_size)
    sequential.name = "sequential"
    async with aiohttp.ClientSession() as http:
        gateway = Gateway(workdir, http)
        try:
            await gateway.start()
            sides = [sequential, batched, gateway, Speakers(gateway)]
            texts = {side.name: " ".join(await side.run(audio)) for side in sides}  # warm-up
            times: dict[str, list[float]] = {side.name: [] for side in sides}
            for i in range(runs):
                for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                    t0 = time.perf_counter()
                    await side.run(audio)
                    times[side.name].append(time.perf_counter() - t0)
            return {"times": times, "texts": texts}
        finally:
            await gateway.close()


def summarise(audio_s: float, text: str, result: dict) -> dict:
    median = {side: statistics.median(t) for side, t in result["times"].items()}
    ratios = {}
    for pair, target in TARGETS.items():
        top, bottom = pair.split("/")
        ratio = median[top] / median[bottom]
        ratios[pair] = {"ratio": round(ratio, 3), "target": target, "pass": ratio <= target}
    errors = {side: round(wer(text, t), 4) for side, t in result["texts"].items()}
    wer_pass = errors["gateway"] <= errors["sequential"] + WER_SLACK
    return {"audio_s": round(audio_s, 1),
            "sides": {side: {"median_s": round(m, 3), "min_s": round(min(result["times"][side]), 3),
                             "realtime": round(audio_s / m, 1), "wer": errors[side]} for side, m in median.items()},
            "ratios": ratios, "wer_pass": wer_pass,
            "pass": wer_pass and all(r["pass"] for r in ratios.values()),
            "times_s": {k: [round(t, 3) for t in v] for k, v in result["times"].items()}}


def accuracy(batch_size: int) -> dict:
    """Each file of the accuracy set through the engine, sequential and batched: WER and seconds."""
    from faster_whisper.audio import decode_audio

    from gateway.config import EngineConfig
    from gateway.engine import LocalEngine, TranscribeRequest

    engines = {"sequential": LocalEngine(EngineConfig(batch_size=0)),
               "batched": LocalEngine(EngineConfig(batch_size=batch_size))}
    model = engines["sequential"].models.load()  # the default model, shared by both engines
    out = {}
    for name, wav, text in accuracy_set():
        audio = decode_audio(str(wav), sampling_rate=16000)
        row = {"audio_s": round(len(audio) / 16000, 1)}
        for side, engine in engines.items():
            t0 = time.perf_counter()
            timed, _ = engine.timed_segments(model, audio, TranscribeRequest(path=str(wav)), lambda f: None)
            row[f"{side}_s"] = round(time.perf_counter() - t0, 2)
            row[f"{side}_wer"] = round(wer(text, " ".join(s.text for s in timed)), 4)
            row[f"{side}_longest_segment_s"] = round(max((s.end - s.start for s in timed), default=0.0), 2)
        out[name] = row
    for engine in engines.values():
        engine.close()
    return out


# --- the batch-size sweep ------------------------------------------------------------------


def sweep(minutes: float, rounds: int) -> dict:
    """Engine seconds (min, median of `rounds`) by batch_size, on the conversation and on its first
    5, 10, 20 and 30 s: where batching starts to pay."""
    from faster_whisper.audio import decode_audio

    from gateway.config import EngineConfig
    from gateway.engine import LocalEngine, TranscribeRequest

    wav, _ = conversation(minutes)
    audio = decode_audio(str(wav), sampling_rate=16000)
    clips = {f"{s} s": audio[:s * 16000] for s in (5, 10, 20, 30)} | {f"{len(audio) / 16000:.0f} s": audio}
    sizes = (0, 4, 8, 16)
    engines = {b: LocalEngine(EngineConfig(batch_size=b)) for b in sizes}
    model = engines[0].models.load()
    req = TranscribeRequest(path=str(wav))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for clip, samples in clips.items():
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(rounds):
            for b in sizes:
                t0 = time.perf_counter()
                engines[b].timed_segments(model, samples, req, lambda f: None)
                times[b].append(time.perf_counter() - t0)
        out[clip] = {str(b): {"min_s": round(min(t), 3), "median_s": round(statistics.median(t), 3)}
                     for b, t in times.items()}
        print(clip, out[clip], f"load {os.getloadavg()[0]:.2f}", flush=True)
    return out


# --- reporting ---------------------------------------------------------------------------

SIDE_NAMES = {"sequential": "(a) faster-whisper sequential, directly", "batched": "(b) faster-whisper batched, directly",
              "gateway": "(c) gateway end to end (callback)", "speakers": "(d) gateway, speaker=true"}


def markdown(s: dict) -> str:
    lines = [f"Audio: {s['audio_s']:.1f} s of {AUDIO[s['audio']][1]}; {s['runs']} measured runs per side.",
             "", "| side | median (min) | real-time factor | WER |", "|---|---|---|---|"]
    for side, r in s["sides"].items():
        lines.append(f"| {SIDE_NAMES[side]} | {r['median_s']:.2f} s ({r['min_s']:.2f}) | {r['realtime']:.1f}x "
                     f"| {100 * r['wer']:.1f} % |")
    lines += ["", "| ratio of the medians | value | target | result |", "|---|---|---|---|"]
    for pair, r in s["ratios"].items():
        lines.append(f"| {pair} | {r['ratio']:.3f} | <= {r['target']:.2f} | {'pass' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def accuracy_markdown(rows: dict, batch_size: int) -> str:
    lines = [f"Accuracy set, the engine sequential (batch_size 0) and batched (batch_size {batch_size}):", "",
             "| file | audio | WER sequential | WER batched | seconds seq / batched | longest segment seq / batched |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['audio_s']:.1f} s | {100 * r['sequential_wer']:.1f} % | {100 * r['batched_wer']:.1f} % "
                     f"| {r['sequential_s']:.2f} / {r['batched_s']:.2f} "
                     f"| {r['sequential_longest_segment_s']:.1f} / {r['batched_longest_segment_s']:.1f} s |")
    return "\n".join(lines)


def sweep_markdown(rows: dict) -> str:
    sizes = list(next(iter(rows.values())))
    lines = ["Engine seconds by engine.batch_size, min (median) of the rounds:", "",
             "| audio | " + " | ".join(f"batch_size {b}" for b in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for clip, r in rows.items():
        lines.append(f"| {clip} | " + " | ".join(f"{r[b]['min_s']:.2f} ({r[b]['median_s']:.2f})" for b in sizes) + " |")
    return "\n".join(lines)


def bench(kind: str, minutes: float, runs: int, name: str, rows: dict | None, batch_size: int) -> bool:
    audio, text = AUDIO[kind][0](minutes)
    with tempfile.TemporaryDirectory(prefix="tgw-bench-engine-") as tmp:
        summary = summarise(audio_seconds(audio), text, asyncio.run(measure(audio, runs, Path(tmp), batch_size)))
    summary |= {"runs": runs, "audio": kind}
    table = markdown(summary)
    accuracy_pass = True
    if rows is not None:
        accuracy_pass = all(r["batched_wer"] <= r["sequential_wer"] + WER_SLACK for r in rows.values())
        table += "\n\n" + accuracy_markdown(rows, batch_size)
        summary |= {"accuracy": rows, "accuracy_pass": accuracy_pass}
    print(table, flush=True)
    save_results(name, table, f"engine.batch_size {batch_size}, bundled tiny.en int8.",
                 f"python bench/engine.py --minutes {minutes:g} --runs {runs}", summary)
    return summary["pass"] and accuracy_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the conversation (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side (default 3)")
    parser.add_argument("--quick", action="store_true", help="one run per side")
    parser.add_argument("--also-10", action="store_true", help="then the same on 10 minutes")
    parser.add_argument("--sweep", action="store_true", help="only the batch-size sweep")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="engine.batch_size of the batched sides and the gateway (default 8, the config's)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    if runs < 1 or args.minutes < 3:
        parser.error("--runs must be at least 1 and --minutes at least 3")
    for tool in ("espeak-ng", "sox", "soxi"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install espeak-ng sox)")
    isolate()
    if args.sweep:
        rows = sweep(args.minutes, runs)
        save_results("engine-sweep", sweep_markdown(rows), "The engine in this process (timed_segments).",
                     f"python bench/engine.py --sweep --runs {runs}", {"sweep": rows})
        print(sweep_markdown(rows))
        return
    batch_size = args.batch_size
    os.environ["TGW_ENGINE__BATCH_SIZE"] = str(batch_size)  # the gateway's, (c) and (d)
    ok = bench("conversation", args.minutes, runs, "engine", accuracy(batch_size), batch_size)
    ok = bench("telephone", args.minutes, runs, "engine-telephone", None, batch_size) and ok
    if args.also_10:
        ok = bench("conversation", 10, runs, "engine-10min", None, batch_size) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
