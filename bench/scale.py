"""Scale-out on PostgreSQL: tasks per minute with 1, 2 and 3 worker processes, and the claim
overhead per task.

One `serve --no-worker` API process and N `worker` processes share a fresh PostgreSQL
database (its Unix socket, or TGW_BENCH_PG_ADMIN). For each N: the workers start, a warm-up
round loads their models, then `--tasks` short clips (about 2 s of espeak-ng speech) are
submitted at once; throughput = tasks / (last finished_at - first created_at), from the
database. Claim latency: with one idle worker, tasks are submitted one at a time and the time
from `created_at` (the API's insert) to `started_at` (the worker's claim) is measured; the
worker is woken by PostgreSQL LISTEN/NOTIFY (jobs.poll_s is left at its default 1 s, the
fallback). Target: claim latency p95 < 250 ms with an idle worker.

    python bench/scale.py            # 30 tasks per round, 30 claim samples; saved in bench/results/
    python bench/scale.py --quick    # 9 tasks per round, 10 samples
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
from common import BASE, PG_ADMIN_URL as PG_ADMIN, environment, free_port, isolate, pg_url
from gateway.client import GatewayClient

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
TARGET_P95_MS = 250


def make_clip() -> Path:
    out = CACHE / "scale-clip.wav"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(out),
                        "The meeting starts at nine. Please bring the report."], check=True)
    return out


def pg(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


class Cluster:
    """An API process and any number of worker processes on one fresh database."""

    def __init__(self, workdir: Path, database: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = pg_url(database)
        self.config = workdir / "gateway.toml"
        self.config.write_text(f'[database]\nurl = "{self.db_url}"\n[storage]\ndir = "{workdir}/assets"\n'
                               '[engine]\ncpu_threads = 1\n[log]\nformat = "json"\nlevel = "warning"\n')
        self.api = self._spawn("serve", "--no-worker", "--port", str(self.port))
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, *command: str) -> subprocess.Popen:
        log = open(self.workdir / f"{command[0]}-{time.monotonic_ns()}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "gateway", command[0], "--config", str(self.config),
                                 *command[1:]], stdout=log, stderr=subprocess.STDOUT)

    def scale_to(self, n: int) -> None:
        while len(self.workers) < n:
            self.workers.append(self._spawn("worker"))
        while len(self.workers) > n:
            w = self.workers.pop()
            w.terminate()
            w.wait(30)

    def stop(self) -> None:
        self.scale_to(0)
        self.api.terminate()
        self.api.wait(30)

    async def submit(self, http: aiohttp.ClientSession, asset_id: str) -> str:
        async with http.post(self.url + BASE + "/transcriptions/async-generate-audio",
                             json={"asset_id": asset_id}) as r:
            return (await r.json())["data"]["task_id"]

    async def wait(self, http: aiohttp.ClientSession, task_ids: list[str], timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        for task_id in task_ids:
            while True:
                async with http.get(f"{self.url}{BASE}/transcriptions/{task_id}") as r:
                    task = (await r.json())["data"]
                if task["status"] == "completed":
                    break
                if task["status"] == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"task {task_id}: {task['status']} {task['error']}")
                await asyncio.sleep(0.05)

    async def timings(self, task_ids: list[str]) -> list[tuple[datetime, datetime, datetime]]:
        """(created_at, started_at, finished_at) of each task, from the database."""
        import psycopg

        dsn = self.db_url.replace("postgresql+psycopg://", "postgresql://")
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT created_at, started_at, finished_at FROM task WHERE id = ANY(%s)",
                                     (task_ids,))
            return list(await cur.fetchall())


async def measure(worker_counts: list[int], tasks: int, samples: int, clip: Path) -> dict:
    database = f"tgw_bench_scale_{uuid.uuid4().hex[:8]}"
    pg(f'CREATE DATABASE "{database}"')
    rounds, claim_ms = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cluster = Cluster(Path(tmp), database)
            try:
                async with aiohttp.ClientSession() as http:
                    client = GatewayClient(cluster.url, http=http)
                    await client.wait_ready(timeout=60)
                    asset = await client.upload(clip)
                    for n in worker_counts:
                        cluster.scale_to(n)
                        warm = [await cluster.submit(http, asset) for _ in range(2 * n)]
                        await cluster.wait(http, warm)
                        ids = [await cluster.submit(http, asset) for _ in range(tasks)]
                        await cluster.wait(http, ids)
                        t = await cluster.timings(ids)
                        wall = (max(f for _, _, f in t) - min(c for c, _, _ in t)).total_seconds()
                        rounds.append({"workers": n, "tasks": tasks, "wall_s": round(wall, 2),
                                       "tasks_per_min": round(tasks / wall * 60, 1)})
                        print(f"{n} worker(s): {tasks} tasks in {wall:.1f} s", file=sys.stderr)
                    cluster.scale_to(1)
                    await cluster.wait(http, [await cluster.submit(http, asset)])
                    for _ in range(samples):
                        await asyncio.sleep(0.3)  # the worker is idle, waiting on LISTEN (or its poll)
                        task_id = await cluster.submit(http, asset)
                        await cluster.wait(http, [task_id])
                        [(created, started, _)] = await cluster.timings([task_id])
                        claim_ms.append((started - created).total_seconds() * 1000)
            finally:
                cluster.stop()
    finally:
        pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return {"rounds": rounds, "claim_ms": claim_ms}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def tables(result: dict, clip_s: float) -> tuple[str, dict]:
    base = result["rounds"][0]["tasks_per_min"]
    rows = ["| workers | tasks | wall time | tasks / min | vs 1 worker |", "|---|---|---|---|---|"]
    for r in result["rounds"]:
        rows.append(f"| {r['workers']} | {r['tasks']} | {r['wall_s']:.1f} s | {r['tasks_per_min']:.1f} "
                    f"| {r['tasks_per_min'] / base:.2f}x |")
    c = result["claim_ms"]
    claim = {"samples": len(c), "p50_ms": round(statistics.median(c), 1), "p95_ms": round(p95(c), 1),
             "max_ms": round(max(c), 1), "target_p95_ms": TARGET_P95_MS, "pass": p95(c) < TARGET_P95_MS}
    rows += ["", "| claim latency, idle worker (queued → processing) | p50 | p95 | max | target | result |",
             "|---|---|---|---|---|---|",
             f"| {claim['samples']} tasks, one at a time | {claim['p50_ms']:.1f} ms | {claim['p95_ms']:.1f} ms "
             f"| {claim['max_ms']:.1f} ms | p95 < {TARGET_P95_MS} ms | {'pass' if claim['pass'] else 'FAIL'} |"]
    return "\n".join(rows), {"clip_s": round(clip_s, 2), "rounds": result["rounds"], "claim": claim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30, help="tasks per round")
    parser.add_argument("--samples", type=int, default=30, help="claim latency samples")
    parser.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    parser.add_argument("--quick", action="store_true", help="9 tasks per round, 10 samples")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.samples = 9, 10
    if not shutil.which("espeak-ng") or not shutil.which("soxi"):
        sys.exit("needs espeak-ng and sox (apt-get install espeak-ng sox)")
    isolate()
    clip = make_clip()
    clip_s = float(subprocess.run(["soxi", "-D", str(clip)], capture_output=True, text=True, check=True).stdout)
    counts = [int(x) for x in args.workers.split(",")]
    result = asyncio.run(measure(counts, args.tasks, args.samples, clip))
    md, summary = tables(result, clip_s)
    env = environment()
    print(md)
    RESULTS.mkdir(exist_ok=True)
    flags = " --quick" if args.quick else ""
    note = ""
    if max(counts) > (env["cpus"] or 1):
        note = (f"\nWith more single-threaded workers than the {env['cpus']} cores, the extra workers only share "
                "cores (and the machine is shared): throughput is bounded by CPU, not by the claims.\n")
    (RESULTS / "scale.md").write_text(
        f"# bench/scale.py\n\n{md}\n\nClip: {clip_s:.1f} s of speech; engine.cpu_threads = 1 per worker; "
        f"PostgreSQL on its Unix socket, in a network namespace of loopback only. "
        f"Machine: {env['cpus']} CPUs (load average {env['load_average']:.1f} at the end, "
        f"shared), Python {env['python']}, faster-whisper {env['faster_whisper']}; {env['date']}.\n"
        f"Reproduce: `python bench/scale.py{flags}`\n{note}")
    (RESULTS / "scale.json").write_text(json.dumps({**summary, **env, "claim_ms": result["claim_ms"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
