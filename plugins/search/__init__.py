"""Search: indexes every completed transcript's segments; GET /search and `transcribe-gateway search`.

An ordinary plugin: its index (index.py) lives in tables of its own, made by its own Alembic
branch `search` (migrations/), and it gets its own [plugins.search] section from the hooks.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import click
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from gateway import API_BASE
from gateway.appkeys import DB
from gateway.envelope import ok
from gateway.hookspecs import hookimpl
from gateway.openapi import endpoint
from gateway.plugins import PluginConfig
from gateway.schemas import QueryModel, parse_query
from gateway.tenants import caller_of, owners
from gateway_plugins.search import index


class SearchConfig(PluginConfig):
    enabled: bool = True

    def active(self) -> bool:
        return self.enabled


@hookimpl
def plugin_config():
    return SearchConfig


@hookimpl
def migrations():
    return Path(__file__).resolve().parent / "migrations"


@hookimpl
async def transcript_completed(task, transcript, gateway):
    await index.index_transcript(gateway.db, task.task_id, transcript.segments, task.created_at)


@hookimpl
async def transcript_deleted(task_id, gateway):
    await index.remove_task(gateway.db, task_id)


@hookimpl
async def transcript_updated(task, transcript, gateway):
    await index.index_transcript(gateway.db, task.task_id, transcript.segments, task.created_at)


class SearchQuery(QueryModel):
    q: str = Field("", description='words (all must match), "quoted phrases", prefix* terms')
    speaker: Optional[str] = Field(None, description="only segments of this speaker, e.g. SPEAKER_00")
    task_id: Optional[str] = Field(None, description="only this task")
    since: Optional[datetime] = Field(None, description="tasks created at or after (ISO 8601; UTC if no offset)")
    until: Optional[datetime] = Field(None, description="tasks created before (ISO 8601; UTC if no offset)")
    owner: Optional[str] = Field(None, description="only tasks of the key of this name (an admin key's filter)")
    limit: int = Field(20, ge=1, le=100, description="items per page")
    cursor: Optional[str] = Field(None, description="next_cursor of the previous page")

    @field_validator("since", "until", mode="before")
    @classmethod
    def _date(cls, value: Any) -> datetime:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 date or date-time: {value!r}") from None
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class SearchHit(BaseModel):
    task_id: str
    start_time: float
    end_time: float
    speaker: Optional[str]
    text: str
    snippet: str = Field(description="the matching part, matches in [ ], … where cut")
    score: float = Field(description="relevance: ts_rank on PostgreSQL, |bm25| on SQLite")


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: Optional[str]


@endpoint("Full-text search over the segments of completed transcripts, best match first",
          query=SearchQuery, data=SearchPage)
async def search_handler(request: web.Request) -> web.Response:
    q = parse_query(SearchQuery, request.query)
    filters = index.Filters(speaker=q.speaker, task_id=q.task_id, since=q.since, until=q.until,
                            owners=owners(caller_of(request), q.owner))
    page = await index.search(request.app[DB], q.q, filters, q.limit, index.decode_cursor(q.cursor))
    return ok(SearchPage(**page))


@hookimpl
def register_routes(app, config: SearchConfig):
    if config.active():
        app.router.add_get(API_BASE + "/search", search_handler)


@hookimpl
def register_commands(cli):
    from gateway.cli import key_option, run_client, url_option

    @cli.command("search")
    @click.argument("query")
    @click.option("--speaker", default=None, help="Only segments of this speaker, e.g. SPEAKER_00.")
    @click.option("--task-id", default=None, help="Only this task.")
    @click.option("--since", default=None, help="Only tasks created at or after this ISO 8601 date or date-time.")
    @click.option("--until", default=None, help="Only tasks created before this ISO 8601 date or date-time.")
    @click.option("--limit", type=int, default=20, show_default=True, help="At most this many hits (1-100).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @url_option
    @key_option
    def search_command(query, speaker, task_id, since, until, limit, as_json, base_url, api_key):
        """Search all transcripts: words, "phrases", prefix*."""
        from gateway.client import GatewayClient

        async def go():
            async with GatewayClient(base_url, api_key) as client:
                return await client.get("/search", q=query, speaker=speaker, task_id=task_id, since=since,
                                         until=until, limit=limit)

        page = run_client(go())
        if as_json:
            click.echo(json.dumps(page, indent=2))
            return
        if not page["items"]:
            click.echo("no matches", err=True)
        for hit in page["items"]:
            who = f" {hit['speaker']}" if hit["speaker"] else ""
            click.echo(f"{hit['task_id']} {_clock(hit['start_time'])}{who}  {hit['snippet']}")


def _clock(t: float) -> str:
    m, s = divmod(t, 60)
    h, m = divmod(int(m), 60)
    return f"{h:d}:{m:02d}:{s:05.2f}"
