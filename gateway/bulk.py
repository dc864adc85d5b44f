"""A transaction's reads and writes of many rows at once, straight to the driver: the rows to
decide on, locked (`locked_rows`), and the writes, many rows per table (`writes(conn)`).

On PostgreSQL every table's rows go as binary arrays (`INSERT … SELECT * FROM unnest(…)`,
`UPDATE … FROM unnest(…)`) and all of a transaction's writes are one statement, joined by
WITH and sent when the block ends: one round trip, one plan to make (psycopg prepares a query
it has seen five times), cheaper than a pipeline of statements (measured: docs/ARCHITECTURE.md,
bench/results/ingest.md). On SQLite each write is one prepared statement stepped per row (executemany), run
at once. Values go through their columns' own bind processors first (what SQLAlchemy would
do), and columns left out of an insert get their scalar defaults.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from operator import itemgetter
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError


class Writes:
    """Collects one transaction's writes; see writes()."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.postgresql = conn.dialect.name == "postgresql"
        self._statements: list[str] = []  # PostgreSQL: sent together by send()
        self._params: list[Any] = []

    def insert_dicts(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert `rows` (dicts with the same keys) into `table`."""
        if rows:
            columns = tuple(rows[0])
            self.insert_rows(table, columns, [_getter(columns)(r) for r in rows])

    def insert_rows(self, table: Table, columns: Sequence[str], rows: Sequence[tuple]) -> None:
        """Insert `rows` (tuples in `columns` order) into `table`."""
        if not rows:
            return
        defaults = [c for c in table.columns
                    if c.name not in columns and c.default is not None and c.default.is_scalar]
        columns = tuple(columns) + tuple(c.name for c in defaults)
        values = _processed(self.conn, table, columns, rows, tuple(c.default.arg for c in defaults))
        if self.postgresql:
            self._add(_pg_insert(table, columns, self.conn.dialect), values)
        else:
            self.conn.exec_driver_sql(_sqlite_insert(table.name, columns), list(zip(*values)))

    def update_dicts(self, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Set, in the row of `table` whose `key` column equals each dict's `key` value, every
        other column the dict names (all dicts have the same keys)."""
        if not rows:
            return
        columns = (key,) + tuple(c for c in rows[0] if c != key)
        values = _processed(self.conn, table, columns, [_getter(columns)(r) for r in rows], ())
        if self.postgresql:
            self._add(_pg_update(table, columns, self.conn.dialect), values)
        else:
            self.conn.exec_driver_sql(_sqlite_update(table.name, columns), list(zip(*values[1:], values[0])))

    def delete_in(self, table: Table, column: str, keys: Sequence[Any]) -> None:
        """Delete the rows of `table` whose `column` is one of `keys`."""
        if not keys:
            return
        values = _processed(self.conn, table, (column,), [(k,) for k in keys], ())
        if self.postgresql:
            self._add(_pg_delete(table, column, self.conn.dialect), values)
        else:
            self.conn.exec_driver_sql(_sqlite_delete(table.name, column), list(zip(*values)))

    def then(self, sql: str, params: Sequence[Any]) -> None:
        """PostgreSQL: a SELECT (driver SQL, `%s` parameters) run after the writes, in the same
        statement (e.g. the NOTIFY of what they stored)."""
        if self.postgresql:
            self._statements.append(sql)
            self._params.extend(params)

    def _add(self, sql: str, columns: Sequence[Sequence[Any]]) -> None:
        self._statements.append(sql)
        self._params.extend(list(c) for c in columns)

    def send(self) -> None:
        """PostgreSQL: the collected writes as one statement (no result is read)."""
        if not self._statements:
            return
        *first, last = self._statements
        sql = f"WITH {', '.join(f'w{i} AS ({s})' for i, s in enumerate(first))} {last}" if first else last
        with _wrapped_errors(self.conn):
            self.conn.connection.driver_connection.cursor().execute(sql, self._params)
        self._statements, self._params = [], []


def locked_rows(conn: Connection, table: Table, columns: tuple[str, ...], keys: Sequence[Any]) -> list[tuple]:
    """The rows of `table` whose first column (its key) is one of `keys`, as named tuples of
    `columns`, locked for this transaction (PostgreSQL: FOR UPDATE, taken in key order so that two
    transactions never deadlock; SQLite: the transaction's write lock). Values come back as
    SQLAlchemy would give them: psycopg makes Python values itself; SQLite's go through the
    columns' result processors (text to datetime, 0/1 to bool)."""
    if not keys:
        return []
    dialect = conn.dialect
    if dialect.name == "postgresql":
        with _wrapped_errors(conn):
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(_pg_select(table, columns, dialect), [list(keys)])
            rows = cursor.fetchall()
        processors = []
    else:
        rows = conn.exec_driver_sql(_sqlite_select(table.name, columns, len(keys)), tuple(keys)).all()
        processors = _sqlite_result_processors(table, columns, dialect)
    make = _row_type(table, columns)._make
    if not processors:
        return [make(r) for r in rows]
    out = []
    for row in rows:
        row = list(row)
        for i, process in processors:
            row[i] = process(row[i])
        out.append(make(row))
    return out


@contextlib.contextmanager
def writes(conn: Connection) -> Iterator[Writes]:
    """The writes made in the block; on PostgreSQL sent as one statement when it ends."""
    w = Writes(conn)
    yield w
    w.send()


@contextlib.contextmanager
def _wrapped_errors(conn: Connection) -> Iterator[None]:
    """The driver's errors as SQLAlchemy raises them (IntegrityError, OperationalError, …): a
    lost connection is invalidated and reported so (gateway.db.unavailable), as it would be
    through SQLAlchemy."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, dbapi_error, connection_invalidated=lost,
                                  dialect=conn.dialect) from exc


# --- the statements, built once per table and column list ---------------------------------


@functools.lru_cache(maxsize=256)
def _pg_insert(table: Table, columns: tuple[str, ...], dialect) -> str:
    return f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({_arrays(table, columns, dialect)})"


@functools.lru_cache(maxsize=256)
def _pg_update(table: Table, columns: tuple[str, ...], dialect) -> str:
    key, rest = columns[0], columns[1:]
    return (f"UPDATE {table.name} SET {', '.join(f'{c} = v.{c}' for c in rest)} "
            f"FROM unnest({_arrays(table, columns, dialect)}) AS v({', '.join(columns)}) "
            f"WHERE {table.name}.{key} = v.{key}")


@functools.lru_cache(maxsize=256)
def _pg_delete(table: Table, column: str, dialect) -> str:
    return f"DELETE FROM {table.name} WHERE {column} = ANY({_arrays(table, (column,), dialect)})"


def _arrays(table: Table, columns: Sequence[str], dialect) -> str:
    """unnest's arguments: one typed array parameter per column, `%b::VARCHAR(32)[], …`, sent in
    binary (text arrays would have every element escaped, each quote of a JSON text by a regex)."""
    return ", ".join(f"%b::{table.c[c].type.compile(dialect=dialect)}[]" for c in columns)


@functools.lru_cache(maxsize=256)
def _pg_select(table: Table, columns: tuple[str, ...], dialect) -> str:
    key = columns[0]
    return (f"SELECT {', '.join(columns)} FROM {table.name} WHERE {key} = ANY({_arrays(table, (key,), dialect)}) "
            f"ORDER BY {key} FOR UPDATE")


@functools.lru_cache(maxsize=1024)
def _sqlite_select(table: str, columns: tuple[str, ...], n: int) -> str:
    return (f"SELECT {', '.join(columns)} FROM {table} WHERE {columns[0]} IN ({', '.join('?' * n)}) "
            f"ORDER BY {columns[0]}")


@functools.lru_cache(maxsize=256)
def _row_type(table: Table, columns: tuple[str, ...]):
    return collections.namedtuple(f"{table.name}_row", columns)


@functools.lru_cache(maxsize=256)
def _sqlite_result_processors(table: Table, columns: tuple[str, ...], dialect) -> list[tuple[int, Callable]]:
    return [(i, p) for i, c in enumerate(columns)
            if (p := table.c[c].type.dialect_impl(dialect).result_processor(dialect, None))]


@functools.lru_cache(maxsize=256)
def _sqlite_insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@functools.lru_cache(maxsize=256)
def _sqlite_update(table: str, columns: tuple[str, ...]) -> str:
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns[1:])} WHERE {columns[0]} = ?"


@functools.lru_cache(maxsize=256)
def _sqlite_delete(table: str, column: str) -> str:
    return f"DELETE FROM {table} WHERE {column} = ?"


def _getter(columns: Sequence[str]) -> Callable[[dict], tuple]:
    if len(columns) == 1:
        return lambda row: (row[columns[0]],)
    return itemgetter(*columns)


# --- values --------------------------------------------------------------------------------


def _processed(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple],
               extra: tuple) -> list[Sequence[Any]]:
    """The rows column by column (`extra` appended to each row), every value through its
    column's bind processor."""
    values = list(zip(*rows)) + [(value,) * len(rows) for value in extra]
    for i, name in enumerate(columns):
        if process := _bind_processor(table, name, conn.dialect):
            values[i] = _converted(values[i], process)
    return values


def _converted(values: Sequence[Any], process: Callable) -> list[Any]:
    """process(value) for each value, None kept. The rows of a batch share their timestamps (and
    often other values): each distinct value is converted once."""
    memo: dict[Any, Any] = {None: None}
    for value in values:
        if value not in memo:
            memo[value] = process(value)
    return [memo[value] for value in values]


@functools.lru_cache(maxsize=1024)
def _bind_processor(table: Table, name: str, dialect) -> Callable | None:
    return table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
