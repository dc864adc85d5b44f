"""Full-text search at scale: index build time and query latency of the search plugin (plugins/search/index.py).

For each backend (SQLite in a temp folder; PostgreSQL in a fresh database `tgw_bench_<random>`,
dropped at the end) the script runs the migrations, then
  build:   indexes N generated transcripts (default 10,000 of ~100 segments each, about 1 M segments)
           through `gateway_plugins.search.index.index_transcript`, the real code path: one call per transcript,
           sequential on SQLite (a single writer), `--workers` at once on PostgreSQL.
           The build stops after `--budget` seconds (default 600) and says so, with the rate it had
           reached, rather than quietly indexing fewer transcripts;
  queries: after a warm-up, times `gateway_plugins.search.index.search(db, q, Filters(), limit=20, offset=0)` for
           `--queries` (default 200) queries of each kind, one at a time:
             one-word   a word drawn with the text's Zipf weights (common and rare words alike;
                        not a stop word, which queries leave out on both backends),
             two-word   two such words,
             phrase     "two words" that stand next to each other in an indexed segment, not
                        both stop words.
The text is English-like: sentences of 4-20 words drawn from a fixed-seed vocabulary of 5,000 words
(the 100 most common English words, then made-up words) with Zipf-Mandelbrot weights; speakers
SPEAKER_00..03; created_at spread over 2025. Target: p95 < 20 ms for two-word queries.

    python bench/search.py                       # both backends, 10,000 transcripts
    python bench/search.py --backends sqlite --transcripts 1000
    python bench/search.py --explain             # also EXPLAIN ANALYZE the slowest PostgreSQL queries

Writes bench/results/search.md and bench/results/search.json. PostgreSQL: TGW_BENCH_PG_ADMIN
(default: postgres on the server's Unix socket) must be allowed to CREATE DATABASE.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout

from common import PG_ADMIN_URL, pg_url  # noqa: E402
from gateway.db import Database, upgrade  # noqa: E402
from gateway.payloads import Segment  # noqa: E402
from gateway.plugins import Plugins  # noqa: E402
from gateway_plugins.search.index import STOP_WORDS, Filters, index_transcript, parse_query, search, tsquery  # noqa: E402

RESULTS = HERE / "results"
TARGET_P95_MS = 20.0
SEED = 20251125
KINDS = ("one-word", "two-word", "phrase")

# --- the text ----------------------------------------------------------------------------

COMMON = """the of and to a in is you that it he was for on are as with his they I at be this have from
or one had by word but not what all were we when your can said there use an each which she do how their
if will up other about out many then them these so some her would make like him into time has look two
more write go see number no way could people my than first water been call who oil its now find long
down day did get come made may part""".split()
ONSETS = "b c d f g h j k l m n p r s t v w y br cr dr fr gr pr tr st sp sl pl bl cl ch sh th wh".split()
VOWELS = "a e i o u a e i o ai ea ee oo ou ie".split()
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "ll"]
VOCAB_SIZE = 5000
ZIPF_S, ZIPF_Q = 1.0, 2.7  # weight of rank r: 1 / (r + q) ** s


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """COMMON, then made-up words of 1-3 syllables; and cumulative Zipf-Mandelbrot weights."""
    words, seen = list(COMMON), {w.lower() for w in COMMON}
    while len(words) < VOCAB_SIZE:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                    for _ in range(rng.choice((1, 2, 2, 2, 3, 3))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words, list(itertools.accumulate(1 / (r + ZIPF_Q) ** ZIPF_S for r in range(1, len(words) + 1)))


class Text:
    def __init__(self, seed: int = SEED):
        self.words, self.cum = vocabulary(random.Random(SEED))  # one vocabulary; `seed` picks the draws
        self.rng = random.Random(seed)

    def word(self) -> str:
        return self.words[bisect.bisect(self.cum, self.rng.random() * self.cum[-1])]

    def sentence(self) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cum, k=self.rng.randint(4, 20))
        if len(words) > 8 and self.rng.random() < 0.3:
            words[self.rng.randrange(3, len(words) - 3)] += ","
        return (" ".join(words)).capitalize().replace(" i ", " I ") + self.rng.choice("....?!")

    def transcript(self) -> tuple[str, list[Segment], datetime]:
        task_id = "%032x" % self.rng.getrandbits(128)
        created = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=self.rng.uniform(0, 365 * 86400))
        segments, t, speaker = [], 0.0, self.rng.randrange(4)
        for _ in range(self.rng.randint(80, 120)):
            text = self.sentence()
            end = t + 0.3 * len(text.split()) + self.rng.uniform(0.2, 1.0)
            if self.rng.random() < 0.3:
                speaker = self.rng.randrange(4)
            segments.append(Segment(round(t, 2), round(end, 2), text, f"SPEAKER_{speaker:02d}"))
            t = end + self.rng.uniform(0.0, 0.8)
        return task_id, segments, created

    def query_word(self) -> str:
        """A word drawn with the text's weights, stop words aside (queries leave them out)."""
        while (w := self.word()).lower() in STOP_WORDS:
            pass
        return w

    def queries(self, kind: str, n: int, corpus: list[tuple[str, list[Segment], datetime]]) -> list[str]:
        if kind == "one-word":
            return [self.query_word() for _ in range(n)]
        if kind == "two-word":
            return [f"{self.query_word()} {self.query_word()}" for _ in range(n)]
        out = []  # a random adjacent pair from a random indexed segment, not both stop words
        while len(out) < n:
            words = re.findall(r"\w+", self.rng.choice(self.rng.choice(corpus)[1]).text.lower())
            i = self.rng.randrange(len(words) - 1)
            if not {words[i], words[i + 1]} <= STOP_WORDS:
                out.append(f'"{words[i]} {words[i + 1]}"')
        return out


