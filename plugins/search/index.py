"""Full-text search over transcript segments: SQLite FTS5 (bm25) or PostgreSQL tsvector (ts_rank).

On SQLite the rows live in `segment_index` and their words in the external-content FTS5 table
`segment_index_fts` (triggers keep it in step); on PostgreSQL one table with a generated tsvector.
The plugin's own migrations (migrations/, the Alembic branch `search`) make them.

One query language for both: words (all must match), "quoted phrases", and prefix* terms.
Indexing a task replaces its rows, so repeating it is harmless; a deleted task's rows go.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import text

from gateway.db import Database
from gateway.errors import BadRequest
from gateway.payloads import Segment

MARK_START, MARK_END = "[", "]"
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # one word, or the words of a phrase
    prefix: bool = False


# PostgreSQL's English stop words (its tsearch_data/english.stop). PostgreSQL leaves them out of
# its index; both backends leave them out of queries, so they answer alike (and SQLite never
# ranks the half of all segments that contain "the").
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here
there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don should now
""".split())


def parse_query(q: str) -> list[Term]:
    """Words, "phrases" and prefix* terms; punctuation and operators are not passed through;
    terms made only of stop words are left out."""
    terms = []
    for phrase, word in _TOKEN.findall(q):
        if phrase:
            words = tuple(w.lower() for w in _WORD.findall(phrase))
            if words:
                terms.append(Term(words))
        else:
            words = [w.lower() for w in _WORD.findall(word)]
            if not words:
                continue
            prefix = word.endswith("*")
            terms += [Term((w,)) for w in words[:-1]] + [Term((words[-1],), prefix)]
    if not terms:
        raise BadRequest("q: give at least one word to search for")
    searchable = [t for t in terms if not all(w in STOP_WORDS for w in t.words)]
    if not searchable:
        raise BadRequest("q: has only common words (such as 'the', 'of', 'and') that are not indexed; "
                         "add a more specific word")
    return searchable


def fts5_query(terms: list[Term]) -> str:
    parts = []
    for t in terms:
        quoted = '"' + " ".join(t.words) + '"'
        parts.append(quoted + ("*" if t.prefix else ""))
    return " AND ".join(parts)


def tsquery(terms: list[Term]) -> str:
    """A to_tsquery('english', …) string; words are \\w+ only, so nothing needs escaping."""
    parts = []
    for t in terms:
        if len(t.words) == 1:
            parts.append(t.words[0] + (":*" if t.prefix else ""))
        else:
            parts.append("(" + " <-> ".join(t.words) + ")")
    return " & ".join(parts)


_REMOVE = text("DELETE FROM segment_index WHERE task_id = :task_id")


async def index_transcript(db: Database, task_id: str, segments: Iterable[Segment], created_at: datetime) -> int:
    """Replace the task's rows in the index with these segments (an upsert of the whole task)."""
    rows = [{"task_id": task_id, "idx": i, "start_time": s.start_time, "end_time": s.end_time,
             "speaker": s.speaker, "text": s.text, "created_at": _ts(db, created_at)}
            for i, s in enumerate(segments)]
    async with db.session() as s:
        conn = await s.connection()
        await conn.execute(_REMOVE, {"task_id": task_id})
        if rows:
            await conn.execute(text("INSERT INTO segment_index (task_id, idx, start_time, end_time, speaker, text, "
                                    "created_at) VALUES (:task_id, :idx, :start_time, :end_time, :speaker, :text, "
                                    ":created_at)"), rows)
    return len(rows)


async def remove_task(db: Database, task_id: str) -> None:
    """The task's rows gone from the index (none is fine)."""
    async with db.session() as s:
        await (await s.connection()).execute(_REMOVE, {"task_id": task_id})


def _ts(db: Database, dt: datetime) -> Any:
    return dt.isoformat() if db.sqlite else dt  # FTS5 columns are untyped text


@dataclass
class Filters:
    speaker: str | None = None
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    owners: list[str] = field(default_factory=list)  # a hit's task's owner must be each (tenants.owners)


def _where(db: Database, f: Filters, params: dict) -> str:
    # A hit belongs to its task: the task's owner decides who sees it (by its primary key).
    clauses = [f"task_id IN (SELECT id FROM task WHERE owner = :owner_{i})" for i in range(len(f.owners))]
    params.update({f"owner_{i}": name for i, name in enumerate(f.owners)})
    for column, value in (("speaker", f.speaker), ("task_id", f.task_id)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if f.since is not None:
        clauses.append("created_at >= :since")
        params["since"] = _ts(db, f.since)
    if f.until is not None:
        clauses.append("created_at < :until")
        params["until"] = _ts(db, f.until)
    return "".join(f" AND {c}" for c in clauses)


async def search(db: Database, q: str, filters: Filters, limit: int, offset: int) -> dict[str, Any]:
    """A page of matching segments, best first, each with a highlighted snippet."""
    terms = parse_query(q)
    params: dict[str, Any] = {"limit": limit + 1, "offset": offset}
    where = _where(db, filters, params)
    if db.sqlite:
        params["q"] = fts5_query(terms)
        sql = (f"SELECT task_id, idx, start_time, end_time, speaker, segment_index.text AS text, "
               f"snippet(segment_index_fts, 0, '{MARK_START}', '{MARK_END}', '…', 16) AS snippet, "
               f"bm25(segment_index_fts) AS score FROM segment_index_fts "
               f"JOIN segment_index ON segment_index.id = segment_index_fts.rowid "
               f"WHERE segment_index_fts MATCH :q{where} "
               f"ORDER BY score, task_id, idx LIMIT :limit OFFSET :offset")
    else:
        params["q"] = tsquery(terms)
        sql = (f"WITH hits AS (SELECT task_id, idx, start_time, end_time, speaker, text, "
               f"ts_rank(tsv, to_tsquery('english', :q)) AS score FROM segment_index "
               f"WHERE tsv @@ to_tsquery('english', :q){where} "
               f"ORDER BY score DESC, task_id, idx LIMIT :limit OFFSET :offset) "
               f"SELECT hits.*, ts_headline('english', text, to_tsquery('english', :q), "
               f"'StartSel={MARK_START},StopSel={MARK_END},MaxWords=16,MinWords=6,MaxFragments=1') AS snippet "
               f"FROM hits ORDER BY score DESC, task_id, idx")
    async with db.session() as s:
        rows = (await (await s.connection()).execute(text(sql), params)).mappings().all()
    items = [{"task_id": r["task_id"], "start_time": float(r["start_time"]), "end_time": float(r["end_time"]),
              "speaker": r["speaker"], "text": r["text"], "snippet": r["snippet"],
              "score": round(abs(float(r["score"])), 6)} for r in rows[:limit]]
    next_cursor = encode_cursor(offset + limit) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("o"):
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: invalid cursor; use next_cursor from the previous page") from None
