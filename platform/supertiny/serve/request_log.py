"""The request log writer: a queue and one background thread that writes ``request_logs`` in batches.

- ``submit`` never blocks a request: it puts the entry on a bounded queue (when the queue is full the
  entry is dropped and counted; the queue holds ``max_pending`` entries, minutes of traffic).
- A failed write keeps its batch and retries with exponential backoff, so a database that is briefly
  unavailable (restarting, failing over, locked) loses nothing.
- Each request is written exactly once: a retried batch first skips the request ids already stored
  (a commit whose acknowledgement was lost), and ``request_id`` is unique in the table.
- Connection-level failures are retried for as long as they last; a batch that keeps failing for
  another reason is written row by row and the rows the database refuses for their data (poison)
  are dropped and counted rather than blocking the log forever.
- ``close`` flushes what is queued (bounded by a timeout) when the server shuts down.
"""

import dataclasses
import datetime as dt
import json
import logging
import queue
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from supertiny.store.engine import Store
from supertiny.store.tables import RequestLog

log = logging.getLogger("supertiny.serve.request_log")

_JSON_FIELDS = ("request", "response", "detail")
MAX_LOGGED_JSON_BYTES = 64 * 1024  # one JSON field of a row; larger ones are stored truncated, flagged
_HEAD_CHARS = 4096


def is_transient(exc: BaseException) -> bool:
    """The database is away (connection refused or lost, locked, pool exhausted, schema not there yet),
    as opposed to refusing one row's data."""
    from sqlalchemy import exc as sa_exc

    from supertiny.errors import DatabaseError

    transient = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
                 sa_exc.ProgrammingError, DatabaseError, ConnectionError, TimeoutError)
    return isinstance(exc, transient)


@dataclasses.dataclass
class LogEntry:
    """One row of ``request_logs``."""

    request_id: str
    route: str
    request: dict[str, Any]
    created_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    response: dict[str, Any] | None = None
    policy_id: int | None = None
    policy_version: int | None = None
    api_key_id: int | None = None
    served_by: str | None = None
    confidence: float | None = None
    escalated: bool = False
    llm_token_share: float | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 200
    error: str | None = None
    detail: dict[str, Any] | None = None

    def row(self, max_json_bytes: int = MAX_LOGGED_JSON_BYTES) -> dict[str, Any]:
        """The entry as insert values: JSON fields made plain JSON (anything else becomes a string), and a field
        larger than ``max_json_bytes`` stored as ``{"truncated": true, "bytes": N, "head": "..."}``."""
        values = dataclasses.asdict(self)
        for field in _JSON_FIELDS:
            if values[field] is not None:
                values[field] = _bounded_json(values[field], max_json_bytes)
        values["route"] = (values["route"] or "")[:200]
        values["served_by"] = values["served_by"][:200] if values["served_by"] else None
        values["error"] = values["error"][:4000] if values["error"] else None
        return values

    def sanitised_row(self) -> dict[str, Any]:
        """The row with its JSON fields reduced to flagged text heads: what is stored when the database refuses
        the row as sent (a value it cannot hold), so that no request goes unlogged."""
        values = self.row()
        for field in _JSON_FIELDS:
            if values[field] is not None:
                text = json.dumps(values[field], default=str, ensure_ascii=True)
                values[field] = {"sanitised": True, "bytes": len(text), "head": text[:_HEAD_CHARS]}
        return values


def _bounded_json(value: Any, max_bytes: int) -> Any:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):  # a cycle or a structure too deep to encode
        return {"truncated": True, "bytes": None, "head": repr(value)[:_HEAD_CHARS]}
    if len(text) > max_bytes:
        return {"truncated": True, "bytes": len(text), "head": text[:_HEAD_CHARS]}
    return json.loads(text)


@dataclasses.dataclass
class WriterStats:
    submitted: int = 0
    written: int = 0
    dropped: int = 0  # queue full: never written
    rejected: int = 0  # poison rows the database refused while it accepted others
    failed_writes: int = 0  # attempts that failed and were retried
    last_error: str | None = None


