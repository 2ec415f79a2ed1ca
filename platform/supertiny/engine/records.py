"""Query functions on the ``engines`` table: which engine serves which model version, where."""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from supertiny.processes import this_host
from supertiny.store import InferenceEngine, ModelVersion, Store

LIVE_STATUSES = ("starting", "running")


def record_engine(store: Store, version: ModelVersion, *, kind: str, url: str, served_model: str, pid: int,
                  log_path: str, config: dict[str, Any]) -> InferenceEngine:
    with store.session() as session:
        row = InferenceEngine(model_version_id=version.id, kind=kind, url=url, served_model=served_model,
                              host=this_host(), pid=pid, status="starting", log_path=log_path, config=config,
                              started_at=dt.datetime.now(dt.UTC))
        session.add(row)
    return row


def set_status(store: Store, engine_id: int, status: str, error: str | None = None) -> InferenceEngine:
    with store.session() as session:
        row = session.get(InferenceEngine, engine_id)
        row.status = status
        if error is not None:
            row.error = error[:2000]
        if status in ("stopped", "failed"):
            row.stopped_at = dt.datetime.now(dt.UTC)
    return row


def live_engines(store: Store, version_id: int | None = None) -> list[InferenceEngine]:
    """Engines recorded as starting or running (optionally of one model version), newest first."""
    query = sa.select(InferenceEngine).where(InferenceEngine.status.in_(LIVE_STATUSES))
    if version_id is not None:
        query = query.where(InferenceEngine.model_version_id == version_id)
    with store.session() as session:
        return list(session.scalars(query.order_by(InferenceEngine.id.desc())))


def running_engines(store: Store, version_id: int) -> list[InferenceEngine]:
    return [row for row in live_engines(store, version_id) if row.status == "running"]


def list_engines(store: Store, include_ended: bool = False, limit: int = 100) -> list[tuple[InferenceEngine, str]]:
    """(engine, model name) pairs, newest first; ended engines only with ``include_ended``."""
    query = sa.select(InferenceEngine, ModelVersion.name).join(
        ModelVersion, ModelVersion.id == InferenceEngine.model_version_id)
    if not include_ended:
        query = query.where(InferenceEngine.status.in_(LIVE_STATUSES))
    with store.session() as session:
        return [(row, name) for row, name in session.execute(query.order_by(InferenceEngine.id.desc()).limit(limit))]


def latest_engine(store: Store, version_id: int) -> InferenceEngine | None:
    """The newest engine ever recorded for a model version (for its logs)."""
    with store.session() as session:
        return session.scalar(sa.select(InferenceEngine).where(InferenceEngine.model_version_id == version_id)
                              .order_by(InferenceEngine.id.desc()).limit(1))
