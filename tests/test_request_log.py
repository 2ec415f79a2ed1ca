"""The request log writer: batched, never blocking, exactly once, and it survives a database that is
briefly unavailable."""

import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from supertiny.serve.request_log import LogEntry, RequestLogWriter
from supertiny.store.tables import RequestLog


def entries(count: int, route: str = "weather") -> list[LogEntry]:
    return [LogEntry(request_id=f"chatcmpl-{uuid.uuid4().hex}", route=route, request={"model": route, "n": index},
                     response={"ok": True}, served_by="small", detail={"role": "tiny"}) for index in range(count)]


def stored_ids(store) -> list[str]:
    with store.session() as session:
        return list(session.scalars(sa.select(RequestLog.request_id)))


def test_every_entry_is_written_once_in_batches(store):
    writer = RequestLogWriter(store, batch_size=16, flush_interval_s=0.01).start()
    batch = entries(100)
    for entry in batch:
        assert writer.submit(entry)
    assert writer.flush(20)
    writer.close()
    ids = stored_ids(store)
    assert sorted(ids) == sorted(entry.request_id for entry in batch)
    assert writer.stats.written == 100 and writer.stats.dropped == 0


def test_failed_writes_keep_their_batch_and_retry(sqlite_store, monkeypatch):
    writer = RequestLogWriter(sqlite_store, batch_size=8, flush_interval_s=0.01, max_backoff_s=0.05, split_after=100)
    real_insert = writer._insert
    failures = {"left": 5}

    def flaky(rows, dedupe):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        real_insert(rows, dedupe)

    monkeypatch.setattr(writer, "_insert", flaky)
    writer.start()
    batch = entries(30)
    for entry in batch:
        writer.submit(entry)
    assert writer.flush(20)
    writer.close()
    assert sorted(stored_ids(sqlite_store)) == sorted(entry.request_id for entry in batch)
    assert writer.stats.failed_writes == 5 and "database is locked" in writer.stats.last_error


def test_a_commit_whose_acknowledgement_was_lost_is_not_written_twice(sqlite_store, monkeypatch):
    writer = RequestLogWriter(sqlite_store, batch_size=50, flush_interval_s=0.01, max_backoff_s=0.01)
    real_insert = writer._insert
    state = {"lost": False}

    def commits_then_fails(rows, dedupe):
        real_insert(rows, dedupe)
        if not state["lost"]:
            state["lost"] = True
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(writer, "_insert", commits_then_fails)
    writer.start()
    batch = entries(20)
    for entry in batch:
        writer.submit(entry)
    assert writer.flush(20)
    writer.close()
    ids = stored_ids(sqlite_store)
    assert len(ids) == len(set(ids)) == 20


def test_a_poison_row_is_dropped_and_the_rest_written(sqlite_store, monkeypatch):
    writer = RequestLogWriter(sqlite_store, batch_size=10, flush_interval_s=0.01, max_backoff_s=0.01, split_after=2)
    real_insert = writer._insert

    def rejects_poison(rows, dedupe):
        if any(row["route"] == "poison" for row in rows):
            raise sa.exc.DataError("INSERT", {}, Exception("value out of range"))
        real_insert(rows, dedupe)

    monkeypatch.setattr(writer, "_insert", rejects_poison)
    writer.start()
    batch = entries(5) + entries(1, route="poison") + entries(4)
    for entry in batch:
        writer.submit(entry)
    assert writer.flush(20)
    writer.close()
    assert len(stored_ids(sqlite_store)) == 9 and writer.stats.rejected == 1


def test_a_row_refused_for_its_json_is_stored_sanitised_and_a_huge_body_truncated(sqlite_store, monkeypatch):
    from supertiny.store.tables import RequestLog

    writer = RequestLogWriter(sqlite_store, batch_size=10, flush_interval_s=0.01, max_backoff_s=0.01, split_after=2)
    real_insert = writer._insert

    def refuses_odd_values(rows, dedupe):
        if any(isinstance(row["request"], dict) and "odd" in row["request"] for row in rows):
            raise sa.exc.DataError("INSERT", {}, Exception("unsupported Unicode escape sequence"))
        real_insert(rows, dedupe)

    monkeypatch.setattr(writer, "_insert", refuses_odd_values)
    writer.start()
    odd, huge = entries(1)[0], entries(1)[0]
    odd.request = {"odd": "\u0000"}
    huge.request = {"messages": [{"role": "user", "content": "x" * 300_000}]}
    for entry in [*entries(3), odd, huge]:
        writer.submit(entry)
    assert writer.flush(20)
    writer.close()
    assert writer.stats.rejected == 0 and len(stored_ids(sqlite_store)) == 5
    with sqlite_store.session() as session:
        stored = {row.request_id: row.request for row in session.scalars(sa.select(RequestLog))}
    assert stored[odd.request_id]["sanitised"] is True and "odd" in stored[odd.request_id]["head"]
    assert stored[huge.request_id]["truncated"] is True and stored[huge.request_id]["bytes"] > 300_000
    assert len(stored[huge.request_id]["head"]) == 4096


def test_submit_never_blocks_and_counts_what_it_drops(sqlite_store):
    writer = RequestLogWriter(sqlite_store, max_pending=10)  # not started: nothing drains the queue
    started = time.perf_counter()
    accepted = [writer.submit(entry) for entry in entries(25)]
    assert time.perf_counter() - started < 0.5
    assert accepted.count(True) == 10 and writer.stats.dropped == 15
    writer.start()
    writer.close(timeout_s=10)  # close flushes what was queued
    assert len(stored_ids(sqlite_store)) == 10 and writer.pending == 0


def test_close_writes_what_is_queued(sqlite_store):
    writer = RequestLogWriter(sqlite_store, batch_size=5, flush_interval_s=5.0).start()
    for entry in entries(12):
        writer.submit(entry)
    writer.close(timeout_s=10)
    assert len(stored_ids(sqlite_store)) == 12


@pytest.mark.postgres
def test_postgres_briefly_refusing_connections_loses_nothing(database_url):
    """The database stops accepting connections (and drops the open ones) for a second, then returns."""
    from conftest import POSTGRES_ADMIN_URL
    from supertiny.store.engine import Store

    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    name = sa.engine.make_url(database_url).database
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def admin_sql(statement: str) -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(statement))

    store = Store(database_url)
    writer = RequestLogWriter(store, batch_size=10, flush_interval_s=0.02, max_backoff_s=0.2).start()
    first, during, after = entries(20), entries(40), entries(20)
    for entry in first:
        writer.submit(entry)
    assert writer.flush(20)
    admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    stop = threading.Event()

    def traffic() -> None:
        for entry in during:
            writer.submit(entry)
            time.sleep(0.02)
        stop.set()

    thread = threading.Thread(target=traffic)
    thread.start()
    time.sleep(1.0)
    assert writer.stats.failed_writes > 0  # it noticed the outage ...
    admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    thread.join()
    for entry in after:
        writer.submit(entry)
    assert writer.flush(30)
    writer.close()
    admin.dispose()
    ids = stored_ids(store)  # ... and lost nothing, duplicated nothing
    assert sorted(ids) == sorted(entry.request_id for entry in first + during + after)
