"""The `transcribe-gateway` command: serve, worker, submit, status, db upgrade, ..."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from datetime import timezone
from pathlib import Path

import click

from gateway import __version__
from gateway.config import ConfigError, load_config
from gateway.models import TaskStatus

DEFAULT_URL = "http://127.0.0.1:8000"


def _config(path: str | None):
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _plugins(cfg):
    from gateway.plugins import PluginError, Plugins

    try:
        return Plugins(cfg.plugins.load, cfg.plugins.sections())
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             envvar="TGW_CONFIG", help="TOML configuration file (default: built-in defaults).")
url_option = click.option("--url", "base_url", envvar="TRANSCRIBE_GATEWAY_URL", default=DEFAULT_URL,
                          show_default=True, help="The gateway: http(s)://host[:port] (host:port and a URL "
                                                  "ending in /serve/api/v2 do too; or TRANSCRIBE_GATEWAY_URL).")
key_option = click.option("--api-key", envvar="TRANSCRIBE_GATEWAY_API_KEY", default="",
                          help="API key (or TRANSCRIBE_GATEWAY_API_KEY).")


class _Commands(click.Group):
    """The command group; when the environment's configuration is bad, plugins' commands are not
    loaded, and asking for one says why rather than "No such command"."""

    config_error: str | None = None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            if self.config_error:
                raise click.ClickException(f"{self.config_error} (plugins' commands are not loaded)") from None
            raise


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="transcribe-gateway")
def main() -> None:
    """Self-hosted asynchronous transcription gateway."""


def _app(cfg, plugins, **kwargs):
    """create_app, with a bad provider section reported as one line."""
    from gateway.app import create_app
    from gateway.providers import ProviderError

    try:
        return create_app(cfg, plugins=plugins, **kwargs)
    except ProviderError as exc:
        raise click.ClickException(str(exc)) from None


def _log():
    import structlog

    return structlog.get_logger("gateway")


def _start(cfg, event: str, **fields):
    from gateway.logs import configure_logging

    configure_logging(cfg.log)
    _log().info(event, version=__version__, database=_redact(cfg.database.url), **fields)


def _listen(host: str, port: int) -> list[socket.socket]:
    """The API's sockets, bound before anything starts: a port in use (or a host that is not
    this machine's) stops `serve` with one line, before it touches the database or claims work."""
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(128)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return socks


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _announce(socks: list[socket.socket]):
    """A cleanup context, the app's last: once everything has started, "listening on http://…"."""
    async def ctx(app):
        for sock in socks:
            _log().info(f"listening on {_url(sock)}", url=_url(sock))
        yield
    return ctx


