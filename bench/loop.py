"""The event loop under load: GET /healthz latency while the daemon takes uploads and renders
large transcripts.

A real daemon (`transcribe-gateway serve --no-worker`, SQLite, storage in a temp folder) is
probed by its own process: one GET /healthz every 10 ms on a fixed schedule (each on a
connection of its own when the previous one has not answered yet), for as long as each scenario
lasts. Scenarios, one after the other:

  idle      nothing else: what a probe costs on this machine;
  uploads   200 clients, each uploading a 1 MB file (POST /upload, multipart) `--rounds` times
            back to back (200 concurrent uploads all the time);
  srt       a task completed through POST /callbacks/local with 100,000 segments; its SRT
            (GET /transcriptions/{id}/transcript.srt) fetched `--renders` times, one at a time.

The daemon and the probe run at niceness -10 (when run as root): this machine is shared, and
the figure wanted is how long the daemon's event loop keeps a request waiting, not how long the
daemon waits for a CPU behind other people's work. The load's client runs at normal priority.

`--ceiling` runs the idle and upload scenarios against a bare aiohttp server instead (it reads
each upload and drops it): what aiohttp and this machine allow under the same load, whatever
the gateway does.

Reported per scenario: probes, /healthz p50, p99 and max, and the work done (uploads per second,
seconds per SRT). Target: /healthz p99 < 50 ms during the uploads.

Each run is kept under its `--label` in bench/results/loop.json, and bench/results/loop.md shows
every label kept (so "before" and "after" a change sit in one table):

    python bench/loop.py --label after          # bench/results/loop.md, .json
    python bench/loop.py --label before --rounds 2 --renders 3
    python bench/loop.py --ceiling --label ceiling --scenarios idle,uploads
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from common import BASE, free_port, isolate, save_results
from gateway.client import GatewayClient

from gateway.payloads import Outcome, Segment, build_payload

HERE = Path(__file__).resolve().parent
CLIENTS, UPLOAD_BYTES, SEGMENTS = 200, 1 << 20, 100_000
PROBE_EVERY_S = 0.01
AHEAD = -10  # niceness of the daemon and the probe
TARGET_P99_MS = 50.0


# --- the probe (its own process, so the load's client never delays it) -------------------


async def probe(url: str, out: Path) -> None:
    """GET /healthz every PROBE_EVERY_S on a fixed schedule (not after the previous answer: a stall
    then delays every probe it overlaps, as it delays every client) until stdin closes; the
    latencies go to `out` as JSON."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    latencies: list[float] = []
    failed: list[str] = []

    async def one(http: aiohttp.ClientSession) -> None:
        t0 = time.perf_counter()
        try:
            async with http.get(url + "/healthz") as r:
                await r.read()
                if r.status != 200:
                    failed.append(f"HTTP {r.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failed.append(type(exc).__name__)  # counted, and its time too: a client waited that long
        latencies.append(time.perf_counter() - t0)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        running: set[asyncio.Task] = set()
        while not stop.is_set():
            running.add(task := asyncio.create_task(one(http)))
            task.add_done_callback(running.discard)
            await asyncio.sleep(PROBE_EVERY_S)
        await asyncio.gather(*running)
    out.write_text(json.dumps({"latencies": latencies, "failed": failed}))


class Probe:
    """The probe process around a scenario: `async with Probe(url, path) as p: ...; p.latencies`."""

    def __init__(self, url: str, out: Path):
        self.url, self.out, self.latencies, self.failed = url, out, [], []

    async def __aenter__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--probe", self.url, "--out", str(self.out)],
                                     stdin=subprocess.PIPE, preexec_fn=ahead)
        await asyncio.sleep(1.0)  # its interpreter and first connection, before the load starts
        return self

    async def __aexit__(self, *exc):
        self.proc.stdin.close()
        await asyncio.to_thread(self.proc.wait, 180)
        got = json.loads(self.out.read_text())
        self.latencies, self.failed = sorted(got["latencies"]), got["failed"]

    def summary(self) -> dict:
        ms = [x * 1000 for x in self.latencies]
        return {"probes": len(ms), "failed": len(self.failed), "p50_ms": round(statistics.median(ms), 1),
                "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1), "max_ms": round(ms[-1], 1)}


def ahead() -> None:
    """Run the daemon and the probe ahead of the machine's other work (this machine is shared):
    what is measured is the daemon's event loop, not the queue for a CPU. Needs root; else as is."""
    with contextlib.suppress(PermissionError):
        os.nice(AHEAD)


# --- the scenarios ------------------------------------------------------------------------


async def idle(url: str, workdir: Path, args) -> dict:
    async with Probe(url, workdir / "idle.json") as p:
        await asyncio.sleep(args.idle_s)
    return p.summary() | {"work": f"{args.idle_s:g} s of nothing"}


def multipart_body(content: bytes) -> tuple[bytes, dict]:
    """One multipart/form-data body, built once: the load's client spends its CPU sending, not encoding."""
    boundary = "tgw-bench-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="one-megabyte.wav"\r\n'
            f'Content-Type: audio/wav\r\n\r\n').encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def uploads(url: str, workdir: Path, args) -> dict:
    body, headers = multipart_body(os.urandom(UPLOAD_BYTES))
    statuses: dict[int, int] = {}

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in range(args.rounds):
            async with http.post(url + BASE + "/upload", data=body, headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    async with Probe(url, workdir / "uploads.json") as p:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
            elapsed = time.perf_counter() - t0
    done = CLIENTS * args.rounds
    return p.summary() | {
        "answers": statuses, "uploads_per_s": round(done / elapsed, 1),
        "work": f"{done} uploads of 1 MB in {elapsed:.1f} s ({done / elapsed:.0f}/s; answers "
                + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) + ")"}


