"""Callback ingestion under load: POST /callbacks/local with 64 connections for 30 s.

Targets, measured one after the other in one run:
  ceiling     a bare aiohttp handler that reads the body and answers a small JSON envelope,
              doing nothing else: the most this machine serves to this client;
  sqlite      `transcribe-gateway serve --no-worker` on SQLite (WAL, synchronous=FULL: an
              acknowledged result is on disk before the answer leaves);
  postgresql  the same on a fresh PostgreSQL database (dropped afterwards).
The ceiling is measured before every gateway target and once more after the last, and each
gateway's share is taken against the mean of the two ceiling runs around it: this machine's
speed drifts by 10-20 % over minutes, which a single ceiling run an earlier minute would count
as the gateway's.
The client runs in its own process, pinned to the first CPU, and the server (ceiling or
gateway, all its threads) to the second, so that neither runs on the other's core (`--no-pin`
leaves them to the scheduler; PostgreSQL's own processes are never pinned): 64 connections, each
sending callback payloads back to back for `--seconds`. Every request is, with even odds, the
first result for a task created before the run (answer: accepted) or a repeat of a result
already acknowledged (answer: duplicate). Tasks are created in the database before the run;
nothing runs the local engine (`--no-worker`).

Afterwards the database is checked: exactly one transcript for every task whose result was
acknowledged, and none lost (an acknowledgement without a stored transcript would count).
Reported per target: requests/s, p50/p99 latency, answers, the server's CPU use (in cores, all
its threads), CPU time per request and resident memory before and after; for the gateway, its
share of the ceiling's throughput.
Targets: >= 50 % of the ceiling, p99 < 100 ms, zero lost acknowledgements.

    python bench/ingest.py                        # 30 s per target; bench/results/ingest.md, .json
    python bench/ingest.py --seconds 10 --targets ceiling,sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from common import PG_ADMIN_URL, free_port, isolate, pg_url, save_results
from gateway.client import GatewayClient

HERE = Path(__file__).resolve().parent
PATH = "/serve/api/v2/callbacks/local"
CONNECTIONS = 64
TARGET_SHARE, TARGET_P99_MS = 0.5, 100.0
SEGMENTS = 20  # per result: a minute of speech


def payload(task_id: str) -> bytes:
    """A success callback for `task_id`, the same bytes every time for the same task."""
    rng = random.Random(task_id)
    segments, t = [], 0.0
    for i in range(SEGMENTS):
        end = t + rng.uniform(1.0, 5.0)
        segments.append({"start_time": round(t, 2), "end_time": round(end, 2), "speaker": None,
                         "text": f"Segment {i} of the benchmark transcript, with a few more words in it."})
        t = end
    return json.dumps({"code": "0000", "message": "SUCCESS", "task_id": task_id,
                       "data": {"data": {"data": segments, "usage_metadata": {
                           "duration": round(t, 2), "model": "whisper-1", "output_tokens": 0, "prompt_tokens": 0}},
                           "msg": "transcription completed", "success": True}}).encode()


# --- the client (its own process) --------------------------------------------------------


async def client(url: str, task_ids: list[str], seconds: float, out: Path) -> None:
    fresh = iter(task_ids)
    acked: list[str] = []  # tasks whose first result was acknowledged: duplicates come from here
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    rng = random.Random(1)
    stop = time.monotonic() + seconds

    async def one(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            task_id = next(fresh, None) if not acked or rng.random() < 0.5 else rng.choice(acked)
            task_id = task_id or rng.choice(acked)
            t0 = time.perf_counter()
            try:
                async with http.post(url, data=payload(task_id), headers={"Content-Type": "application/json"}) as r:
                    body = await r.json(content_type=None)
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            outcome = (body.get("data") or {}).get("outcome", f"http {status}") if status == 200 else f"http {status}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "accepted":
                acked.append(task_id)

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http) for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - t0
    out.write_text(json.dumps({"elapsed_s": elapsed, "latencies_s": latencies, "outcomes": outcomes,
                               "acked": acked}))


# --- the servers -------------------------------------------------------------------------


CEILING = '''
import sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.json_response({"code": "0000", "msg": "success", "data": {"task_id": "x", "outcome": "accepted"},
                              "success": True, "failed": False})
app = web.Application()
app.router.add_post("/serve/api/v2/callbacks/{provider}", handle)
app.router.add_get("/serve/api/v2/readyz", lambda r: web.json_response({"code": "0000", "msg": "success",
                                                                          "data": {}, "success": True, "failed": False}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
'''


def pinned(cpu: int | None):
    """A preexec_fn running the child (and every thread it starts) on one CPU, or None."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_server(target: str, workdir: Path, database_url: str | None,
                 cpu: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / f"{target}.log", "wb")
    if target == "ceiling":
        cmd = [sys.executable, "-c", CEILING, str(port)]
    else:
        config = workdir / f"{target}.toml"
        config.write_text("\n".join([
            "[database]", f"url = {json.dumps(database_url)}",
            "[storage]", f"dir = {json.dumps(str(workdir / 'assets'))}",
            "[log]", 'format = "json"', 'level = "warning"', ""]))
        cmd = [sys.executable, "-m", "gateway", "serve", "--no-worker", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu))
    return proc, f"http://127.0.0.1:{port}"


