"""Many rows into one table at once, straight to the driver. On PostgreSQL one statement per
table, its columns sent as arrays (`INSERT … SELECT * FROM unnest(…)`, `UPDATE … FROM
unnest(…)`), and the statements of a `pipeline()` block sent together: a batch of writes is one
round trip. On SQLite one prepared statement stepped per row (executemany). Values go through
their columns' own bind processors first (what SQLAlchemy would do), and columns left out of
an insert get their scalar defaults.
"""

from __future__ import annotations

import contextlib
from operator import itemgetter
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import Connection, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """On PostgreSQL the statements sent by this module inside the block go to the server
    together and are answered together (psycopg's pipeline mode); on SQLite nothing changes."""
    if conn.dialect.name == "postgresql":
        with _wrapped_errors(conn), conn.connection.driver_connection.pipeline():
            yield
    else:
        yield


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


def insert_dicts(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys) into `table`."""
    if rows:
        columns = list(rows[0])
        insert_rows(conn, table, columns, [_getter(columns)(r) for r in rows])


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Insert `rows` (tuples in `columns` order) into `table`."""
    if not rows:
        return
    defaults = [c for c in table.columns
                if c.name not in columns and c.default is not None and c.default.is_scalar]
    columns = list(columns) + [c.name for c in defaults]
    values = _processed(conn, table, columns, rows, tuple(c.default.arg for c in defaults))
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        _driver_execute(conn, f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({_arrays(conn, table, columns)})",
                        [list(c) for c in values])
    else:
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})",
                             list(zip(*values)))


def update_dicts(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Set, in the row of `table` whose `key` column equals each dict's `key` value, every other
    column the dict names (all dicts have the same keys)."""
    if not rows:
        return
    columns = [key] + [c for c in rows[0] if c != key]
    values = _processed(conn, table, columns, [_getter(columns)(r) for r in rows], ())
    sets = ", ".join(f"{c} = v.{c}" for c in columns[1:])
    if conn.dialect.name == "postgresql":
        _driver_execute(conn, f"UPDATE {table.name} SET {sets} FROM unnest({_arrays(conn, table, columns)}) "
                              f"AS v({', '.join(columns)}) WHERE {table.name}.{key} = v.{key}",
                        [list(c) for c in values])
    else:
        conn.exec_driver_sql(f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in columns[1:])} WHERE {key} = ?",
                             list(zip(*values[1:], values[0])))


def execute(conn: Connection, statement: Executable) -> None:
    """A Core statement (no result wanted) through the driver, so that on PostgreSQL it joins an
    open pipeline() instead of ending it."""
    compiled = statement.compile(dialect=conn.dialect)
    _driver_execute(conn, str(compiled), compiled.params)


def _driver_execute(conn: Connection, sql: str, params: Any) -> None:
    with _wrapped_errors(conn):
        conn.connection.driver_connection.cursor().execute(sql, params)


def _arrays(conn: Connection, table: Table, columns: Sequence[str]) -> str:
    """unnest's arguments: one typed array parameter per column, `%b::VARCHAR(32)[], …`, sent in
    binary (text arrays would have every element escaped, each quote of a JSON text by a regex)."""
    return ", ".join(f"%b::{_sql_type(table, c, conn.dialect)}[]" for c in columns)


def _getter(columns: Sequence[str]) -> Callable[[dict], tuple]:
    if len(columns) == 1:
        return lambda row: (row[columns[0]],)
    return itemgetter(*columns)


def _processed(conn: Connection, table: Table, columns: list[str], rows: Sequence[tuple],
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


_PROCESSORS: dict[tuple[str, str, str], Callable | None] = {}
_SQL_TYPES: dict[tuple[str, str, str], str] = {}


def _bind_processor(table: Table, name: str, dialect) -> Callable | None:
    key = (table.name, name, dialect.name)
    if key not in _PROCESSORS:
        type_ = table.c[name].type
        _PROCESSORS[key] = type_.dialect_impl(dialect).bind_processor(dialect)
    return _PROCESSORS[key]


def _sql_type(table: Table, name: str, dialect) -> str:
    key = (table.name, name, dialect.name)
    if key not in _SQL_TYPES:
        _SQL_TYPES[key] = table.c[name].type.compile(dialect=dialect)
    return _SQL_TYPES[key]
