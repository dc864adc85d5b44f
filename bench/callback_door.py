"""What unauthenticated requests cost at POST /callbacks/local when providers.local.secret is set.

1. held bodies: 300 connections each send signature headers that look right (a fresh timestamp,
   a well-formed but wrong signature), Content-Length 1 MB and all of the body but its last byte,
   then hold it. Reported: the server's resident memory while they are held, and how many were
   answered at once (503: no place among server.max_unauthenticated_bodies).
2. unsigned posts: 2,000 small unsigned callbacks, 50 at a time. Reported: how long they took and
   how many CallbackReceipt rows they left.

    python bench/callback_door.py                       # this checkout; bench/results/callback_door.md, .json
    python bench/callback_door.py --code DIR --label before   # another checkout's gateway (e.g. `git archive main`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from common import free_port, isolate, save_results
from gateway.client import GatewayClient

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=="
PATH = "/serve/api/v2/callbacks/local"
HELD, BODY = 300, 1_000_000
POSTS, PARALLEL = 2000, 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(code: Path, workdir: Path) -> tuple[subprocess.Popen, str, Path]:
    port, db = free_port(), workdir / "gateway.db"
    config = workdir / "gateway.toml"
    config.write_text("\n".join([
        "[database]", f"url = {json.dumps(f'sqlite:///{db}')}", "[storage]", f"dir = {json.dumps(str(workdir / 'a'))}",
        "[log]", 'format = "json"', 'level = "error"', "[providers.local]", f"secret = {json.dumps(SECRET)}", ""]))
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--no-worker", "--config", str(config),
                             "--port", str(port)], cwd=workdir, env=env, stdout=open(workdir / "log", "wb"),
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", db


async def hold_one(port: int, answered: list) -> asyncio.StreamWriter | None:
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(BODY),
               "webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {PATH} HTTP/1.1\r\n{head}\r\n".encode() + b" " * (BODY - 1))
        await asyncio.wait_for(writer.drain(), 20)
        line = await asyncio.wait_for(reader.readline(), 1.0)  # an answer before the last byte?
        if line:
            answered.append(int(line.split()[1]))
    except (asyncio.TimeoutError, ConnectionError):
        pass
    return writer


async def held_bodies(url: str, pid: int) -> dict:
    port = int(url.rsplit(":", 1)[1])
    answered: list[int] = []
    rss0 = rss_mb(pid)
    writers = await asyncio.gather(*(hold_one(port, answered) for _ in range(HELD)))
    await asyncio.sleep(2)
    peak = rss_mb(pid)
    for w in writers:
        w.close()
    return {"rss_before_mb": round(rss0, 1), "rss_held_mb": round(peak, 1),
            "answered_at_once": {str(s): answered.count(s) for s in sorted(set(answered))}}


async def unsigned_posts(url: str, db: Path) -> dict:
    body = json.dumps({"code": "0000", "task_id": "f" * 32})
    limit = asyncio.Semaphore(PARALLEL)
    statuses: list[int] = []

    async def one(http: aiohttp.ClientSession) -> None:
        async with limit, http.post(url + PATH, data=body, headers={"Content-Type": "application/json"}) as r:
            statuses.append(r.status)

    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(http) for _ in range(POSTS)))
        seconds = time.perf_counter() - t0
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM callbackreceipt").fetchone()[0]
    return {"seconds": round(seconds, 2), "receipt_rows": rows,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


async def run(code: Path, label: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, db = start(code, Path(tmp))
        try:
            async with aiohttp.ClientSession() as http:
                await GatewayClient(url, http=http).wait_ready(timeout=60)
            held = await held_bodies(url, proc.pid)
            await asyncio.sleep(1)
            posts = await unsigned_posts(url, db)
        finally:
            proc.terminate()
            proc.wait(30)
    return {"label": label, "held": held, "unsigned": posts,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def table(runs: list[dict]) -> str:
    lines = [f"| code | RSS before → with {HELD} held 1 MB bodies (MB) | answered at once | {POSTS} unsigned posts: "
             "seconds | receipt rows left |", "|---|---|---|---|---|"]
    for r in runs:
        h, u = r["held"], r["unsigned"]
        lines.append(f"| {r['label']} | {h['rss_before_mb']} → {h['rss_held_mb']} | {h['answered_at_once'] or 'none'} "
                     f"| {u['seconds']} | {u['receipt_rows']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose gateway runs (default: this one)")
    parser.add_argument("--label", default="this checkout", help="its name in the table")
    parser.add_argument("--also", type=Path, help="a second checkout, measured first (e.g. the previous code)")
    parser.add_argument("--also-label", default="previous code", help="its name in the table")
    args = parser.parse_args()
    isolate()
    runs = []
    if args.also:
        runs.append(asyncio.run(run(args.also, args.also_label)))
    runs.append(asyncio.run(run(args.code, args.label)))
    text = table(runs)
    print(text)
    save_results("callback_door", text, "Unauthenticated cost at POST /callbacks/local (a provider secret set).",
                 "python bench/callback_door.py --also DIR  # DIR: the previous code, e.g. git archive main | tar -x -C DIR", {"runs": runs})


if __name__ == "__main__":
    main()
