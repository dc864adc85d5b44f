"""Many rows into one table at once, straight to the driver: `COPY … FROM STDIN` on PostgreSQL
(one round trip, where executemany costs the server one statement per row), one prepared
statement stepped per row (executemany) on SQLite. Values go through their columns' own bind
processors first (what SQLAlchemy would do), and columns left out get their scalar defaults.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Table


def insert_dicts(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys) into `table`."""
    if rows:
        columns = list(rows[0])
        row = itemgetter(*columns) if len(columns) > 1 else lambda r: (r[columns[0]],)
        insert_rows(conn, table, columns, [row(r) for r in rows])


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Insert `rows` (tuples in `columns` order) into `table`."""
    if not rows:
        return
    defaults = [c for c in table.columns
                if c.name not in columns and c.default is not None and c.default.is_scalar]
    columns = list(columns) + [c.name for c in defaults]
    rows = _processed(conn, table, columns, rows, tuple(c.default.arg for c in defaults))
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cursor, \
                cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:  # (a statement of many VALUES measured slower on SQLite: one big statement to parse)
        marks = ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * len(columns))
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", rows)


def _processed(conn: Connection, table: Table, columns: list[str], rows: Sequence[tuple],
               extra: tuple) -> Sequence[tuple]:
    """The rows with `extra` appended to each, every value through its column's bind processor."""
    processors = [(i, p) for i, name in enumerate(columns) if (p := _bind_processor(table, name, conn.dialect))]
    if not processors and not extra:
        return rows
    values = list(zip(*rows)) + [(value,) * len(rows) for value in extra]  # column by column
    for i, process in processors:
        values[i] = _converted(values[i], process)
    return list(zip(*values))


def _converted(values: Sequence[Any], process: Callable) -> list[Any]:
    """process(value) for each value, None kept. The rows of a batch share their timestamps (and
    often other values): each distinct value is converted once."""
    memo: dict[Any, Any] = {None: None}
    for value in values:
        if value not in memo:
            memo[value] = process(value)
    return [memo[value] for value in values]


_PROCESSORS: dict[tuple[str, str, str], Callable | None] = {}


def _bind_processor(table: Table, name: str, dialect) -> Callable | None:
    key = (table.name, name, dialect.name)
    if key not in _PROCESSORS:
        type_ = table.c[name].type
        _PROCESSORS[key] = type_.dialect_impl(dialect).bind_processor(dialect)
    return _PROCESSORS[key]
