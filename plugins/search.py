"""Search: indexes every completed transcript's segments; GET /search and `transcribe-gateway search`."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from aiohttp import web

from gateway import API_BASE, search
from gateway.appkeys import DB, PLUGINS
from gateway.envelope import ok
from gateway.errors import BadRequest
from gateway.hookspecs import hookimpl
from gateway.plugins import PluginConfig


class SearchConfig(PluginConfig):
    enabled: bool = True

    def active(self) -> bool:
        return self.enabled


@hookimpl
def plugin_config():
    return SearchConfig


@hookimpl
async def transcript_completed(task, transcript, gateway):
    await search.index_transcript(gateway.db, task.task_id, transcript.segments, task.created_at)


def _date(name: str, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: not an ISO 8601 date or date-time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _limit(value: str | None) -> int:
    try:
        limit = int(value or 20)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise BadRequest("limit: must be an integer from 1 to 100")
    return limit


async def search_handler(request: web.Request) -> web.Response:
    q = request.query
    filters = search.Filters(speaker=q.get("speaker") or None, task_id=q.get("task_id") or None,
                             since=_date("since", q.get("since")), until=_date("until", q.get("until")))
    page = await search.search(request.app[DB], q.get("q", ""), filters, _limit(q.get("limit")),
                               search.decode_cursor(q.get("cursor")))
    return ok(page)


@hookimpl
def register_routes(app):
    if app[PLUGINS].configs["search"].active():
        app.router.add_get(API_BASE + "/search", search_handler)


@hookimpl
def register_commands(cli):
    from gateway.cli import key_option, run_client, url_option

    @cli.command("search")
    @click.argument("query")
    @click.option("--speaker", default=None)
    @click.option("--task-id", default=None)
    @click.option("--limit", type=int, default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @url_option
    @key_option
    def search_command(query, speaker, task_id, limit, as_json, base_url, api_key):
        """Search all transcripts: words, "phrases", prefix*."""
        from gateway.client import GatewayClient

        async def go():
            async with GatewayClient(base_url, api_key) as client:
                return await client.search(query, speaker=speaker, task_id=task_id, limit=limit)

        page = run_client(go())
        if as_json:
            click.echo(json.dumps(page, indent=2))
            return
        for hit in page["items"]:
            who = f" {hit['speaker']}" if hit["speaker"] else ""
            click.echo(f"{hit['task_id']} {_clock(hit['start_time'])}{who}  {hit['snippet']}")


def _clock(t: float) -> str:
    m, s = divmod(t, 60)
    h, m = divmod(int(m), 60)
    return f"{h:d}:{m:02d}:{s:05.2f}"


