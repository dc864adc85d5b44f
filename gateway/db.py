"""Database access: the async engine, sessions, the writer threads, and Alembic migrations.

SQLite runs in WAL mode with `synchronous=FULL` (a commit survives a power cut) and every
transaction starts with `BEGIN IMMEDIATE`, so writers queue on SQLite's lock (busy_timeout)
instead of failing on a read-to-write upgrade: that is the "single writer" of the design.
PostgreSQL uses row locks (`FOR UPDATE SKIP LOCKED`) for claims. Batches of many statements
(the ingest door's group commits) run on writer threads, each with its own synchronous
connection (`Database.on_writer`; one on SQLite, where they take the same turn as every other
transaction).

Migrations: the core's versions (migrations/versions) and, as Alembic branches of their own
labelled with their names, the versions of every loaded plugin that has some (the `migrations`
hook); `upgrade` takes them all to their heads, `downgrade(url, "<plugin>@base")` removes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterable, Iterator, Mapping, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

if TYPE_CHECKING:
    from gateway.plugins import Plugins

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
if not (MIGRATIONS_DIR / "env.py").exists():  # running from a source checkout
    MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def unavailable(exc: BaseException) -> bool:
    """The database could not be reached (as opposed to refusing a statement)."""
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or isinstance(exc, OperationalError))


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _with_driver(url: str, sqlite_driver: str) -> str:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        u = u.set(drivername=sqlite_driver)
    elif u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3 serves both sync and async
    return u.render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The URL for synchronous use (Alembic)."""
    return _with_driver(url, "sqlite")


def async_url(url: str) -> str:
    return _with_driver(url, "sqlite+aiosqlite")


