"""The schema comes only from Alembic: the migrations produce exactly the SQLModel metadata
(with and without a plugin's branch), and downgrade cleanly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import gateway.models  # noqa: F401 - registers the tables
from gateway.db import downgrade, include_object, sync_url, upgrade
from gateway.plugins import Plugins


def schema_diff(url: str) -> list:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": True,
                                                         "include_object": include_object})
            return compare_metadata(ctx, SQLModel.metadata)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    """Tables, without SQLite's FTS5 shadow tables."""
    engine = create_engine(sync_url(url))
    try:
        return {t for t in inspect(engine).get_table_names() if not t.startswith("segment_index_")}
    finally:
        engine.dispose()


def test_migrations_produce_exactly_the_models(database_url):
    upgrade(database_url)
    assert schema_diff(database_url) == []
    assert tables(database_url) == set(SQLModel.metadata.tables) | {"alembic_version"}


def test_a_plugins_branch_adds_its_tables_and_the_models_still_match(database_url):
    upgrade(database_url, plugins=Plugins(["search"], {}))
    assert schema_diff(database_url) == []
    assert tables(database_url) == set(SQLModel.metadata.tables) | {"alembic_version", "segment_index"}


def test_downgrade_to_base_and_up_again(database_url):
    search = Plugins(["search"], {})
    upgrade(database_url, plugins=search)
    downgrade(database_url, "base", search)
    assert tables(database_url) == {"alembic_version"}
    upgrade(database_url, plugins=search)
    assert schema_diff(database_url) == []


def test_a_downgrade_past_0005_rebuilds_the_segment_rows_from_the_stored_payloads(database_url):
    """0005 dropped the segment table (every segment is in task.result_json); going back
    restores its rows, numbered in payload order, for every stored transcript."""

    from gateway.payloads import Outcome, Segment, build_payload, serialise_result

    upgrade(database_url)
    payload = build_payload("t" * 32, Outcome(success=True, duration=4.0, segments=(
        Segment(0.0, 1.25, "Hello there.", "SPEAKER_00"), Segment(1.5, 3.0, "Grüße, 'quoted'."))),
        model="whisper-1", speaker=True)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO task (id, model, speaker, provider, status, progress, attempts, "
                              "result_json, created_at, updated_at) VALUES (:id, 'whisper-1', true, 'local', "
                              "'completed', 1.0, 1, :result, '2026-11-26 00:00:00', '2026-11-26 00:00:00')"),
                         {"id": "t" * 32, "result": serialise_result(payload)[0]})
            conn.execute(text("INSERT INTO transcript (task_id, model, duration, segment_count, text, created_at) "
                              "VALUES (:id, 'whisper-1', 4.0, 2, 'x', '2026-11-26 00:00:00')"), {"id": "t" * 32})
        downgrade(database_url, "0004")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT task_id, idx, start_time, end_time, speaker, text FROM segment "
                                     "ORDER BY idx")).all()
        assert [tuple(r) for r in rows] == [("t" * 32, 0, 0.0, 1.25, "SPEAKER_00", "Hello there."),
                                            ("t" * 32, 1, 1.5, 3.0, None, "Grüße, 'quoted'.")]
        upgrade(database_url)
        assert "segment" not in tables(database_url)
    finally:
        engine.dispose()


def test_stored_results_are_lz4_compressed_on_postgresql(database_url, db_backend):
    if db_backend != "postgresql":
        pytest.skip("SQLite does not compress values")

    def compression() -> str:
        engine = create_engine(sync_url(database_url))
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT attcompression FROM pg_attribute WHERE attrelid = 'task'::regclass "
                                         "AND attname = 'result_json'")).scalar()
        finally:
            engine.dispose()

    upgrade(database_url)
    assert compression() == "l"
    downgrade(database_url, "0005")
    assert compression() == "p"


