"""Create and read dataset snapshots. A snapshot copies its records in, so it never changes."""

import dataclasses
from typing import Any

import sqlalchemy as sa

from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.harvest.agreement import answer_key
from supertiny.store import Dataset, DatasetItem, HarvestRun, RequestLog, Sample, Store, Task


@dataclasses.dataclass(frozen=True)
class SnapshotSource:
    runs: tuple[int, ...] = ()
    logs_route: str | None = None
    verdict: str | None = None  # keep only samples with this verdict (usually "pass")
    splits: tuple[str, ...] = ()  # keep only tasks of these splits
    served_by: str | None = None  # for logs: keep only answers from this model
    distinct: bool = False  # for runs: keep one of the samples of a task that give the same answer

    def validate(self) -> None:
        if bool(self.runs) == bool(self.logs_route):
            raise InvalidInputError("give either --run (one or more harvest runs) or --logs ROUTE")
        if self.distinct and not self.runs:
            raise InvalidInputError("--distinct applies to the samples of harvest runs (--run)")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version``."""
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        raise InvalidInputError(f"bad dataset reference {ref!r}: expected NAME or NAME@VERSION")
    return name, int(version) if version else None


def _records_from_runs(session, source: SnapshotSource) -> tuple[str | None, list[dict[str, Any]]]:
    runs = session.scalars(sa.select(HarvestRun).where(HarvestRun.id.in_(source.runs))).all()
    missing = set(source.runs) - {run.id for run in runs}
    if missing:
        raise NotFoundError(f"no harvest run {sorted(missing)[0]}", hint="see `supertiny harvest list`")
    domains = {run.domain for run in runs}
    if len(domains) > 1:
        raise InvalidInputError(f"runs from several domains ({', '.join(sorted(domains))}) in one snapshot")
    query = (sa.select(Sample, Task).join(Task, Task.id == Sample.task_id)
             .where(Sample.run_id.in_(source.runs)).order_by(Sample.run_id, Task.id, Sample.sample_index))
    if source.verdict:
        query = query.where(Sample.verdict == source.verdict)
    if source.splits:
        query = query.where(Task.split.in_(source.splits))
    records, seen = [], set()
    for sample, task in session.execute(query).all():
        if source.distinct:
            key = (task.id, sample.verdict, answer_key(sample))
            if key in seen:
                continue
            seen.add(key)
        records.append({"split": task.split, "category": task.category, "task_id": task.id, "sample_id": sample.id,
                        "messages": sample.trajectory, "tools": task.tools, "verdict": sample.verdict})
    return domains.pop(), records


def _records_from_logs(session, source: SnapshotSource) -> list[dict[str, Any]]:
    query = (sa.select(RequestLog).where(RequestLog.route == source.logs_route, RequestLog.status == 200,
                                         RequestLog.response.is_not(None)).order_by(RequestLog.id))
    if source.served_by:
        query = query.where(RequestLog.served_by == source.served_by)
    records = []
    for log in session.scalars(query):
        choices = (log.response or {}).get("choices") or []
        if not choices:
            continue
        answer = {key: value for key, value in choices[0].get("message", {}).items() if value is not None}
        records.append({"split": "train", "category": (log.detail or {}).get("category"),
                        "request_log_id": log.id, "messages": [*log.request.get("messages", []), answer],
                        "tools": log.request.get("tools") or [], "verdict": None})
    return records


def create_snapshot(store: Store, name: str, source: SnapshotSource, note: str | None = None) -> Dataset:
    """Write a new version of dataset ``name`` from harvest runs or request logs."""
    source.validate()
    if not name or "@" in name:
        raise InvalidInputError(f"bad dataset name {name!r}")
    with store.session() as session:
        if source.runs:
            domain, records = _records_from_runs(session, source)
        else:
            domain, records = None, _records_from_logs(session, source)
        if not records:
            raise InvalidInputError("the snapshot would be empty: no sample or log matches the filters")
        latest = session.scalar(sa.select(sa.func.max(Dataset.version)).where(Dataset.name == name)) or 0
        dataset = Dataset(name=name, version=latest + 1, domain=domain, n_items=len(records), note=note,
                          source={key: list(value) if isinstance(value, tuple) else value
                                  for key, value in dataclasses.asdict(source).items()})
        session.add(dataset)
        session.flush()
        session.add_all(DatasetItem(dataset_id=dataset.id, position=position, **record)
                        for position, record in enumerate(records))
    return dataset


def get_snapshot(store: Store, ref: str) -> Dataset:
    """The dataset ``name`` (latest version) or ``name@version``."""
    name, version = parse_ref(ref)
    query = sa.select(Dataset).where(Dataset.name == name)
    query = query.where(Dataset.version == version) if version else query.order_by(Dataset.version.desc())
    with store.session() as session:
        dataset = session.scalars(query.limit(1)).first()
    if dataset is None:
        raise NotFoundError(f"no dataset {ref!r}", hint="see `supertiny data list`")
    return dataset


def snapshot_items(store: Store, dataset: Dataset, split: str | None = None) -> list[DatasetItem]:
    query = sa.select(DatasetItem).where(DatasetItem.dataset_id == dataset.id).order_by(DatasetItem.position)
    if split:
        query = query.where(DatasetItem.split == split)
    with store.session() as session:
        return list(session.scalars(query))


def list_snapshots(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        datasets = session.scalars(sa.select(Dataset).order_by(Dataset.name, Dataset.version)).all()
        splits = dict(((dataset_id, split), count) for dataset_id, split, count in session.execute(
            sa.select(DatasetItem.dataset_id, DatasetItem.split, sa.func.count()).group_by(
                DatasetItem.dataset_id, DatasetItem.split)))
    return [snapshot_as_dict(dataset, {split: count for (dataset_id, split), count in splits.items()
                                       if dataset_id == dataset.id}) for dataset in datasets]


def snapshot_as_dict(dataset: Dataset, splits: dict[str, int] | None = None) -> dict[str, Any]:
    return {"name": dataset.name, "version": dataset.version, "ref": f"{dataset.name}@{dataset.version}",
            "domain": dataset.domain, "items": dataset.n_items, "splits": splits or {},
            "source": dataset.source, "note": dataset.note, "created_at": dataset.created_at}