class RequestLogWriter:
    """Batched, retrying, non-blocking writer of request logs into ``store``."""

    def __init__(self, store: Store, *, batch_size: int = 200, flush_interval_s: float = 0.2,
                 max_pending: int = 100_000, max_backoff_s: float = 5.0, split_after: int = 3):
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self.split_after = split_after
        self.stats = WriterStats()
        self._queue: queue.Queue[LogEntry] = queue.Queue(maxsize=max_pending)
        self._batch: list[LogEntry] = []
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._outstanding = 0  # submitted and not yet written or given up on
        self._count_lock = threading.Lock()

    # --- producer side --------------------------------------------------------------------------

    def start(self) -> "RequestLogWriter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="supertiny-request-log", daemon=True)
            self._thread.start()
        return self

    def submit(self, entry: LogEntry) -> bool:
        """Queue ``entry`` for writing; False (and counted as dropped) when the queue is full."""
        with self._count_lock:
            self.stats.submitted += 1
            try:
                self._queue.put_nowait(entry)
                self._outstanding += 1
                return True
            except queue.Full:
                self.stats.dropped += 1
        log.warning("request log queue full: dropped request %s", entry.request_id)
        return False

    @property
    def pending(self) -> int:
        """Entries submitted but not yet written."""
        return self._outstanding

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every entry submitted so far is written (or given up on); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self.pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (retrying up to ``timeout_s``), then stop the thread."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 1)
            self._thread = None
        if self.pending:
            log.error("request log: %d entries could not be written before shutdown (%s)", self.pending,
                      self.stats.last_error)

    # --- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        attempts = 0
        while True:
            self._fill()
            if not self._batch:
                if self._stopping.is_set() and self._queue.empty():
                    return
                continue
            try:
                self._write(self._batch, dedupe=attempts > 0)
            except Exception as exc:
                attempts += 1
                self.stats.failed_writes += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                log.warning("request log write failed (attempt %d, %d rows kept): %s", attempts, len(self._batch),
                            self.stats.last_error)
                if attempts >= self.split_after and not is_transient(exc) and self._write_one_by_one():
                    attempts = 0
                elif self._give_up():
                    return
                else:
                    self._sleep(min(self.max_backoff_s, 0.05 * 2 ** min(attempts, 10)))
                continue
            self._done(len(self._batch), 0)
            attempts = 0

    def _fill(self) -> None:
        """Top the current batch up from the queue, waiting up to the flush interval for a first entry."""
        if not self._batch:
            try:
                wait = 0.01 if self._stopping.is_set() else self.flush_interval_s
                self._batch.append(self._queue.get(timeout=wait))
            except queue.Empty:
                with self._idle:
                    self._idle.notify_all()
                return
        while len(self._batch) < self.batch_size:
            try:
                self._batch.append(self._queue.get_nowait())
            except queue.Empty:
                break

    def _insert(self, rows: list[dict[str, Any]], dedupe: bool) -> None:
        with self.store.session() as session:
            if dedupe:
                ids = [row["request_id"] for row in rows]
                stored = set(session.scalars(sa.select(RequestLog.request_id).where(RequestLog.request_id.in_(ids))))
                rows = [row for row in rows if row["request_id"] not in stored]
            if rows:
                session.execute(sa.insert(RequestLog), rows)

    def _write(self, batch: list[LogEntry], dedupe: bool, sanitised: bool = False) -> None:
        unique = {entry.request_id: entry for entry in batch}  # one row per request, whatever was submitted
        rows = [entry.sanitised_row() if sanitised else entry.row() for entry in unique.values()]
        try:
            self._insert(rows, dedupe)
        except IntegrityError:
            if dedupe:
                raise
            self._insert(rows, dedupe=True)  # some ids are already stored: write only the others

    def _write_one_by_one(self) -> bool:
        """After repeated failures that are not the database being away: write row by row, dropping the
        rows the database refuses (poison). True when the batch is done with; False when the database
        went away meanwhile (the rows not yet written stay in the batch)."""
        written, rejected, kept = [], [], []
        for position, entry in enumerate(self._batch):
            try:
                try:
                    self._write([entry], dedupe=True)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    log.warning("request log: the database refuses the row of request %s as sent (%s); storing "
                                "it sanitised", entry.request_id, _first_line(exc))
                    self._write([entry], dedupe=True, sanitised=True)
                written.append(entry)
            except Exception as exc:
                if is_transient(exc):
                    kept = self._batch[position:]
                    break
                log.error("request log: the database refuses even the sanitised row of request %s (%s); dropped",
                          entry.request_id, _first_line(exc))
                rejected.append(entry)
        self._batch = [*written, *rejected]
        self._done(len(written), len(rejected))
        self._batch = kept
        return not kept

    def _done(self, written: int, rejected: int) -> None:
        with self._count_lock:
            self.stats.written += written
            self.stats.rejected += rejected
            self._outstanding -= len(self._batch)
        self._batch = []
        with self._idle:
            self._idle.notify_all()

    def _give_up(self) -> bool:
        """True once closing and past the close deadline: the remaining entries are lost (and logged)."""
        return self._stopping.is_set() and self._deadline is not None and time.monotonic() > self._deadline

    def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set() and self._deadline is not None:
            seconds = max(0.0, min(seconds, self._deadline - time.monotonic()))
        time.sleep(seconds)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