@main.command()
@config_option
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
@click.option("--no-worker", is_flag=True, help="Serve the API only; `transcribe-gateway worker` processes run the tasks.")
def serve(config_path: str | None, host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the API and (unless --no-worker) the in-process worker."""
    from gateway import server

    cfg = _config(config_path)
    plugins = _plugins(cfg)
    host, port = host or cfg.server.host, cfg.server.port if port is None else port
    socks = _listen(host, port)
    app = _app(cfg, plugins, worker=not no_worker)
    app.cleanup_ctx.append(_announce(socks))
    _start(cfg, "serve.start", host=host, port=port, worker=not no_worker)
    asyncio.run(server.run(app, socks))
    _log().info("stopped")


@main.command()
@config_option
def worker(config_path: str | None) -> None:
    """Run only the loops (transcriptions and deliveries), no HTTP. SIGTERM: stop claiming,
    release the running tasks, exit 0."""
    from gateway import server

    cfg = _config(config_path)
    plugins = _plugins(cfg)
    app = _app(cfg, plugins, api=False)
    _start(cfg, "worker.start")
    asyncio.run(server.run(app))
    _log().info("stopped")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def db() -> None:
    """Database schema commands."""


def _migrate(config_path: str | None, step, revision: str) -> None:
    cfg = _config(config_path)
    plugins = _plugins(cfg)
    try:
        step(cfg.database.url, revision, plugins)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {type(exc).__name__}: {exc}") from None
    click.echo(f"database at {_redact(cfg.database.url)} is at revision {revision}")


@db.command("upgrade")
@config_option
@click.option("--revision", default="head", show_default=True,
              help="Alembic revision to upgrade to: head = the core's and every loaded plugin's branch's head; "
                   "or e.g. 0005, search@head.")
def db_upgrade(config_path: str | None, revision: str) -> None:
    """Apply Alembic migrations to database.url: the core's, and each loaded plugin's own branch
    (serve and worker do this at start-up)."""
    from gateway.db import upgrade

    _migrate(config_path, upgrade, revision)


@db.command("downgrade")
@config_option
@click.argument("revision")
def db_downgrade(config_path: str | None, revision: str) -> None:
    """Revert database.url's schema to REVISION (e.g. 0001, or base), with this version's migrations.
    PLUGIN@base removes an installed plugin's tables (e.g. search@base); take it out of
    plugins.load first, or the next start applies its branch again."""
    from gateway.db import downgrade

    _migrate(config_path, downgrade, revision)


def run_client(coro):
    """Run a client coroutine; a ClientError becomes one clear line and exit code 1."""
    from gateway.client import ClientError

    try:
        return asyncio.run(coro)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--speaker", is_flag=True, help="Label speakers (SPEAKER_00, ...).")
@click.option("--num-speakers", type=click.IntRange(1, 32), default=None,
              help="With --speaker: exactly this many speakers.")
@click.option("--min-speakers", type=click.IntRange(1, 32), default=None,
              help="With --speaker: at least this many speakers.")
@click.option("--max-speakers", type=click.IntRange(1, 32), default=None,
              help="With --speaker: at most this many speakers.")
@click.option("--speaker-turns", is_flag=True,
              help="Also who spoke when, from the voices alone (labels speakers too).")
@click.option("--known-speaker", "known", multiple=True, metavar="NAME",
              help="An enrolled speaker to name where heard (repeat for more; labels speakers too).")
@click.option("--all-known-speakers", is_flag=True,
              help="Name every speaker this key enrolled where heard (labels speakers too).")
@click.option("--callback-url", default=None, help="Webhook that receives the result.")
@click.option("--model", default=None, help="Model alias (default: the gateway's default).")
@click.option("--language", default=None, help="Language code, e.g. en.")
@click.option("--wait", is_flag=True, help="Wait with a progress bar and print the transcript.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@url_option
@key_option
def submit(file: Path, speaker: bool, num_speakers: int | None, min_speakers: int | None,
           max_speakers: int | None, speaker_turns: bool, known: tuple[str, ...], all_known_speakers: bool,
           callback_url: str | None, model: str | None, language: str | None, wait: bool, as_json: bool,
           base_url: str, api_key: str) -> None:
    """Upload FILE and submit it for transcription."""
    if known and all_known_speakers:
        raise click.UsageError("give --known-speaker NAME or --all-known-speakers, not both")
    hints = {"num_speakers": num_speakers, "min_speakers": min_speakers, "max_speakers": max_speakers,
             "speaker_turns": speaker_turns or None, "known_speakers": list(known) or all_known_speakers or None}
    run_client(_submit(file, speaker or speaker_turns or bool(hints["known_speakers"]), hints, callback_url, model,
                       language, wait, as_json, base_url, api_key))


async def _submit(file, speaker, hints, callback_url, model, language, wait, as_json, base_url, api_key):
    from gateway.client import GatewayClient

    async with GatewayClient(base_url, api_key) as client:
        asset_id = await client.upload(file)
        task_id = await client.submit(asset_id=asset_id, speaker=speaker or None, callback_url=callback_url,
                                      model=model, language=language, **hints)
        if not wait:
            click.echo(json.dumps({"task_id": task_id, "asset_id": asset_id}) if as_json else task_id)
            return
        try:
            task = await _wait(client, task_id, show_bar=not as_json and sys.stderr.isatty())
        except asyncio.CancelledError:  # Ctrl-C stops the waiting, not the task
            click.echo(f"\nstopped waiting; task {task_id} keeps running on the gateway "
                       f"(transcribe-gateway status {task_id})", err=True)
            raise click.exceptions.Exit(130) from None
    _print_task(task, as_json)
    if task["status"] == "failed":
        sys.exit(1)


async def _wait(client, task_id: str, show_bar: bool) -> dict:
    from tqdm import tqdm

    with tqdm(total=100, unit="%", disable=not show_bar, file=sys.stderr,
              bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}") as bar:
        while True:
            task = await client.status(task_id)
            bar.n = round(task["progress"] * 100)
            bar.set_description(f"{task_id} {task['status']:<10}")  # ids made together share their start
            if task["status"] in ("completed", "failed"):
                return task
            await asyncio.sleep(0.5)


def _fmt(t: float) -> str:
    m, s = divmod(t, 60)
    return f"{int(m):02d}:{s:05.2f}"


def _print_task(task: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(task, indent=2))
        return
    if task["status"] == "failed":
        click.echo(f"task {task['task_id']} failed: {task['error']}", err=True)
        return
    if task["status"] != "completed":
        click.echo(f"task {task['task_id']}: {task['status']} ({task['progress'] * 100:.0f}%)")
        return
    for seg in task["result"]["data"]:
        who = f"{seg['speaker']}: " if seg.get("speaker") else ""
        click.echo(f"[{_fmt(seg['start_time'])} - {_fmt(seg['end_time'])}] {who}{seg['text']}")
    if task["result"].get("turns"):
        click.echo("\nwho spoke when:")
        for turn in task["result"]["turns"]:
            click.echo(f"[{_fmt(turn['start_time'])} - {_fmt(turn['end_time'])}] {turn['speaker']}")
    for key in ("note", "speaker_note"):
        if task.get(key):
            click.echo(task[key], err=True)


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
@key_option
def status(task_id: str, as_json: bool, base_url: str, api_key: str) -> None:
    """Show a task's status (and its transcript once completed)."""
    from gateway.client import GatewayClient

    async def go():
        async with GatewayClient(base_url, api_key) as client:
            return await client.status(task_id)

    _print_task(run_client(go()), as_json)


@main.command("list")
@click.option("--status", "status_", type=click.Choice(TaskStatus.ALL), default=None,
              help="Only tasks with this status.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="At most this many tasks.")
@click.option("--owner", default=None, help="Only tasks of the key of this name (an admin key's filter).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the tasks.")
@url_option
@key_option
def list_tasks(status_: str | None, limit: int, owner: str | None, as_json: bool, base_url: str, api_key: str) -> None:
    """List the tasks the key may see (an admin key: all), newest first."""
    from gateway.client import GatewayClient

    async def go():
        async with GatewayClient(base_url, api_key) as client:
            return await client.tasks(status_, limit, owner)

    items = run_client(go())
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no tasks", err=True)
    for t in items:
        click.echo(f"{t['task_id']}  {t['status']:<10} {t['progress'] * 100:3.0f}%  {t['created_at']}  "
                   f"{t['model']}  {t['owner']}  {t['asset_id'] or t['url']}")


@main.command()
@click.argument("task_id")
@click.option("--target", default=None, help="Only this target (a webhook URL or plugin:<name>).")
@url_option
@key_option
def redeliver(task_id: str, target: str | None, base_url: str, api_key: str) -> None:
    """Run a task's deliveries (webhooks and plugins) again."""
    from gateway.client import GatewayClient

    async def go():
        async with GatewayClient(base_url, api_key) as client:
            return await client.redeliver(task_id, target)

    data = run_client(go())
    click.echo(f"task {data['task_id']}: {data['redelivering']} deliveries queued again")


@main.command("plugins")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_plugins(config_path: str | None, as_json: bool) -> None:
    """List the loaded plugins, their versions and hooks."""
    rows = _plugins(_config(config_path)).describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<12} {row['package'] or '-'} {row['version'] or ''}  hooks: {', '.join(row['hooks'])}")


@main.group("models", invoke_without_command=True)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the models.")
@url_option
@click.pass_context
def models(ctx, config_path: str | None, as_json: bool, base_url: str) -> None:
    """List the local engine's models (engine.model_alias and [engine.models]): alias, source,
    whether the gateway at --url has it loaded (from its /readyz), about how much memory it takes
    (model.bin's size), and its folder or why it has none."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.local_models import LocalModels

    rows = LocalModels(_config(config_path).engine).describe()
    loaded = _loaded_models(base_url)
    for row in rows:
        row["loaded"] = loaded.get(row["alias"]) == "loaded" if loaded is not None else None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'ALIAS':<16} {'SOURCE':<24} {'LOADED':<7} {'MEMORY':>8}  FOLDER")
    for row in rows:
        memory = f"{row['memory_mb']} MB" if row["memory_mb"] is not None else "-"
        where = row["path"] or row["error"]
        flag = {True: "yes", False: "no", None: "?"}[row["loaded"]]
        click.echo(f"{row['alias']:<16} {row['source']:<24} {flag:<7} {memory:>8}  {where}")


def _loaded_models(base_url: str) -> dict[str, str] | None:
    """alias -> "loaded" / "not loaded", as the gateway's /readyz says; None (said on stderr) when it cannot."""
    from gateway.client import ClientError, GatewayClient

    async def go():
        async with GatewayClient(base_url) as client:
            return await client.get("/readyz")

    try:
        return asyncio.run(go()).get("models", {})
    except ClientError as exc:
        click.echo(f"loaded: unknown ({exc})", err=True)
        return None


@models.command("pull")
@config_option
@click.argument("name")
def models_pull(config_path: str | None, name: str) -> None:
    """Download model NAME into engine.download_dir (a Hugging Face cache), with progress bars,
    unless it is there already: a faster-whisper name (e.g. large-v3, distil-large-v3, turbo), a
    Hugging Face repo id (owner/name), or an alias of [engine.models]. Needs internet access
    (serve and worker also download a missing one at start-up)."""
    from gateway.local_models import ModelUnavailable, pull

    from gateway.config import is_model_folder

    cfg = _config(config_path).engine
    entry = cfg.models.get(name)
    name = entry.source if entry is not None else name
    if is_model_folder(name):
        raise click.ClickException(f"{name!r} is a folder: nothing to pull (give a model name, e.g. large-v3)")
    click.echo(f"pulling {name!r} into {cfg.download_dir} ...", err=True)
    try:
        folder, fetched = pull(name, cfg.download_dir)
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'downloaded' if fetched else 'already there'}: {folder}")


