"""End-to-end cost of the gateway compared with calling faster-whisper directly.

The same audio (about 90 s of two espeak-ng voices, cached in bench/.cache/) goes, in one run, through
  direct:  faster-whisper in this process with exactly the local engine's settings (bundled model,
           device, compute type, cpu threads, workers, beam size, VAD): decode the file, read all segments;
  gateway: the memories API of a `python -m gateway serve` subprocess on a temporary SQLite database and
           storage folder: upload + async-generate-audio with a `callback_url`, until the signed callback
           with the transcript reaches a webhook receiver in this process (the documented way to get a
           result; polling the status endpoint every few ms would itself load the gateway's CPU);
  openai:  the same daemon's OpenAI-compatible API through the official `openai` client:
           `client.audio.transcriptions.create(model=..., file=..., response_format="verbose_json")`,
           one request that waits for the task.
Each side is warmed up once (model load is not counted); then the runs go round the sides, starting
with the next side in every round. Reported: median and min of each side, each side/direct of the
medians (targets: gateway <= 1.10, openai <= 1.05), and where the gateway's time goes (from its own
log lines).

    python bench/e2e.py             # 5 runs per side; writes bench/results/e2e.md and e2e.json
    python bench/e2e.py --runs 9
    python bench/e2e.py --quick     # 1 run per side, same audio (smoke test)

Needs espeak-ng and sox on PATH. Exits with status 1 when the target is missed.
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
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from aiohttp import web
from common import free_port, isolate
from gateway.client import GatewayClient

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
API = "/serve/api/v2"
TARGETS = {"gateway": 1.10, "openai": 1.05}  # side / direct, of the medians
MIN_AUDIO_S = 60.0

VOICES = ("en-us", "en-gb+f3")  # the speakers take turns
SCRIPT = [
    "Good morning everyone, and thank you for joining the weekly planning meeting.",
    "Thanks. Before we start, can we look at the release schedule for next month?",
    "Sure. The release candidate is due on the fourteenth, and testing takes about a week.",
    "That leaves us very little time for the documentation and the translations.",
    "Agreed. I suggest we freeze the features on Friday and spend the rest of the time on polish.",
    "The support team also asked for a summary of the known issues before the launch.",
    "I will write that summary today and share it with everyone this afternoon.",
    "Great. The next topic is the budget for the new servers in the second quarter.",
    "We asked for three machines, but finance approved only two of them so far.",
    "Then we should move the search index to the new hardware first, because it needs it most.",
    "Fine by me. The old database server can stay where it is until the summer.",
    "What about the customer in Denver who reported slow uploads last Tuesday?",
    "We found the cause. Their proxy limited every connection to one megabyte per second.",
    "So nothing on our side needs to change, but we should explain it in the help pages.",
    "Yes, and the same question came up twice in the forum, so a short article would help.",
    "I can write it, if someone from operations reviews the technical details.",
    "Happy to. Send it to me by Thursday and I will read it the same day.",
    "Good. Let us also remember to renew the certificates before they expire in June.",
    "I have a reminder for that. Is there anything else, or can we end a little early today?",
    "Nothing else from me. Thank you all, and have a good rest of the week.",
]
SPEED = 170  # words per minute


# --- audio -------------------------------------------------------------------------------


def make_audio() -> Path:
    """The conversation as one 16 kHz mono WAV, cached by the script's content."""
    key = hashlib.sha256(json.dumps([VOICES, SCRIPT, SPEED]).encode()).hexdigest()[:12]
    out = CACHE / f"e2e-{key}.wav"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            parts = [str(Path(tmp) / f"{i:02d}.wav") for i in range(len(SCRIPT))]
            for i, (text, part) in enumerate(zip(SCRIPT, parts)):
                voice = VOICES[i % len(VOICES)]
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(SPEED), "-w", part, text], check=True)
            partial = Path(tmp) / "all.wav"
            subprocess.run(["sox", *parts, "-r", "16000", "-c", "1", str(partial)], check=True)
            partial.replace(out)  # only a complete file lands in the cache
    seconds = audio_seconds(out)
    if seconds < MIN_AUDIO_S:
        sys.exit(f"{out} lasts {seconds:.1f} s; the benchmark needs >= {MIN_AUDIO_S:.0f} s")
    return out


def audio_seconds(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True).stdout)


# --- the two sides -----------------------------------------------------------------------


class Direct:
    """faster-whisper in this process, set up like gateway.local_models.load_model and LocalEngine._run."""

    name = "direct"

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from gateway.config import EngineConfig
        from gateway.local_models import bundled_model_path, resolve_cpu_threads

        self.cfg = EngineConfig()
        self.model = WhisperModel(bundled_model_path(), device=self.cfg.device, compute_type=self.cfg.compute_type,
                                  cpu_threads=resolve_cpu_threads(self.cfg), num_workers=self.cfg.concurrency)

    async def run(self, path: Path) -> list[str]:
        return await asyncio.to_thread(self._transcribe, path)

    def _transcribe(self, path: Path) -> list[str]:
        from faster_whisper.audio import decode_audio

        audio = decode_audio(str(path), sampling_rate=16000)
        segments, _ = self.model.transcribe(audio, language=None, beam_size=self.cfg.beam_size,
                                            vad_filter=self.cfg.vad_filter)
        return [s.text.strip() for s in segments if s.text.strip()]


