"""Plugins' own migrations: each plugin's Alembic branch is applied where it is loaded, and only
there; `db downgrade <plugin>@base` removes it; a database made before the search index was the
search plugin's upgrades to the new layout keeping its rows; and a third-party plugin package
with a table of its own is treated exactly as search is."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from conftest import ECHO, install_plugin, plugin_site_in_use, to_toml
from gateway.db import MIGRATIONS_DIR, alembic_config, downgrade, sync_url, upgrade
from gateway.payloads import Segment
from gateway.plugins import Plugins
from gateway_plugins.search import index
from test_cli import cli

LEGACY_0002 = Path(__file__).resolve().parent / "legacy" / "0002_search_index.py"


def versions(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def core_head() -> str:
    """The newest core revision (their ids are their files' 4-digit prefixes)."""
    return max(p.name[:4] for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))


def legacy_database(url: str, tmp_path: Path) -> None:
    """A database as the migrations made it before plugins had branches: the core's versions of
    today with the old 0002, which created the search index, up to 0008."""
    from alembic import command

    folder = tmp_path / "legacy-versions"
    folder.mkdir()
    for script in (MIGRATIONS_DIR / "versions").glob("0*.py"):
        shutil.copy(script, folder)
    (folder / "0002_search_index.py").write_text(LEGACY_0002.read_text())
    cfg = alembic_config(url)
    cfg.set_main_option("version_locations", str(folder))
    command.upgrade(cfg, "0008")


async def test_a_database_made_by_the_old_migrations_adopts_the_search_branch(database_url, tmp_path):
    from gateway.db import Database

    legacy_database(database_url, tmp_path)
    assert versions(database_url) == {"0008"} and "segment_index" in table_names(database_url)
    db = Database(database_url)
    try:
        await index.index_transcript(db, "a" * 32, [Segment(0, 2, "The quarterly budget was approved.", None)],
                                     datetime(2026, 3, 1, tzinfo=timezone.utc))
    finally:
        await db.close()

    search = Plugins(["search"], {})
    upgrade(database_url, plugins=search)
    assert versions(database_url) == {core_head(), "search_0002"}
    db = Database(database_url)
    try:
        page = await index.search(db, "budget", index.Filters(), 20, 0)
        assert [h["task_id"] for h in page["items"]] == ["a" * 32]  # the old rows, kept
    finally:
        await db.close()

    # From here on it is a database like any other: the branch goes and comes back.
    downgrade(database_url, "search@base", search)
    assert versions(database_url) == {core_head()}
    assert not {t for t in table_names(database_url) if t.startswith("segment_index")}
    upgrade(database_url, plugins=search)
    db = Database(database_url)
    try:
        await index.index_transcript(db, "b" * 32, [Segment(0, 1, "A new budget.", None)],
                                     datetime(2026, 3, 2, tzinfo=timezone.utc))
        page = await index.search(db, "budget", index.Filters(), 20, 0)
        assert [h["task_id"] for h in page["items"]] == ["b" * 32]
    finally:
        await db.close()


def test_a_plugin_that_is_not_loaded_keeps_its_applied_branch_and_gets_no_new_one(database_url):
    upgrade(database_url, plugins=Plugins(["srt"], {}))
    assert "segment_index" not in table_names(database_url) and "search_0002" not in versions(database_url)
    upgrade(database_url, plugins=Plugins(["search"], {}))
    upgrade(database_url, plugins=Plugins(["srt"], {}))  # knows search's revision, does not touch it
    assert "search_0002" in versions(database_url) and "segment_index" in table_names(database_url)
    downgrade(database_url, "search@base", Plugins(["srt"], {}))  # an installed plugin, loaded or not
    assert "search_0002" not in versions(database_url) and "segment_index" not in table_names(database_url)


# --- a third-party plugin with a table of its own -----------------------------------------