@main.group("keys")
def keys_group() -> None:
    """API keys kept in the database (gateway/keys.py): each owns the tasks, assets and speakers it
    creates, and sees only those; an --admin key sees everything. server.api_keys' keys are
    admin keys too."""


def _keys_run(config_path: str | None, work):
    """`work(db, cfg)` on database.url, its schema brought to head first (as serve does); a
    refusal (keys.KeyRefused) is one line and exit code 1."""
    from gateway.db import Database, upgrade
    from gateway.keys import KeyRefused
    from gateway.logs import configure_logging

    cfg = _config(config_path)
    configure_logging(cfg.log)
    try:
        upgrade(cfg.database.url, plugins=_plugins(cfg))
    except Exception as exc:
        raise click.ClickException(f"database at {_redact(cfg.database.url)}: {type(exc).__name__}: {exc}") from None

    async def go():
        db = Database(cfg.database.url)
        try:
            return await work(db, cfg)
        finally:
            await db.close()
    try:
        return asyncio.run(go())
    except KeyRefused as exc:
        raise click.ClickException(str(exc)) from None


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


@keys_group.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An admin key: sees every key's tasks, assets and speakers.")
@click.option("--json", "as_json", is_flag=True, help='Print {"name", "key", "admin"}.')
@config_option
def keys_create(name: str, admin: bool, as_json: bool, config_path: str | None) -> None:
    """Make a key named NAME and print it, once (alone on stdout's last line; only its digest is
    kept). The first key made while server.api_keys is empty turns authentication on."""
    from gateway import keys

    async def work(db, cfg):
        was_on = await keys.Keyring(db, cfg.server.api_keys, cfg.server.key_secret).enabled()
        row, key = await keys.create(db, cfg.server.key_secret, name, admin)
        return was_on, row, key

    was_on, row, key = _keys_run(config_path, work)
    if as_json:
        click.echo(json.dumps({"name": row.name, "key": key, "admin": row.admin}))
    else:
        click.echo(f"created {'admin ' if row.admin else ''}key {row.name!r}; it is shown only now, keep it secret:",
                   err=True)
        click.echo(key)
    if not was_on:
        click.echo("authentication is now on: server.api_keys is empty and this is the first key, so every "
                   "request to the API needs a key from now on (revoking it does not turn authentication off)",
                   err=True)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@config_option