def long_callback(task_id: str) -> bytes:
    segments = tuple(Segment(i * 0.1, i * 0.1 + 0.09, f"Segment number {i} of a very long meeting.")
                     for i in range(SEGMENTS))
    outcome = Outcome(success=True, segments=segments, duration=SEGMENTS * 0.1)
    return json.dumps(build_payload(task_id, outcome, model="whisper-1", speaker=False)).encode()


async def long_task(http: aiohttp.ClientSession, url: str) -> str:
    """A completed task with SEGMENTS segments (queued on a daemon without worker, then its result
    posted to the callback door as a worker elsewhere would)."""
    form = aiohttp.FormData()
    form.add_field("file", b"RIFF" + b"\0" * 1024, filename="x.wav")
    async with http.post(url + BASE + "/upload", data=form) as r:
        asset_id = (await r.json())["data"]["asset_id"]
    async with http.post(url + BASE + "/transcriptions/async-generate-audio", json={"asset_id": asset_id}) as r:
        task_id = (await r.json())["data"]["task_id"]
    async with http.post(url + BASE + "/callbacks/local", data=long_callback(task_id),
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
    return task_id


async def srt(url: str, workdir: Path, args) -> dict:
    async with aiohttp.ClientSession() as http:
        task_id = await long_task(http, url)
        took = []
        async with Probe(url, workdir / "srt.json") as p:
            for _ in range(args.renders):
                t0 = time.perf_counter()
                async with http.get(f"{url}{BASE}/transcriptions/{task_id}/transcript.srt") as r:
                    size = len(await r.read())
                    assert r.status == 200, r.status
                took.append(time.perf_counter() - t0)
    return p.summary() | {
        "srt_s": [round(x, 2) for x in took],
        "work": f"{args.renders} SRTs of {SEGMENTS:,} segments ({size / 1e6:.1f} MB), "
                f"{statistics.median(took):.2f} s each (median)"}


SCENARIOS = {"idle": ("idle", idle), "uploads": (f"{CLIENTS} concurrent 1 MB uploads", uploads),
             "srt": (f"SRT of a {SEGMENTS:,}-segment transcript", srt)}


# --- the daemon and the report -----------------------------------------------------------


def start_daemon(workdir: Path, uploads_at_once: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = workdir / "gateway.toml"
    turns = "" if uploads_at_once is None else f"max_concurrent_uploads = {uploads_at_once}\n"
    config.write_text(f"""[server]
max_json_kb = 32768
{turns}[database]
url = "sqlite:///{workdir}/gateway.db"
[storage]
dir = "{workdir}/assets"
[log]
format = "json"
[plugins]
load = []
""")
    log = open(workdir / "daemon.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--no-worker", "--config", str(config),
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                            preexec_fn=ahead)
    return proc, f"http://127.0.0.1:{port}"


def bare_server(port: int) -> None:
    """The ceiling: a bare aiohttp server that reads each upload (multipart, in the gateway's
    chunks) and drops it, and answers /healthz; what aiohttp and this machine give under the same load."""
    from aiohttp import web

    from gateway.streams import CHUNK

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def upload(request: web.Request) -> web.Response:
        async for part in await request.multipart():
            while await part.read_chunk(CHUNK):
                pass
        return web.json_response({"asset_id": "re_0"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get(BASE + "/readyz", lambda r: web.json_response(
        {"code": "0000", "msg": "success", "data": {}, "success": True, "failed": False}))  # GatewayClient.wait_ready
    app.router.add_post(BASE + "/upload", upload)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def start_bare(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare", str(port)], cwd=workdir, preexec_fn=ahead)
    return proc, f"http://127.0.0.1:{port}"


async def run(args, workdir: Path) -> dict:
    proc, url = start_bare(workdir) if args.ceiling else start_daemon(workdir, args.max_concurrent_uploads)
    try:
        async with aiohttp.ClientSession() as http:
            await GatewayClient(url, http=http).wait_ready(timeout=60)
        results = {}
        for name in args.scenarios.split(","):
            print(f"{name} ...", flush=True)
            results[name] = await SCENARIOS[name][1](url, workdir, args)
            print(f"  {results[name]}", flush=True)
        return results
    finally:
        proc.terminate()
        proc.wait(30)


def table(runs: dict[str, dict]) -> str:
    lines = ["| code | scenario | probes (failed) | /healthz p50 ms | p99 ms | max ms | work |", "|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        for name, r in run["results"].items():
            p99 = f"**{r['p99_ms']}**" if name == "uploads" else r["p99_ms"]
            code = "bare aiohttp (ceiling)" if run["args"].get("ceiling") else f"{label} ({run['commit']})"
            lines.append(f"| {code} | {SCENARIOS[name][0]} | {r['probes']} ({r['failed']}) | {r['p50_ms']} | "
                         f"{p99} | {r['max_ms']} | {r['work']} |")
    return "\n".join(lines)


def commit(given: str | None) -> str:
    """The commit whose gateway/ is measured: --commit, else HEAD (+changes when gateway/ differs)."""
    if given:
        return given
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway"], capture_output=True, text=True,
                           cwd=HERE.parent)
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after", help="the name this run is kept under in the results")
    ap.add_argument("--scenarios", default="idle,uploads,srt", help=f"comma-separated: {', '.join(SCENARIOS)}")
    ap.add_argument("--rounds", type=int, default=3, help="uploads per client (each of 200)")
    ap.add_argument("--renders", type=int, default=3, help="SRT renderings of the long transcript")
    ap.add_argument("--commit", help="the commit whose gateway/ is checked out, when it is not HEAD's "
                                     "(e.g. after `git checkout <old> -- gateway` to measure before a change)")
    ap.add_argument("--idle-s", type=float, default=5, help="seconds of the idle probe")
    ap.add_argument("--ceiling", action="store_true",
                    help="measure a bare aiohttp server (reads uploads, drops them) instead of the gateway; "
                         "use with --label ceiling --scenarios idle,uploads")
    ap.add_argument("--max-concurrent-uploads", type=int,
                    help="the daemon's server.max_concurrent_uploads (default: the config's default; 0 = no limit)")
    ap.add_argument("--bare", type=int, help=argparse.SUPPRESS)  # internal: run the bare server on this port
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: probe this URL until stdin closes
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        asyncio.run(probe(args.probe, Path(args.out)))
        return
    if args.bare:
        bare_server(args.bare)
        return
    isolate()
    with tempfile.TemporaryDirectory(prefix="tgw-loop-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    saved = HERE / "results" / "loop.json"
    runs = json.loads(saved.read_text()).get("runs", {}) if saved.exists() else {}
    runs[args.label] = {"commit": commit(args.commit), "args": vars(args), "results": results}
    md = table(runs)
    print("\n" + md)
    save_results("loop", md, f"/healthz probed every {PROBE_EVERY_S * 1000:g} ms on a fixed schedule from a process of its own "
                 f"against `serve --no-worker` on SQLite, both at niceness {AHEAD} (the load's client at 0); target p99 < {TARGET_P99_MS:g} ms during the uploads "
                 "(in bold).", "python bench/loop.py --label after", {"runs": runs})


if __name__ == "__main__":
    main()
