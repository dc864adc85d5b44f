"""/healthz latency while the engine transcribes, against the same requests with nothing running.

The figure that tests/test_transcription_flow.py::test_healthz_answers_while_a_job_runs used to
assert as a limit (max < 0.1 s; it failed once at 0.156 s on a loaded machine). A `transcribe-gateway
serve` subprocess (SQLite) answers sequential GET /healthz, first idle, then while it transcribes
about two minutes of espeak-ng speech; only answers given while the task is `processing` count.

    python bench/healthz_job.py              # bench/results/healthz_job.md, .json
    python bench/healthz_job.py --runs 3     # three jobs, their answers pooled
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from common import BASE, free_port, run_isolated, save_results
from gateway.client import GatewayClient

TEXT = " ".join([
    "The morning meeting started with a review of the quarterly numbers.",
    "Sales in the northern region grew by twelve percent, while the south stayed flat.",
    "The team agreed to move the product launch to the second week of March.",
    "Engineering reported that the migration to the new servers is almost complete.",
] * 7)


async def healthz_s(http: aiohttp.ClientSession, url: str) -> float:
    t0 = time.perf_counter()
    async with http.get(url + "/healthz") as r:
        await r.read()
        assert r.status == 200
    return time.perf_counter() - t0


async def status(http: aiohttp.ClientSession, url: str, task_id: str) -> str:
    async with http.get(f"{url}{BASE}/transcriptions/{task_id}") as r:
        return (await r.json())["data"]["status"]


async def during_job(http: aiohttp.ClientSession, url: str, asset_id: str) -> list[float]:
    async with http.post(url + BASE + "/transcriptions/async-generate-audio", json={"asset_id": asset_id}) as r:
        task_id = (await r.json())["data"]["task_id"]
    while await status(http, url, task_id) == "queued":
        await asyncio.sleep(0.05)
    samples = []
    while True:
        latency = await healthz_s(http, url)
        if await status(http, url, task_id) != "processing":
            return samples
        samples.append(latency)
        await asyncio.sleep(0.05)


async def run(args, workdir: Path) -> dict:
    clip = workdir / "long.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(clip), TEXT], check=True)
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text("\n".join([
        "[database]", f"url = {json.dumps(f'sqlite:///{workdir}/gateway.db')}",
        "[storage]", f"dir = {json.dumps(str(workdir / 'assets'))}",
        "[log]", 'format = "json"', 'level = "warning"', ""]))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
                            cwd=workdir, stdout=open(workdir / "gateway.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            client = GatewayClient(url, http=http)
            await client.wait_ready(timeout=60)
            asset_id = await client.upload(clip)
            idle = []
            for _ in range(args.idle):
                idle.append(await healthz_s(http, url))
                await asyncio.sleep(0.05)
            busy = [s for _ in range(args.runs) for s in await during_job(http, url, asset_id)]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"idle": figures(idle), "busy": figures(busy)}


def figures(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"samples": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2), "max_ms": round(ms[-1], 2)}


def table(result: dict) -> str:
    rows = ["| /healthz | answers | p50 | p99 | max |", "|---|---|---|---|---|"]
    for name, label in (("idle", "nothing running"), ("busy", "while a task is processing")):
        f = result[name]
        rows.append(f"| {label} | {f['samples']} | {f['p50_ms']:.1f} ms | {f['p99_ms']:.1f} ms | {f['max_ms']:.1f} ms |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="jobs to measure during")
    ap.add_argument("--idle", type=int, default=200, help="answers measured with nothing running")
    args = ap.parse_args()
    result = run_isolated(run, args, "tgw-healthz-")
    md = table(result)
    print(md)
    save_results("healthz_job", md, "Sequential GET /healthz from one client, 50 ms apart; a job on "
                 "engine.concurrency 1 with the bundled model.",
                 f"python bench/healthz_job.py{f' --runs {args.runs}' if args.runs != 1 else ''}",
                 {"args": vars(args), "result": result})


if __name__ == "__main__":
    main()