def test_an_empty_database_shows_the_whole_schema_as_missing(database_url):
    """Guards the check above: with no migrations applied the comparison is not empty."""
    from gateway.db import ensure_sqlite_dir

    ensure_sqlite_dir(database_url)
    assert len(schema_diff(database_url)) >= len(SQLModel.metadata.tables)


def test_0010_adds_partial_segment_and_its_downgrade_removes_it(database_url):
    """0010 adds the table of a running task's texts (gateway/partials.py); down to 0009 drops it
    and leaves the rest as 0009 made it; up again, the models match."""
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        assert inspect(engine).get_pk_constraint("partial_segment")["constrained_columns"] == ["task_id", "seq"]
        [fk] = inspect(engine).get_foreign_keys("partial_segment")
        assert (fk["constrained_columns"], fk["referred_table"]) == (["task_id"], "task")
    finally:
        engine.dispose()
    downgrade(database_url, "0009")
    later = {"partial_segment", "api_key", "speaker"}  # 0010's table, and those of revisions after it
    assert tables(database_url) == set(SQLModel.metadata.tables) - later | {"alembic_version"}
    upgrade(database_url)
    assert schema_diff(database_url) == []


def test_0011_gives_existing_tasks_and_assets_to_admin_and_its_downgrade_removes_keys(database_url):
    """Rows older than keys belong to "admin" (the keys of server.api_keys); down to 0010 drops
    the key table and the owner columns; up again, the models match."""

    upgrade(database_url, "0010")
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO asset (id, filename, content_type, size, sha256, path, created_at) "
                              "VALUES ('re_1', 'a.wav', 'audio/wav', 1, 'x', '/tmp/a', '2026-11-26 00:00:00')"))
            conn.execute(text("INSERT INTO task (id, asset_id, model, speaker, provider, status, progress, attempts, "
                              "created_at, updated_at) VALUES (:id, 're_1', 'whisper-1', false, 'local', 'queued', "
                              "0, 0, '2026-11-26 00:00:00', '2026-11-26 00:00:00')"), {"id": "t" * 32})
        upgrade(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT owner FROM task")).scalars().all() == ["admin"]
            assert conn.execute(text("SELECT owner FROM asset")).scalars().all() == ["admin"]
        downgrade(database_url, "0010")
        assert "api_key" not in tables(database_url)
        assert "owner" not in {c["name"] for c in inspect(engine).get_columns("task")}
    finally:
        engine.dispose()


def test_0013_adds_the_speaker_table_and_its_downgrade_removes_it(database_url):
    """0013 adds the enrolled speakers (gateway/known_speakers.py); down to 0010 drops it and
    leaves the rest; up again, the models match."""
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        assert inspect(engine).get_pk_constraint("speaker")["constrained_columns"] == ["id"]
        assert [i["column_names"] for i in inspect(engine).get_indexes("speaker")] == [["owner"]]
    finally:
        engine.dispose()
    downgrade(database_url, "0010")
    assert tables(database_url) == set(SQLModel.metadata.tables) - {"speaker", "api_key"} | {"alembic_version"}
    upgrade(database_url)
    assert schema_diff(database_url) == []


def test_0014_adds_the_telephone_band_voiceprint_and_keeps_the_voices_enrolled_before(database_url):
    """0014 adds speaker.narrowband (nullable: a voice enrolled before has none, and is matched with
    its one voiceprint); down to 0013 drops the column and keeps the rows."""
    upgrade(database_url)
    downgrade(database_url, "0013")
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO speaker (id, name, owner, embedding, encoder, created_at) VALUES "
                              "('spk_1', 'Ann', 'admin', :e, 'resemblyzer-ge2e/1', '2026-12-01 00:00:00')"),
                         {"e": b"\0" * 1024})
        upgrade(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name, narrowband FROM speaker")).all() == [("Ann", None)]
        assert schema_diff(database_url) == []
        downgrade(database_url, "0013")
        assert "narrowband" not in {c["name"] for c in inspect(engine).get_columns("speaker")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM speaker")).scalars().all() == ["Ann"]
    finally:
        engine.dispose()
    upgrade(database_url)