async def create_tasks(database_url: str, n: int) -> list[str]:
    """n tasks waiting for a result, inserted into the gateway's own task table in one transaction."""
    from sqlalchemy import create_engine

    from gateway.db import sync_url
    from gateway.models import Task, TaskStatus, time_ordered_id, utcnow

    ids = [time_ordered_id() for _ in range(n)]  # as the gateway makes them
    now = utcnow()
    rows = [{"id": i, "url": "http://127.0.0.1:9/bench.wav", "model": "whisper-1", "provider": "local",
             "status": TaskStatus.PROCESSING, "started_at": now, "created_at": now, "updated_at": now} for i in ids]
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(Task.__table__.insert(), rows)
    finally:
        engine.dispose()
    return ids


async def check(database_url: str, acked: list[str]) -> dict:
    """Transcripts per acknowledged task (must be exactly one) and transcripts in all."""
    from sqlalchemy import text

    from gateway.db import Database

    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            stored = dict((await conn.execute(text(
                "SELECT task_id, count(*) FROM transcript GROUP BY task_id"))).all())
    finally:
        await db.close()
    return {"transcripts": sum(stored.values()), "acked": len(acked),
            "lost": sum(1 for t in acked if stored.get(t, 0) == 0),
            "more_than_one": sum(1 for n in stored.values() if n > 1)}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


async def measure(target: str, args, workdir: Path) -> dict:
    database_url, pg_name = None, None
    if target == "sqlite":
        database_url = f"sqlite:///{workdir}/gateway.db"
    elif target == "postgresql":
        pg_name = f"tgw_bench_{uuid.uuid4().hex[:12]}"
        pg_admin(f'CREATE DATABASE "{pg_name}"')
        database_url = pg_url(pg_name)
    cpus = (None, None) if args.no_pin or (os.cpu_count() or 1) < 2 else (1, 0)  # server, client
    proc, url = start_server(target, workdir, database_url, cpus[0])
    try:
        async with aiohttp.ClientSession() as http:
            await GatewayClient(url, http=http).wait_ready(timeout=60)
        task_ids = (await create_tasks(database_url, args.tasks) if database_url
                    else [uuid.uuid4().hex for _ in range(args.tasks)])  # the ceiling gets the same bodies
        out = workdir / f"{target}.client.json"
        print(f"{target}: {CONNECTIONS} connections for {args.seconds:g} s", flush=True)
        cpu0, rss0 = cpu_seconds(proc.pid), rss_mb(proc.pid)
        subprocess.run([sys.executable, __file__, "--client", url + PATH, "--seconds", str(args.seconds),
                        "--out", str(out)], input=json.dumps(task_ids).encode(), check=True,
                       preexec_fn=pinned(cpus[1]))
        cpu, rss1 = cpu_seconds(proc.pid) - cpu0, rss_mb(proc.pid)
        run = json.loads(out.read_text())
        lat = sorted(run["latencies_s"])
        result = {"target": target, "pinned": cpus != (None, None), "requests": len(lat), "elapsed_s": round(run["elapsed_s"], 2),
                  "rps": round(len(lat) / run["elapsed_s"], 1),
                  "server_cpu_share": round(cpu / run["elapsed_s"], 2),
                  "server_cpu_us_per_request": round(cpu / max(len(lat), 1) * 1e6),
                  "server_rss_mb": [round(rss0, 1), round(rss1, 1)],
                  "p50_ms": round(statistics.median(lat) * 1000, 2),
                  "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
                  "outcomes": run["outcomes"]}
        if database_url:
            result["check"] = await check(database_url, run["acked"])
            # every created task got its result: the rest of the run sent repeats only
            result["ran_out_of_tasks"] = result["check"]["acked"] >= args.tasks
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if pg_name:
            pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def rss(r: dict) -> str:
    return f"{r['server_rss_mb'][0]} → {r['server_rss_mb'][1]}"


