"""End-to-end cost of the gateway against faster-whisper called directly.

The same audio (>= 60 s of espeak-ng speech) goes, in one run, through
  direct:  faster-whisper with exactly the local engine's settings (model, device,
           compute type, threads, beam size, VAD), decoding the file and reading all segments;
  gateway: the public API of a `transcribe-gateway serve` subprocess on SQLite:
           upload + async-generate-audio + polling the status until completed.
Each side is warmed up once (model load not counted), then the runs alternate.
Target: gateway median <= 1.10 x direct median.

    python bench/e2e.py            # 5 runs each; table printed and saved in bench/results/
    python bench/e2e.py --runs 1   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
BASE = "/serve/api/v2"
TARGET = 1.10

SCRIPT = [
    ("en-us", "Good morning everyone, and thank you for joining the weekly planning meeting."),
    ("en-gb+f3", "Thanks. Before we start, can we look at the release schedule for next month?"),
    ("en-us", "Sure. The release candidate is due on the fourteenth, and testing takes about a week."),
    ("en-gb+f3", "That leaves us very little time for the documentation and the translations."),
    ("en-us", "Agreed. I suggest we freeze the features on Friday and spend the rest on polish."),
    ("en-gb+f3", "The support team also asked for a summary of the known issues before the launch."),
    ("en-us", "I will write that summary today and share it with everyone this afternoon."),
    ("en-gb+f3", "Great. The next topic is the budget for the new servers in the second quarter."),
    ("en-us", "We asked for three machines, but finance approved only two of them so far."),
    ("en-gb+f3", "Then we should move the search index to the new hardware first, it needs it most."),
    ("en-us", "Fine by me. Is there anything else, or can we end the meeting a little early today?"),
    ("en-gb+f3", "Nothing else from me. Thank you all, and have a good rest of the week."),
]


def make_audio(min_seconds: float = 75.0) -> Path:
    """A conversation of two espeak-ng voices, repeated until it lasts >= min_seconds; cached."""
    out = CACHE / f"e2e-{int(min_seconds)}s.wav"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for i, (voice, text) in enumerate(SCRIPT):
            part = Path(tmp) / f"{i:02d}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", str(part), text], check=True)
            parts.append(str(part))
        one = Path(tmp) / "one.wav"
        subprocess.run(["sox", *parts, "-r", "16000", str(one)], check=True)
        repeat = max(1, int(min_seconds // duration(one)) + 1)
        subprocess.run(["sox", *[str(one)] * repeat, str(out)], check=True)
    return out


def duration(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True).stdout)


class Direct:
    """faster-whisper called directly, configured like the local engine."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from gateway.config import EngineConfig
        from gateway.engine import bundled_model_path, resolve_cpu_threads

        cfg = EngineConfig()
        self.cfg = cfg
        self.model = WhisperModel(bundled_model_path(), device=cfg.device, compute_type=cfg.compute_type,
                                  cpu_threads=resolve_cpu_threads(cfg), num_workers=cfg.concurrency)

    def run(self, path: Path) -> int:
        from faster_whisper.audio import decode_audio

        audio = decode_audio(str(path), sampling_rate=16000)
        segments, _ = self.model.transcribe(audio, beam_size=self.cfg.beam_size, vad_filter=self.cfg.vad_filter)
        return len(list(segments))


class Gateway:
    """A `transcribe-gateway serve` subprocess on a temporary SQLite database."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = workdir / "gateway.toml"
        cfg.write_text(f'[database]\nurl = "sqlite:///{workdir}/gw.db"\n[storage]\ndir = "{workdir}/assets"\n'
                       '[log]\nformat = "json"\nlevel = "warning"\n')
        self.log = open(workdir / "gateway.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg),
                                      "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(600):
            try:
                async with http.get(self.url + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    async def run(self, http: aiohttp.ClientSession, path: Path) -> int:
        form = aiohttp.FormData()
        form.add_field("file", path.read_bytes(), filename=path.name)
        async with http.post(self.url + BASE + "/upload", data=form) as r:
            asset_id = (await r.json())["data"]["asset_id"]
        async with http.post(self.url + BASE + "/transcriptions/async-generate-audio",
                             json={"asset_id": asset_id}) as r:
            task_id = (await r.json())["data"]["task_id"]
        while True:
            async with http.get(f"{self.url}{BASE}/transcriptions/{task_id}") as r:
                task = (await r.json())["data"]
            if task["status"] == "completed":
                return len(task["result"]["data"])
            if task["status"] == "failed":
                raise RuntimeError(task["error"])
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def measure(runs: int, audio: Path) -> dict:
    direct = Direct()
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(Path(tmp))
        try:
            async with aiohttp.ClientSession() as http:
                await gw.ready(http)
                sides = {"direct": lambda: asyncio.to_thread(direct.run, audio),
                         "gateway": lambda: gw.run(http, audio)}
                counts = {name: await run() for name, run in sides.items()}  # warm-up
                for _ in range(runs):
                    for name, run in sides.items():
                        t0 = time.perf_counter()
                        assert await run() == counts[name]
                        times[name].append(time.perf_counter() - t0)
        finally:
            gw.stop()
    return {"times": times, "segments": counts}


def table(audio_s: float, runs: int, times: dict[str, list[float]]) -> tuple[str, dict]:
    d_med, g_med = statistics.median(times["direct"]), statistics.median(times["gateway"])
    ratio = g_med / d_med
    summary = {
        "audio_s": round(audio_s, 2), "runs": runs,
        "direct_median_s": round(d_med, 3), "direct_min_s": round(min(times["direct"]), 3),
        "gateway_median_s": round(g_med, 3), "gateway_min_s": round(min(times["gateway"]), 3),
        "ratio": round(ratio, 3), "target": TARGET, "pass": ratio <= TARGET,
        "realtime_factor_gateway": round(audio_s / g_med, 1),
    }
    rows = [
        "| audio | runs | direct median (min) | gateway median (min) | gateway / direct | real-time factor | target | result |",
        "|---|---|---|---|---|---|---|---|",
        f"| {audio_s:.1f} s | {runs} | {d_med:.3f} s ({min(times['direct']):.3f}) "
        f"| {g_med:.3f} s ({min(times['gateway']):.3f}) | {ratio:.3f}x | {audio_s / g_med:.1f}x "
        f"| <= {TARGET:.2f}x | {'pass' if ratio <= TARGET else 'FAIL'} |",
    ]
    return "\n".join(rows), summary


def environment() -> dict:
    from importlib.metadata import version

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "faster_whisper": version("faster-whisper"),
            "ctranslate2": version("ctranslate2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("espeak-ng") or not shutil.which("sox"):
        sys.exit("needs espeak-ng and sox (apt-get install espeak-ng sox)")
    audio = make_audio()
    audio_s = duration(audio)
    result = asyncio.run(measure(args.runs, audio))
    md, summary = table(audio_s, args.runs, result["times"])
    env = environment()
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.md").write_text(
        f"# bench/e2e.py\n\n{md}\n\nSegments per run: {result['segments']}. Machine: {env['cpus']} CPUs, "
        f"Python {env['python']}, faster-whisper {env['faster_whisper']}, ctranslate2 {env['ctranslate2']}; "
        f"{env['date']}.\nReproduce: `python bench/e2e.py --runs {args.runs}`\n")
    (RESULTS / "e2e.json").write_text(json.dumps({**summary, **env, "times": result["times"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