# --- measuring ---------------------------------------------------------------------------


async def build(db: Database, corpus, workers: int, budget_s: float) -> dict:
    """index_transcript for each transcript, `workers` at a time, until done or out of time."""
    todo, done, segments = iter(corpus), 0, 0
    checkpoints: list[tuple[int, int, float]] = []  # (transcripts, segments, seconds)
    t0 = time.perf_counter()

    async def worker():
        nonlocal done, segments
        for task_id, segs, created in todo:
            if time.perf_counter() - t0 > budget_s:
                return
            n = await index_transcript(db, task_id, segs, created)
            done, segments = done + 1, segments + n
            if done % max(1, len(corpus) // 20) == 0:
                checkpoints.append((done, segments, round(time.perf_counter() - t0, 2)))
                print(f"  {done} transcripts, {segments} segments, {checkpoints[-1][2]:.1f} s", flush=True)

    await asyncio.gather(*(worker() for _ in range(workers)))
    seconds = time.perf_counter() - t0
    return {"transcripts": done, "segments": segments, "build_s": round(seconds, 2),
            "segments_per_s": round(segments / seconds), "complete": done == len(corpus),
            "checkpoints": checkpoints}


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


async def latency(db: Database, queries: list[str], warmup: int) -> dict:
    for q in queries[:warmup]:
        await search(db, q, Filters(), limit=20, offset=0)
    times, hits = [], []
    for q in queries[warmup:]:
        t = time.perf_counter()
        page = await search(db, q, Filters(), limit=20, offset=0)
        times.append((time.perf_counter() - t) * 1000)
        hits.append(len(page["items"]))
    slowest = sorted(zip(times, queries[warmup:]), reverse=True)[:3]
    return {"p50_ms": round(pct(times, 50), 2), "p95_ms": round(pct(times, 95), 2),
            "max_ms": round(max(times), 2), "empty": sum(h == 0 for h in hits), "n": len(times),
            "slowest": [{"q": q, "ms": round(ms, 1)} for ms, q in slowest]}


async def explain(db: Database, q: str) -> str:
    """EXPLAIN ANALYZE of the PostgreSQL ranking query (the part before ts_headline)."""
    from sqlalchemy import text
    sql = ("EXPLAIN (ANALYZE, BUFFERS) SELECT task_id, idx, ts_rank(tsv, to_tsquery('english', :q)) AS score "
           "FROM segment_index WHERE tsv @@ to_tsquery('english', :q) ORDER BY score DESC, task_id, idx LIMIT 21")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text(sql), {"q": tsquery(parse_query(q))})).scalars().all()
    return "\n".join(rows)


