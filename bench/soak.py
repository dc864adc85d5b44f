"""Soak: 500 short tasks while the webhook receiver misbehaves; every callback still arrives.

A `transcribe-gateway serve` subprocess (SQLite, or PostgreSQL with --db postgresql) gets
`--tasks` tasks on one short espeak-ng clip, submitted in waves so the queue never runs dry.
Its webhook receiver (in this process) answers 500 to 30 % of requests and, to another 10 %,
answers only after the gateway's webhooks.timeout_s has passed (the gateway counts that as a
failed attempt and retries). The run ends when every task is completed and every webhook
delivery is delivered or dead (/metrics), or after --budget seconds.

Reported: tasks and the time they took, webhook requests by answer, deliveries delivered and
dead, webhook-ids that got a 200 more than once (after a stall the late 200 and a retry can
both land; receivers de-duplicate on webhook-id), and the gateway's resident memory after the
first 100 and the last 100 tasks. Targets: every callback delivered, none dead, memory growth
< 10 % between those two points.

    python bench/soak.py                        # 500 tasks on SQLite; bench/results/soak.md, .json
    python bench/soak.py --tasks 100 --db postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

from common import BASE, PG_ADMIN_URL, free_port, pg_url, run_isolated, save_results
from gateway.client import GatewayClient


TIMEOUT_S = 2.0  # webhooks.timeout_s of the gateway under test
FAIL_SHARE, STALL_SHARE = 0.30, 0.10
MAX_GROWTH = 0.10


class Receiver:
    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.answers = {"200": 0, "500": 0, "stalled": 0}
        self.ok_ids: dict[str, int] = {}  # webhook-id -> 200 answers

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        roll = self.rng.random()
        if roll < FAIL_SHARE:
            self.answers["500"] += 1
            return web.Response(status=500, text="try again")
        if roll < FAIL_SHARE + STALL_SHARE:
            self.answers["stalled"] += 1
            await asyncio.sleep(TIMEOUT_S + 1)  # the gateway has given up on this attempt by now
        else:
            self.answers["200"] += 1
        wid = request.headers.get("webhook-id", "")
        self.ok_ids[wid] = self.ok_ids.get(wid, 0) + 1
        return web.Response(text="ok")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def metric(http: aiohttp.ClientSession, url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(url + "/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def run(args, workdir: Path) -> dict:
    clip = workdir / "clip.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(clip), "Please call me back tomorrow."], check=True)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    database_url = f"sqlite:///{workdir}/gateway.db"
    pg_name = None
    if args.db == "postgresql":
        import psycopg

        pg_name = f"tgw_soak_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{pg_name}"')
        database_url = pg_url(pg_name)
    port = free_port()
    config = workdir / "gateway.toml"
    config.write_text("\n".join([
        "[database]", f"url = {json.dumps(database_url)}",
        "[storage]", f"dir = {json.dumps(str(workdir / 'assets'))}",
        "[webhooks]", f'urls = ["http://127.0.0.1:{hook_port}/hook"]', f"timeout_s = {TIMEOUT_S}",
        "max_attempts = 12", "backoff_base_s = 0.5", "backoff_max_s = 8",
        "[log]", 'format = "json"', 'level = "warning"', ""]))
    log = open(workdir / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rss: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            client = GatewayClient(url, http=http)
            await client.wait_ready(timeout=60)
            asset_id = await client.upload(clip)
            t0 = time.monotonic()
            submitted = 0
            deadline = t0 + args.budget
            while time.monotonic() < deadline:
                done = await metric(http, url, "tgw_tasks", status="completed")
                if done >= 100 and "after_first_100" not in rss:
                    rss["after_first_100"] = rss_mb(proc.pid)
                queued = await metric(http, url, "tgw_queue_depth")
                while submitted < args.tasks and queued < 20:  # waves: keep the queue fed, not flooded
                    async with http.post(url + BASE + "/transcriptions/async-generate-audio",
                                         json={"asset_id": asset_id}) as r:
                        assert r.status == 200, await r.text()
                    submitted += 1
                    queued += 1
                delivered = await metric(http, url, "tgw_deliveries", kind="webhook", status="delivered")
                dead = await metric(http, url, "tgw_deliveries", kind="webhook", status="dead")
                if done >= args.tasks and delivered + dead >= args.tasks:
                    break
                await asyncio.sleep(0.5)
            rss["after_last_100"] = rss_mb(proc.pid)
            elapsed = time.monotonic() - t0
            return {
                "db": args.db, "tasks": args.tasks, "completed": int(done), "elapsed_s": round(elapsed, 1),
                "tasks_per_min": round(done / elapsed * 60, 1), "webhook_answers": receiver.answers,
                "delivered": int(delivered), "dead": int(dead),
                "ids_with_more_than_one_200": sum(1 for n in receiver.ok_ids.values() if n > 1),
                "rss_mb": {k: round(v, 1) for k, v in rss.items()},
                "rss_growth": round(rss["after_last_100"] / rss["after_first_100"] - 1, 4)
                if rss.get("after_first_100") else None,
            }
    finally:
        proc.terminate()
        proc.wait(30)
        await runner.cleanup()
        if pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def table(r: dict) -> str:
    growth = r["rss_growth"]
    ok = r["completed"] == r["tasks"] and r["delivered"] == r["tasks"] and r["dead"] == 0 \
        and growth is not None and growth < MAX_GROWTH
    a = r["webhook_answers"]
    return "\n".join([
        "| db | tasks completed | time | tasks/min | webhook answers (200 / 500 / stalled) | delivered | dead "
        "| ids with two 200s | RSS after first / last 100 | growth | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['db']} | {r['completed']} of {r['tasks']} | {r['elapsed_s']} s | {r['tasks_per_min']} "
        f"| {a['200']} / {a['500']} / {a['stalled']} | {r['delivered']} | {r['dead']} | {r['ids_with_more_than_one_200']} "
        f"| {r['rss_mb'].get('after_first_100', '-')} / {r['rss_mb']['after_last_100']} MB "
        f"| {'-' if growth is None else f'{growth:+.1%}'} | {'pass' if ok else 'FAIL'} |"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--budget", type=float, default=1800, help="seconds before the run gives up")
    args = ap.parse_args()
    result = run_isolated(run, args, "tgw-soak-")
    md = table(result)
    print(md)
    save_results("soak", md, f"Receiver: {FAIL_SHARE:.0%} HTTP 500, {STALL_SHARE:.0%} answered after the gateway's "
                 f"{TIMEOUT_S:g} s timeout; webhooks.max_attempts 12, backoff 0.5-8 s.",
                 f"python bench/soak.py --tasks {args.tasks}{'' if args.db == 'sqlite' else ' --db ' + args.db}",
                 {"args": vars(args), "result": result})

if __name__ == "__main__":
    main()