def ensure_sqlite_dir(url: str) -> None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def install_sqlite_hooks(engine) -> None:
    """Pragmas on connect; `BEGIN IMMEDIATE` for every transaction (SQLAlchemy's documented recipe)."""
    sync_engine = getattr(engine, "sync_engine", engine)

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn, record):
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        _sqlite_pragmas(dbapi_conn, record)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The async engine, a session factory and the writer threads; one per process."""

    def __init__(self, url: str, *, pool_size: int = 5, writers: int = 1):
        self.url = url
        self.sqlite = is_sqlite(url)
        # Batches that may be written at once: PostgreSQL runs them on as many connections
        # (row locks order them where they meet); SQLite has one writer.
        self.writers = 1 if self.sqlite else writers
        ensure_sqlite_dir(url)
        kwargs: dict = {"pool_pre_ping": not self.sqlite}
        if not self.sqlite:
            kwargs.update(pool_size=pool_size, max_overflow=10)
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        if self.sqlite:
            install_sqlite_hooks(self.engine)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite has one writer: this process's transactions take turns here, in arrival order,
        # rather than in SQLite's busy handler, which sleeps up to 100 ms between tries.
        self._turn = asyncio.Lock() if self.sqlite else contextlib.nullcontext()
        self._writer: tuple[Engine, ThreadPoolExecutor] | None = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error.

        Never open a second session while holding one (on SQLite that would wait for itself)."""
        async with self._turn, self._sessions() as s, s.begin():
            yield s

    async def on_writer(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(connection)` on one of this process's writer threads (`writers` of them, each
        with its own synchronous connection), in this process's turn on SQLite; `fn` runs as many
        transactions as it likes, each `with connection.begin():`. A batch of statements costs one
        hop off the event loop instead of one per statement, and never waits behind the loop's
        other work between statements."""
        if self._writer is None:
            engine = create_engine(sync_url(self.url), pool_size=self.writers, max_overflow=0,
                                   pool_pre_ping=not self.sqlite)
            if self.sqlite:
                install_sqlite_hooks(engine)
            self._writer = engine, ThreadPoolExecutor(self.writers, thread_name_prefix="db-writer")
        engine, thread = self._writer

        def run() -> T:
            with engine.connect() as conn:
                return fn(conn)
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(thread, run)

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            engine, thread = self._writer
            thread.shutdown(wait=True)
            engine.dispose()
            self._writer = None


class MigrationError(Exception):
    """The migrations cannot run as they are (a plugin's branch, a revision no one has); the
    message says what to do."""


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """What Alembic's autogenerate compares with the models (migrations/env.py and the schema
    test): everything but a table in the database that no model declares. Such a table is a
    plugin's, made by its own migrations (the search index), and is neither created nor dropped."""
    return not (type_ == "table" and reflected and compare_to is None)


def alembic_config(url: str, branches: Mapping[str, Path] = {}):
    """The core's versions and each of `branches` (plugin name -> its versions folder)."""
    from alembic.config import Config as AlembicConfig

    def escaped(value: str) -> str:  # the options are read through configparser's interpolation
        return value.replace("%", "%%")

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", escaped(str(MIGRATIONS_DIR)))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", escaped(os.pathsep.join(
        str(folder) for folder in (MIGRATIONS_DIR / "versions", *branches.values()))))
    cfg.set_main_option("sqlalchemy.url", escaped(sync_url(url)))
    return cfg


def _script(url: str, branches: Mapping[str, Path] = {}):
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url, branches))


def _recorded(url: str) -> tuple[str, ...]:
    """The revisions the database records (alembic_version), none for a new database."""
    from alembic.migration import MigrationContext

    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()


def _unknown(script, revisions: Iterable[str]) -> list[str]:
    from alembic.script.revision import ResolutionError

    unknown = []
    for rev in revisions:
        try:
            script.revision_map.get_revision(rev)
        except ResolutionError:
            unknown.append(rev)
    return unknown


def _readable(url: str, plugins: Plugins | None, loaded: dict[str, Path]):
    """(the branches Alembic reads for an upgrade, their ScriptDirectory): the loaded plugins',
    and the other installed plugins' only when the database records revisions of theirs
    (applied while they were loaded). Alembic must know every revision the database has; a
    plugin that is not loaded never has its branch applied."""
    script = _script(url, loaded)
    unknown = _unknown(script, _recorded(url))
    if not unknown:
        return loaded, script
    installed = plugins.migrations(installed=True) if plugins else loaded
    script = _script(url, installed)
    if still := _unknown(script, unknown):
        raise MigrationError(f"the database has revision(s) {', '.join(still)} that neither the gateway nor an "
                             "installed plugin has: reinstall the plugin they belong to (and remove its tables "
                             "with `transcribe-gateway db downgrade <plugin>@base` if you no longer want it)")
    return installed, script


def _heads(script, loaded: dict[str, Path], readable: dict[str, Path]) -> list[str]:
    """What "head" upgrades to: every head, when Alembic reads only the core and the loaded
    plugins' branches; else the core's head, then `<name>@head` of each loaded plugin's branch
    (the one labelled with its name), one after the other."""
    labels = {label for rev in script.walk_revisions() for label in rev.branch_labels}
    for name, folder in loaded.items():
        if name not in labels:
            raise MigrationError(f"plugin {name!r}: its migrations ({folder}) have no branch labelled {name!r}; "
                                 f"its first revision needs branch_labels = ({name!r},)")
    if readable == loaded:
        return ["heads"]
    core = [head.revision for head in script.get_revisions("heads")
            if Path(head.path).parent == MIGRATIONS_DIR / "versions"]
    return [*core, *(f"{name}@head" for name in loaded)]


MIGRATION_LOCK = 0x7467775F6D6967  # a PostgreSQL advisory lock key: "tgw_mig"


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process migrates at a time: the others wait, then find nothing to do."""
    if is_sqlite(url):
        yield
        return
    from sqlalchemy import text

    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head", plugins: Plugins | None = None) -> None:
    """Apply migrations (synchronous; call off the event loop): "head" takes the core and the
    branch of every plugin loaded in `plugins` to their heads; any other revision is Alembic's
    (e.g. 0005, search@head). A plugin that is not loaded never has its branch applied."""
    from alembic import command

    ensure_sqlite_dir(url)
    with migration_lock(url):
        loaded = plugins.migrations() if plugins else {}
        readable, script = _readable(url, plugins, loaded)
        targets = _heads(script, loaded, readable) if revision in ("head", "heads") else [revision]
        for target in targets:
            command.upgrade(alembic_config(url, readable), target)


def downgrade(url: str, revision: str, plugins: Plugins | None = None) -> None:
    """Revert to `revision`, with the migrations of the core and of every installed plugin in
    `plugins`: `<plugin>@base` removes that plugin's tables."""
    from alembic import command

    with migration_lock(url):
        readable = plugins.migrations(installed=True) if plugins else {}
        command.downgrade(alembic_config(url, readable), revision)


async def upgrade_async(url: str, plugins: Plugins | None = None) -> None:
    await asyncio.to_thread(upgrade, url, "head", plugins)
