"""The schema comes only from Alembic: the migrations produce exactly the SQLModel metadata,
and downgrade cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

import gateway.models  # noqa: F401 - registers the tables
from gateway.db import downgrade, sync_url, upgrade


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


def include_object(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and name.startswith("segment_index"))  # as migrations/env.py


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
    assert tables(database_url) == set(SQLModel.metadata.tables) | {"alembic_version", "segment_index"}


def test_downgrade_to_base_and_up_again(database_url):
    upgrade(database_url)
    downgrade(database_url, "base")
    assert tables(database_url) == {"alembic_version"}
    upgrade(database_url)
    assert schema_diff(database_url) == []


def test_an_empty_database_shows_the_whole_schema_as_missing(database_url):
    """Guards the check above: with no migrations applied the comparison is not empty."""
    from gateway.db import ensure_sqlite_dir

    ensure_sqlite_dir(database_url)
    assert len(schema_diff(database_url)) >= len(SQLModel.metadata.tables)