def keys_list(as_json: bool, config_path: str | None) -> None:
    """The database's keys: name, admin, created, last used (to the minute), revoked. Never the keys."""
    from gateway import keys

    async def work(db, cfg):
        return await keys.list_keys(db)

    rows = _keys_run(config_path, work)
    if as_json:
        click.echo(json.dumps([{"name": r.name, "admin": r.admin, "created_at": _iso(r.created_at),
                                "last_used_at": _iso(r.last_used_at), "revoked_at": _iso(r.revoked_at)}
                               for r in rows], indent=2))
        return
    if not rows:
        click.echo("no keys in the database (server.api_keys' keys are admin keys)", err=True)
        return
    click.echo(f"{'NAME':<24} {'ADMIN':<5} {'CREATED':<19} {'LAST USED':<19} REVOKED")
    for r in rows:
        click.echo(f"{r.name:<24} {'yes' if r.admin else 'no':<5} {_when(r.created_at):<19} "
                   f"{_when(r.last_used_at):<19} {_when(r.revoked_at)}")


def _iso(dt) -> str | None:
    from gateway.views import iso

    return iso(dt.replace(tzinfo=dt.tzinfo or timezone.utc)) if dt else None


@keys_group.command("revoke")
@click.argument("name")
@config_option
def keys_revoke(name: str, config_path: str | None) -> None:
    """Revoke the key named NAME: its next request is refused, by every process on this database,
    and its dashboard sessions end. What it owns stays (an admin key sees it)."""
    from gateway import keys

    async def work(db, cfg):
        return await keys.revoke(db, name)

    row = _keys_run(config_path, work)
    click.echo(f"revoked key {row.name!r}")


def _add_plugin_commands() -> None:
    """Commands from plugins (register_commands), chosen by the environment's plugins.load."""
    try:
        plugins = _plugins(_config(None))
    except click.ClickException as exc:  # every command that reads the configuration says why
        main.config_error = exc.message
        return
    plugins.call_all_sync("register_commands", cli=main)


_add_plugin_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
