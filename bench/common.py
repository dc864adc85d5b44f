"""What the benchmarks share: the network namespace they run in, PostgreSQL's URLs, a free
port, the environment. They talk to the gateway with its own client, gateway.client.GatewayClient."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import netns  # noqa: E402 - the test suite's isolation, one implementation for both

BASE = "/serve/api/v2"
PG_ADMIN_URL = os.environ.get("TGW_BENCH_PG_ADMIN", netns.pg_admin_url())


def isolate() -> None:
    """Run this bench (and every process it starts) where only loopback exists, as the test
    suite does: whatever URL a bench submits, nothing can leave the machine. PostgreSQL is then
    reached through its Unix socket (PG_ADMIN_URL)."""
    try:
        netns.isolate()
    except netns.NotIsolated as exc:
        raise SystemExit(f"bench: cannot run without a network namespace of its own: {exc}") from None


def run_isolated(run, args, prefix: str):
    """`run(args, workdir)` in this bench's own network namespace (isolate), with a temporary
    working folder that is removed afterwards; returns what it returns."""
    isolate()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return asyncio.run(run(args, Path(tmp)))


def pg_url(database: str, driver: str = "postgresql+psycopg") -> str:
    """The URL of `database` on the PostgreSQL server of PG_ADMIN_URL."""
    from sqlalchemy.engine import make_url

    return make_url(PG_ADMIN_URL).set(drivername=driver, database=database).render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    from importlib.metadata import version

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "faster_whisper": version("faster-whisper"),
            "ctranslate2": version("ctranslate2"), "load_average": round(os.getloadavg()[0], 2)}


def save_results(name: str, table: str, note: str, reproduce: str, data: dict) -> dict:
    """Write bench/results/<name>.md (the table, a note ending with the environment, the command)
    and <name>.json (the environment, then `data`); returns the environment."""
    env = environment()
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.md").write_text(
        f"# bench/{name}.py\n\n{table}\n\n{note} {env['cpus']} CPUs, load average {env['load_average']} "
        f"at the end; {env['date']}.\n\nReproduce: `{reproduce}`\n")
    (results / f"{name}.json").write_text(json.dumps({**env, **data}, indent=2) + "\n")
    return env