class Gateway:
    """`python -m gateway serve` in a subprocess with its own database and storage, used via its API;
    results come back as callbacks to a receiver on a loopback port of this process."""

    name = "gateway"

    def __init__(self, workdir: Path, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{free_port()}"
        config = workdir / "gateway.toml"
        config.write_text("\n".join([
            "[server]", 'allow_private_hosts = ["127.0.0.1"]',  # the callback receiver below, on loopback
            "[database]", f"url = {json.dumps(f'sqlite:///{workdir}/gateway.db')}",
            "[storage]", f"dir = {json.dumps(str(workdir / 'assets'))}",
            "[log]", 'format = "json"', 'level = "info"', ""]))
        self.log_path = workdir / "gateway.log"
        with open(self.log_path, "wb") as log:  # cwd: plugins' relative default folders land in workdir
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                          "--port", self.url.rsplit(":", 1)[1]],
                                         cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        self.marks: dict[str, dict[str, float]] = {}  # task_id -> client wall-clock times of its run
        self.callbacks: dict[str, asyncio.Future] = {}  # task_id -> the callback payload, once received
        self.receiver: web.AppRunner | None = None
        self.callback_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._on_callback)
        self.receiver = web.AppRunner(app, access_log=None)
        await self.receiver.setup()
        port = free_port()
        await web.TCPSite(self.receiver, "127.0.0.1", port).start()
        self.callback_url = f"http://127.0.0.1:{port}/hook"
        await GatewayClient(self.url, http=self.http).wait_ready(timeout=60)

    async def _on_callback(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self._future(payload["task_id"]).set_result((time.time(), payload))
        return web.Response(text="ok")

    def _future(self, task_id: str) -> asyncio.Future:
        return self.callbacks.setdefault(task_id, asyncio.get_running_loop().create_future())

    async def _call(self, method: str, path: str, **kw) -> dict:
        async with self.http.request(method, self.url + API + path, **kw) as r:
            body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {body}")
        return body["data"]

    async def run(self, path: Path, **fields) -> list[str]:
        """The transcript's texts of `path`, submitted with `fields` (e.g. speaker=True) besides the asset."""
        start = time.time()
        form = aiohttp.FormData()
        form.add_field("file", path.read_bytes(), filename=path.name, content_type="audio/wav")
        asset_id = (await self._call("POST", "/upload", data=form))["asset_id"]
        uploaded = time.time()
        submitted = await self._call("POST", "/transcriptions/async-generate-audio",
                                     json={"asset_id": asset_id, "callback_url": self.callback_url, **fields})
        task_id = submitted["task_id"]
        received, payload = await asyncio.wait_for(self._future(task_id), timeout=600)
        self.marks[task_id] = {"start": start, "uploaded": uploaded, "seen": received}
        if not payload["data"]["success"]:
            raise RuntimeError(f"task {task_id} failed: {payload['data']['msg']}")
        return [s["text"] for s in payload["data"]["data"]["data"]]

    async def close(self) -> None:
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.receiver is not None:
            await self.receiver.cleanup()

    # Stages of a gateway run: (name, where it ends); "log:" marks are the gateway's own log lines.
    STAGES = [("upload", "uploaded"), ("submit", "log:task.queued"), ("wait for the worker", "log:task.claimed"),
              ("decode + transcribe", "log:engine.done"), ("store the result", "log:task.finished"),
              ("callback received", "seen")]

    def stages(self) -> dict[str, list[float]]:
        """Seconds spent in each stage of every measured run (client clock and log timestamps, one machine)."""
        logged: dict[str, dict[str, float]] = {}
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("task_id") in self.marks:
                when = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
                logged.setdefault(rec["task_id"], {})["log:" + rec["event"]] = when
        out: dict[str, list[float]] = {name: [] for name, _ in self.STAGES}
        for task_id, marks in self.marks.items():
            times = {**marks, **logged.get(task_id, {})}
            if any(mark not in times for _, mark in self.STAGES):
                continue  # a log line is missing (log format changed?): no breakdown for this run
            prev = times["start"]
            for name, mark in self.STAGES:
                out[name].append(times[mark] - prev)
                prev = times[mark]
        return out


class OpenAIClient:
    """The daemon of `gateway` through its /v1 API, with the official openai package."""

    name = "openai"

    def __init__(self, gateway: Gateway) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", timeout=600, max_retries=0)

    async def run(self, path: Path) -> list[str]:
        with open(path, "rb") as f:
            answer = await self.client.audio.transcriptions.create(model="whisper-1", file=f,
                                                                   response_format="verbose_json")
        return [s.text for s in answer.segments]

    async def close(self) -> None:
        await self.client.close()


# --- measuring and reporting -------------------------------------------------------------


async def measure(audio: Path, runs: int) -> dict:
    direct = Direct()
    with tempfile.TemporaryDirectory(prefix="tgw-bench-") as tmp:
        async with aiohttp.ClientSession() as http:
            gateway = Gateway(Path(tmp), http)
            openai = None
            try:
                await gateway.start()
                openai = OpenAIClient(gateway)
                sides = [direct, gateway, openai]
                texts = {side.name: await side.run(audio) for side in sides}  # warm-up
                gateway.marks.clear()
                times: dict[str, list[float]] = {side.name: [] for side in sides}
                for i in range(runs):
                    for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                        t0 = time.perf_counter()
                        got = await side.run(audio)
                        times[side.name].append(time.perf_counter() - t0)
                        if got != texts[side.name]:
                            print(f"note: {side.name} run {i + 1} transcribed differently from its warm-up",
                                  file=sys.stderr)
                return {"times": times, "stages": gateway.stages(), "segments": len(texts["direct"]),
                        "same_transcript": texts["direct"] == texts["gateway"] == texts["openai"]}
            finally:
                if openai is not None:
                    await openai.close()
                await gateway.close()


def summarise(audio_s: float, runs: int, result: dict) -> dict:
    from importlib.metadata import version

    times = result["times"]
    median = {side: statistics.median(t) for side, t in times.items()}
    d = median["direct"]
    sides = {side: {"median_s": round(m, 3), "min_s": round(min(times[side]), 3), "realtime": round(audio_s / m, 1)}
             | ({"ratio": round(m / d, 3), "target": TARGETS[side], "pass": m / d <= TARGETS[side]}
                if side in TARGETS else {})
             for side, m in median.items()}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the machine skews both sides
        "python": sys.version.split()[0],
        "faster_whisper": version("faster-whisper"),
        "ctranslate2": version("ctranslate2"),
        "openai": version("openai"),
        "audio_s": round(audio_s, 2),
        "runs": runs,
        "sides": sides,
        "pass": all(s["pass"] for s in sides.values() if "pass" in s),
        "segments": result["segments"], "same_transcript": result["same_transcript"],
        "gateway_stages_median_s": {k: round(statistics.median(v), 4) for k, v in result["stages"].items() if v},
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
    }