async def run_backend(backend: str, url: str, corpus, args) -> dict:
    await asyncio.to_thread(upgrade, url, "head", Plugins(["search"], {}))
    db = Database(url, pool_size=max(5, args.workers))
    try:
        workers = 1 if db.sqlite else args.workers
        print(f"{backend}: indexing {len(corpus)} transcripts ({workers} at a time)", flush=True)
        result = {"backend": backend, "workers": workers, **await build(db, corpus, workers, args.budget)}
        async with db.engine.connect() as conn:
            from sqlalchemy import text
            if db.sqlite:
                result["server_version"] = (await conn.execute(text("SELECT sqlite_version()"))).scalar_one()
            else:
                await conn.execute(text("ANALYZE segment_index"))
                await conn.commit()
                result["server_version"] = (await conn.execute(text("SHOW server_version"))).scalar_one().split()[0]
        indexed = corpus[:result["transcripts"]]
        qtext = Text(SEED + 1)
        result["queries"] = {}
        for kind in KINDS:
            qs = qtext.queries(kind, args.queries + args.warmup, indexed)
            result["queries"][kind] = await latency(db, qs, args.warmup)
            r = result["queries"][kind]
            print(f"  {kind}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, max {r['max_ms']} ms; "
                  f"slowest {r['slowest']}", flush=True)
        if args.explain and not db.sqlite:
            result["explain"] = {}
            for kind in KINDS:
                q = result["queries"][kind]["slowest"][0]["q"]
                result["explain"][q] = await explain(db, q)
                print(f"--- EXPLAIN ANALYZE {q!r}\n{result['explain'][q]}", flush=True)
        return result
    finally:
        await db.close()


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


async def main_async(args) -> list[dict]:
    t = time.perf_counter()
    gen = Text()
    corpus = [gen.transcript() for _ in range(args.transcripts)]
    print(f"generated {args.transcripts} transcripts, {sum(len(c[1]) for c in corpus)} segments "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="tgw-bench-") as tmp:
                results.append(await run_backend(backend, f"sqlite:///{tmp}/gateway.db", corpus, args))
        elif backend == "postgresql":
            name = f"tgw_bench_{uuid.uuid4().hex[:12]}"
            pg_admin(f'CREATE DATABASE "{name}"')
            try:
                results.append(await run_backend(backend, pg_url(name), corpus, args))
            finally:
                pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            raise SystemExit(f"--backends: unknown backend {backend!r}")
    return results


# --- report ------------------------------------------------------------------------------


def table(results: list[dict], requested: int) -> str:
    lines = ["| backend | transcripts | segments | build s | segments/s | kind | p50 ms | p95 ms | target | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        shown = f"{r['transcripts']:,}" + ("" if r["complete"] else f" of {requested:,} (stopped at budget)")
        for kind in KINDS:
            q = r["queries"][kind]
            target, verdict = ("p95 < 20 ms", "pass" if q["p95_ms"] < TARGET_P95_MS else "FAIL") \
                if kind == "two-word" else ("", "")
            lines.append(f"| {r['backend']} {r['server_version']} | {shown} | {r['segments']:,} | {r['build_s']} | "
                         f"{r['segments_per_s']:,} | {kind} | {q['p50_ms']} | {q['p95_ms']} | {target} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transcripts", type=int, default=10_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers", type=int, default=4, help="concurrent index_transcript calls on PostgreSQL")
    ap.add_argument("--budget", type=float, default=600, help="seconds allowed for one backend's index build")
    ap.add_argument("--queries", type=int, default=200, help="timed queries per kind")
    ap.add_argument("--warmup", type=int, default=20, help="untimed queries per kind first")
    ap.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the slowest PostgreSQL query per kind")
    args = ap.parse_args()

    results = asyncio.run(main_async(args))
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    md = table(results, args.transcripts)
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    cmd = "python bench/search.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items()
        if v != ap.get_default(k) and k != "explain")
    (RESULTS / "search.md").write_text(
        f"# bench/search.py\n\n{md}\n\n{args.queries} timed queries per kind after {args.warmup} warm-up, "
        f"limit 20, no filters; query words drawn with the text's Zipf weights, stop words aside. {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; {now}.\n\nReproduce: `{cmd}`\n")
    (RESULTS / "search.json").write_text(json.dumps({
        "date": now, "cpus": os.cpu_count(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": next((r["server_version"] for r in results if r["backend"] == "postgresql"), None),
        "args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