NOTES_PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tgw-notes"
        version = "0.1.0"

        [project.entry-points.transcribe_gateway]
        notes = "tgw_notes"

        [tool.setuptools]
        packages = ["tgw_notes", "tgw_notes.migrations"]
        """,
    "tgw_notes/__init__.py": '''
        """Counts the words of every completed transcript into a table of its own."""
        from pathlib import Path

        import click
        from sqlalchemy import text

        from gateway import API_BASE
        from gateway.appkeys import DB
        from gateway.envelope import ok
        from gateway.hookspecs import hookimpl
        from gateway.plugins import PluginConfig


        class Config(PluginConfig):
            route: str = "/notes"


        @hookimpl
        def plugin_config():
            return Config


        @hookimpl
        def migrations():
            return Path(__file__).parent / "migrations"


        @hookimpl
        async def transcript_completed(task, transcript, gateway):
            async with gateway.db.session() as s:
                await (await s.connection()).execute(
                    text("INSERT INTO tgw_note (task_id, words) VALUES (:t, :w) ON CONFLICT (task_id) DO NOTHING"),
                    {"t": task.task_id, "w": len(transcript.text.split())})


        @hookimpl
        def register_routes(app, config):
            async def notes(request):
                async with request.app[DB].session() as s:
                    rows = (await (await s.connection()).execute(text("SELECT task_id, words FROM tgw_note"))).all()
                return ok({"notes": [{"task_id": t, "words": w} for t, w in rows]})

            app.router.add_get(API_BASE + config.route, notes)


        @hookimpl
        def register_commands(cli, config):
            @cli.command("notes-route")
            def notes_route():
                """Print where the notes plugin answers."""
                click.echo(config.route)
        ''',
    "tgw_notes/migrations/__init__.py": "",
    "tgw_notes/migrations/notes_0001_note.py": '''
        """the notes plugin's table

        Revision ID: notes_0001
        """
        import sqlalchemy as sa
        from alembic import op

        revision = "notes_0001"
        down_revision = None
        branch_labels = ("notes",)
        depends_on = "0001"


        def upgrade():
            op.create_table("tgw_note", sa.Column("task_id", sa.String(32), primary_key=True),
                            sa.Column("words", sa.Integer, nullable=False))


        def downgrade():
            op.drop_table("tgw_note")
        ''',
}


@pytest.fixture(scope="module")
def notes_site(tmp_path_factory) -> Path:
    """The notes plugin, built from its own folder and installed (not editable) into a folder of
    its own; tests put that folder on sys.path and PYTHONPATH, where importlib.metadata finds its
    entry point."""
    src, site = tmp_path_factory.mktemp("tgw-notes"), tmp_path_factory.mktemp("notes-site")
    for name, content in NOTES_PLUGIN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(content).lstrip())
    install_plugin(src, site)
    assert (site / "tgw_notes" / "migrations" / "notes_0001_note.py").exists()
    return site


@pytest.fixture
def notes_installed(notes_site, monkeypatch):
    yield from plugin_site_in_use(notes_site, "tgw_notes", monkeypatch)


async def test_a_third_party_plugin_with_its_own_table_is_treated_as_search_is(
        notes_installed, start_gateway, tmp_path, database_url, monkeypatch):
    gw = await start_gateway(plugins={"notes": {"route": "/my-notes"}})
    assert {"search_0002", "notes_0001"} <= versions(database_url)  # both branches, at start-up
    assert {"tgw_note", "segment_index"} <= table_names(database_url)

    script = tmp_path / "script.txt"  # what the echo provider hears: one segment of seven words
    script.write_text("The notes plugin counts these seven words.\n")
    task_id = await gw.submit(asset_id=await gw.upload(script), model=ECHO)
    deadline = time.monotonic() + 60
    while {d["target"]: d["status"] for d in (await gw.status(task_id))["deliveries"]}.get("plugin:notes") != "delivered":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    status, body = await gw.call("GET", "/my-notes")  # its route, where its own section says
    assert status == 200 and [n["task_id"] for n in body["data"]["notes"]] == [task_id]
    assert body["data"]["notes"][0]["words"] == 7

    code, out, err = await cli("--help")
    assert code == 0 and "notes-route" in out and "search" in out, err
    monkeypatch.setenv("TGW_PLUGINS__NOTES__ROUTE", "/elsewhere")
    code, out, err = await cli("notes-route")  # its command, with its own section handed to it
    assert (code, out) == (0, "/elsewhere\n"), err

    # Not loaded: a gateway starts on the database that has its branch, and leaves it alone.
    without = await start_gateway(worker=False, plugins={"load": ["srt", "search", "slack", "echo"]})
    assert (await without.call("GET", "/my-notes"))[0] == 404
    assert "notes_0001" in versions(database_url)

    # Removed: take it out of plugins.load, then downgrade its branch.
    config = tmp_path / "g.toml"
    config.write_text(to_toml({"database": {"url": database_url}, "plugins": {"load": ["srt", "search", "slack"]}}))
    code, out, err = await cli("db", "downgrade", "notes@base", "--config", str(config))
    assert code == 0 and "is at revision notes@base" in out, err
    assert "notes_0001" not in versions(database_url) and "tgw_note" not in table_names(database_url)
    assert "search_0002" in versions(database_url)

    await start_gateway(worker=False, plugins={"load": ["srt", "search", "slack", "echo"]})
    assert "notes_0001" not in versions(database_url) and "tgw_note" not in table_names(database_url)