def run_order(targets: list[str]) -> list[str]:
    """The ceiling before every gateway target and after the last: ceiling,sqlite,postgresql ->
    ceiling, sqlite, ceiling, postgresql, ceiling. Without the ceiling, the targets as given."""
    gateways = [t for t in targets if t != "ceiling"]
    if "ceiling" not in targets:
        return gateways
    return [x for t in gateways for x in ("ceiling", t)] + ["ceiling"]


def ceilings_around(results: list[dict]) -> None:
    """Each gateway result's `ceiling_rps`: the mean of the ceiling runs just before and after it."""
    for i, r in enumerate(results):
        if r["target"] == "ceiling":
            continue
        near = [results[j]["rps"] for j in (i - 1, i + 1) if 0 <= j < len(results) and results[j]["target"] == "ceiling"]
        r["ceiling_rps"] = round(statistics.mean(near), 1) if near else None


def table(results: list[dict]) -> str:
    lines = ["| target | requests/s | share of ceiling | p50 ms | p99 ms | server CPU (cores) | server CPU µs/request "
             "| server RSS before → after (MB) | answers | acknowledged / stored / lost | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        if r["target"] == "ceiling":
            lines.append(f"| ceiling (bare aiohttp) | {r['rps']:,} | 100 % | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['server_cpu_share']} | {r['server_cpu_us_per_request']} | {rss(r)} | {answers} | | |")
            continue
        share = r["rps"] / r["ceiling_rps"] if r.get("ceiling_rps") else None
        share_cell = "" if share is None else f"{share:.0%} of {r['ceiling_rps']:,.0f}"
        c = r["check"]
        ok = (share is None or share >= TARGET_SHARE) and r["p99_ms"] < TARGET_P99_MS and c["lost"] == 0 \
            and c["more_than_one"] == 0
        verdict = "not valid: every task was used, raise --tasks" if r["ran_out_of_tasks"] else \
            "pass" if ok else "FAIL"
        lines.append(f"| gateway on {r['target']} | {r['rps']:,} | "
                     f"{share_cell} | {r['p50_ms']} | {r['p99_ms']} | {r['server_cpu_share']} | "
                     f"{r['server_cpu_us_per_request']} | {rss(r)} | {answers} | "
                     f"{c['acked']:,} / {c['transcripts']:,} / {c['lost']} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="ceiling,sqlite,postgresql")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--tasks", type=int, default=200_000,
                    help="tasks created before each gateway run (a run that uses them all up is flagged)")
    ap.add_argument("--no-pin", action="store_true", help="leave client and server to the scheduler")
    ap.add_argument("--client", help=argparse.SUPPRESS)  # internal: run the load against this URL
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        asyncio.run(client(args.client, json.loads(sys.stdin.read()), args.seconds, Path(args.out)))
        return
    isolate()
    sys.path.insert(0, str(HERE.parent))
    results = []
    with tempfile.TemporaryDirectory(prefix="tgw-ingest-") as tmp:
        for target in run_order(args.targets.split(",")):
            results.append(asyncio.run(measure(target, args, Path(tmp))))
            print(f"  {results[-1]}"[:400], flush=True)
    ceilings_around(results)
    md = table(results)
    print("\n" + md)
    placement = ("the client pinned to CPU 0 and the server to CPU 1" if results and results[0]["pinned"]
                 else "client and server placed by the scheduler")
    save_results("ingest", md, f"{CONNECTIONS} connections, {args.seconds:g} s per target, half new results and "
                 f"half repeats, {SEGMENTS} segments per result; client and server in separate processes, "
                 f"{placement}; each gateway's share is against the mean of the ceiling runs before and "
                 f"after it.",
                 "python bench/ingest.py", {"args": vars(args), "results": results})

if __name__ == "__main__":
    main()
