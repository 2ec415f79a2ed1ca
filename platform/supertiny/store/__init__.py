"""The SQL store: typed tables, engines and sessions, migrations and query functions."""

from supertiny.store.base import Base
from supertiny.store.engine import Store, check_connection, get_engine
from supertiny.store.tables import (
    ApiKey,
    Dataset,
    DatasetItem,
    Evaluation,
    HarvestRun,
    InferenceEngine,
    ModelVersion,
    RequestLog,
    RoutingPolicy,
    Sample,
    Task,
)

__all__ = [
    "ApiKey",
    "Base",
    "Dataset",
    "DatasetItem",
    "Evaluation",
    "HarvestRun",
    "InferenceEngine",
    "ModelVersion",
    "RequestLog",
    "RoutingPolicy",
    "Sample",
    "Store",
    "Task",
    "check_connection",
    "get_engine",
]
