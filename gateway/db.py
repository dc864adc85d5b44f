"""Database access: the async engine, sessions, the writer threads, and Alembic migrations.

SQLite runs in WAL mode with `synchronous=FULL` (a commit survives a power cut) and every
transaction starts with `BEGIN IMMEDIATE`, so writers queue on SQLite's lock (busy_timeout)
instead of failing on a read-to-write upgrade: that is the "single writer" of the design.
PostgreSQL uses row locks (`FOR UPDATE SKIP LOCKED`) for claims. Batches of many statements
(the ingest door's group commits) run on writer threads, each with its own synchronous
connection (`Database.on_writer`; one on SQLite, where they take the same turn as every other
transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Iterator, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

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


def alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


MIGRATION_LOCK = 0x7467775F6D6967  # a PostgreSQL advisory lock key: "tgw_mig"


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, one process migrates at a time: the others wait, then find nothing to do."""
    if is_sqlite(url):
        yield
        return
    from sqlalchemy import create_engine, text

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


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (synchronous; call off the event loop)."""
    from alembic import command

    ensure_sqlite_dir(url)
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    with migration_lock(url):
        command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
