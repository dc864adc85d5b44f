"""gateway/bulk.py on both backends: rows go in (and updates land) as SQLAlchemy would have
written them (columns' bind processors, scalar defaults for columns left out); on PostgreSQL
as arrays through unnest, a transaction's writes in one statement."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine, event, select
from sqlmodel import Session

from gateway import bulk
from gateway.db import sync_url, upgrade
from gateway.models import CallbackReceipt, Delivery, DeliveryStatus, Task, TaskStatus


def test_bulk_rows_read_back_like_orm_rows(database_url):
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    when = datetime(2026, 11, 25, 13, 14, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    try:
        with Session(engine) as s:
            s.add(Task(id="t1", url="http://example.com/a.wav", model="whisper-1", provider="local",
                       status=TaskStatus.PROCESSING))
            s.commit()
        with engine.begin() as conn, bulk.writes(conn) as w:
            # status and attempts left out: their defaults; every row shares one timestamp
            w.insert_dicts(Delivery.__table__, [
                {"id": f"d{i}", "task_id": "t1", "target": f"https://hook.example/{i}?q='x'\t\\N",
                 "kind": "webhook", "next_attempt_at": when, "created_at": when, "updated_at": when}
                for i in range(3)])
            w.insert_rows(CallbackReceipt.__table__,
                          ("provider", "external_task_id", "task_id", "body_sha256", "outcome", "received_at"),
                          [("local", None, "t1", "-", "duplicate", when), ("local", "x", None, "-", "unknown_task", when)])
        with Session(engine) as s:
            deliveries = s.exec(select(Delivery).order_by(Delivery.id)).scalars().all()
            receipts = s.exec(select(CallbackReceipt).order_by(CallbackReceipt.id)).scalars().all()
    finally:
        engine.dispose()
    assert [(d.id, d.status, d.attempts, d.target) for d in deliveries] == [
        (f"d{i}", DeliveryStatus.PENDING, 0, f"https://hook.example/{i}?q='x'\t\\N") for i in range(3)]
    assert {d.next_attempt_at for d in deliveries} == {when}  # the same instant, aware, back in UTC
    assert deliveries[0].next_attempt_at.utcoffset() == timedelta(0)
    assert [(r.id is not None, r.external_task_id, r.task_id, r.outcome, r.received_at) for r in receipts] == [
        (True, None, "t1", "duplicate", when), (True, "x", None, "unknown_task", when)]


def test_bulk_updates_set_each_row_by_its_key(database_url):
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    when = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=-5)))
    try:
        with Session(engine) as s:
            s.add_all([Task(id=f"t{i}", url="http://example.com/a.wav", model="whisper-1", provider="local",
                            status=TaskStatus.PROCESSING, lease_owner="w1", progress=0.5) for i in range(3)])
            s.commit()
        with engine.begin() as conn, bulk.writes(conn) as w:
            w.update_dicts(Task.__table__, "id", [
                {"id": f"t{i}", "status": TaskStatus.COMPLETED, "result_json": '{"text": "it\'s \\"quoted\\"\t"}',
                 "lease_owner": None, "progress": 1.0, "finished_at": when} for i in (0, 2)])
        with Session(engine) as s:
            tasks = s.exec(select(Task).order_by(Task.id)).scalars().all()
    finally:
        engine.dispose()
    assert [(t.id, t.status, t.lease_owner, t.progress) for t in tasks] == [
        ("t0", "completed", None, 1.0), ("t1", "processing", "w1", 0.5), ("t2", "completed", None, 1.0)]
    assert tasks[0].result_json == '{"text": "it\'s \\"quoted\\"\t"}' and tasks[1].result_json is None
    assert tasks[0].finished_at == when and tasks[1].finished_at is None


def test_no_rows_is_no_statement(database_url):
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    sent = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *rest: sent.append(statement))
    try:
        with engine.begin() as conn, bulk.writes(conn) as w:
            w.insert_dicts(Delivery.__table__, [])
            w.insert_rows(CallbackReceipt.__table__, ("provider",), [])
            w.update_dicts(Task.__table__, "id", [])
    finally:
        engine.dispose()
    assert sent == []


def test_time_ordered_ids_are_uuid7_and_sort_by_creation():
    import time
    import uuid

    from gateway.models import time_ordered_id

    first = [time_ordered_id() for _ in range(100)]
    time.sleep(0.002)
    later = time_ordered_id()
    assert len(set(first)) == 100 and all(len(i) == 32 and i == i.lower() for i in first)
    assert {uuid.UUID(i).version for i in first} == {7} and {uuid.UUID(i).variant for i in first} == {uuid.RFC_4122}
    assert max(first) < later  # a later millisecond sorts after every id of an earlier one
    assert abs(int(later[:12], 16) / 1000 - time.time()) < 1


def test_locked_rows_read_back_as_sqlalchemy_would(database_url):
    upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    when = datetime(2026, 11, 26, 3, 4, 5, 678901, tzinfo=timezone.utc)
    try:
        with Session(engine) as s:
            s.add_all([Task(id=f"t{i}", url="http://example.com/a.wav", model="whisper-1", provider="local",
                            speaker=i == 1, started_at=when if i else None) for i in range(3)])
            s.commit()
        with engine.begin() as conn:
            rows = bulk.locked_rows(conn, Task.__table__, ("id", "speaker", "started_at", "callback_url"),
                                    ["t2", "t0", "t1", "missing"])
            assert bulk.locked_rows(conn, Task.__table__, ("id",), []) == []
    finally:
        engine.dispose()
    assert [(r.id, r.speaker, r.started_at, r.callback_url) for r in rows] == [
        ("t0", False, None, None), ("t1", True, when, None), ("t2", False, when, None)]  # in key order
    assert all(type(r.speaker) is bool for r in rows) and rows[1].started_at.utcoffset() == timedelta(0)