SIDE_NAMES = {"direct": "faster-whisper directly", "gateway": "gateway, memories API (callback)",
              "openai": "gateway, /v1 with the openai client"}


def markdown(s: dict) -> str:
    lines = [
        f"Audio: {s['audio_s']:.1f} s; {s['runs']} measured runs per side.",
        "",
        "| side | median (min) | side / direct | real-time factor | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for side, r in s["sides"].items():
        ratio, target, result = "1x", "", ""  # direct: what the others are measured against
        if "ratio" in r:
            ratio, target, result = f"{r['ratio']:.3f}x", f"<= {r['target']:.2f}x", "pass" if r["pass"] else "FAIL"
        lines.append(f"| {SIDE_NAMES[side]} | {r['median_s']:.3f} s ({r['min_s']:.3f}) | {ratio} "
                     f"| {r['realtime']:.1f}x | {target} | {result} |")
    lines += [
        "",
        "Where a memories-API run's time goes (median seconds per stage, from the client's clock and the "
        "gateway's log lines):",
        "",
        "| " + " | ".join(s["gateway_stages_median_s"]) + " |",
        "|" + "---|" * len(s["gateway_stages_median_s"]),
        "| " + " | ".join(f"{v:.3f}" for v in s["gateway_stages_median_s"].values()) + " |",
        "",
        f"{s['segments']} segments; the three transcripts "
        f"{'identical' if s['same_transcript'] else 'DIFFER'}. {s['cpus']} CPUs (load average "
        f"{s['loadavg_1m_at_end']} at the end), Python {s['python']}, "
        f"faster-whisper {s['faster_whisper']}, ctranslate2 {s['ctranslate2']}, openai {s['openai']}; {s['date']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="one run per side (smoke test; same audio)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    for tool in ("espeak-ng", "sox", "soxi"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install espeak-ng sox)")
    isolate()
    audio = make_audio()
    summary = summarise(audio_seconds(audio), runs, asyncio.run(measure(audio, runs)))
    table = markdown(summary)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e.md").write_text(f"# bench/e2e.py\n\n{table}\n\nReproduce: `python bench/e2e.py --runs {runs}`\n")
    (RESULTS / "e2e.json").write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if summary["pass"] else 1)


if __name__ == "__main__":
    main()
