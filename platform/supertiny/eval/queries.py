"""Read-side queries over stored evaluations."""

from typing import Any

import sqlalchemy as sa

from supertiny.errors import NotFoundError
from supertiny.store import Evaluation, ModelVersion, Store


def evaluation_as_dict(evaluation: Evaluation, model_name: str, with_records: bool = False) -> dict[str, Any]:
    details = dict(evaluation.details or {})
    records = details.pop("records", [])
    return {"id": evaluation.id, "model": model_name, "domain": evaluation.domain, "split": evaluation.split,
            "n_tasks": evaluation.n_tasks, "accuracy": evaluation.accuracy, "invalid_rate": evaluation.invalid_rate,
            "mean_latency_s": evaluation.mean_latency_s, "tokens_per_request": evaluation.tokens_per_request,
            "size_bytes": evaluation.size_bytes, "per_category": evaluation.per_category,
            "config": details.get("config"), "created_at": evaluation.created_at,
            **({"records": records} if with_records else {})}


def list_evaluations(store: Store, model: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
    query = (sa.select(Evaluation, ModelVersion.name).join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
             .order_by(Evaluation.id))
    if model:
        query = query.where(ModelVersion.name == model)
    if domain:
        query = query.where(Evaluation.domain == domain)
    with store.session() as session:
        return [evaluation_as_dict(evaluation, name) for evaluation, name in session.execute(query).all()]


def evaluation_by_id(store: Store, evaluation_id: int, with_records: bool = False) -> dict[str, Any]:
    with store.session() as session:
        row = session.execute(sa.select(Evaluation, ModelVersion.name)
                              .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
                              .where(Evaluation.id == evaluation_id)).first()
    if row is None:
        raise NotFoundError(f"no evaluation {evaluation_id}")
    return evaluation_as_dict(row[0], row[1], with_records)


def is_guided(evaluation: Evaluation) -> bool:
    """Whether the evaluation decoded under the tools' JSON Schemas (``eval run --guided``)."""
    return bool(((evaluation.details or {}).get("config") or {}).get("guided"))


def latest_evaluation(store: Store, model: str, domain: str | None = None, split: str | None = None,
                      with_records: bool = False, guided: bool | None = None) -> dict[str, Any]:
    """The newest evaluation of ``model`` (optionally on one domain and split, and only guided or only free
    ones)."""
    query = (sa.select(Evaluation, ModelVersion.name).join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
             .where(ModelVersion.name == model).order_by(Evaluation.id.desc()))
    if domain:
        query = query.where(Evaluation.domain == domain)
    if split:
        query = query.where(Evaluation.split == split)
    if guided is None:
        query = query.limit(1)
    with store.session() as session:
        row = next((row for row in session.execute(query) if guided is None or is_guided(row[0]) == guided), None)
    if row is None:
        where = " on ".join(filter(None, [domain, split]))
        decoded = "" if guided is None else " guided" if guided else " free"
        hint = f"run `supertiny eval run --model {model} --domain ...{' --guided' if guided else ''}`"
        if guided is False:
            hint += f" ({model}:guided names its guided evaluations)"
        raise NotFoundError(f"no{decoded} evaluation of {model!r}{' on ' + where if where else ''}", hint=hint)
    return evaluation_as_dict(row[0], row[1], with_records)


def compared_entry(entry: str) -> tuple[str, bool]:
    """``MODEL`` (its free evaluations) or ``MODEL:guided`` (its guided ones), as ``eval compare`` takes them."""
    name, sep, decoding = entry.rpartition(":")
    return (name, True) if sep and decoding == "guided" else (entry, False)


def compare(store: Store, models: list[str], domain: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Per-category accuracy of each model's latest evaluation side by side, each with its 95% Wilson interval,
    and each model after the first tested against the first on the tasks both answered (exact McNemar). An entry
    ``MODEL`` takes the model's latest free evaluation, ``MODEL:guided`` its latest guided one; either is named
    by its entry."""
    from supertiny.eval.stats import wilson_interval

    evaluations = []
    for entry in models:
        name, guided = compared_entry(entry)
        evaluations.append({**latest_evaluation(store, name, domain, split, with_records=True, guided=guided),
                            "model": entry})
    categories = sorted({category for evaluation in evaluations for category in evaluation["per_category"]})
    rows = []
    for category in [*categories, "overall"]:
        row: dict[str, Any] = {"category": category}
        for evaluation in evaluations:
            stats = ({"accuracy": evaluation["accuracy"], "n": evaluation["n_tasks"]} if category == "overall"
                     else evaluation["per_category"].get(category))
            name = evaluation["model"]
            row[name] = stats["accuracy"] if stats else None
            row[f"n:{name}"] = stats["n"] if stats else 0
            if stats:
                low, high = wilson_interval(round(stats["accuracy"] * stats["n"]), stats["n"])
                row[f"interval:{name}"] = [round(low, 4), round(high, 4)]
        rows.append(row)
    paired = [paired_test(evaluations[0], evaluation) for evaluation in evaluations[1:]]
    for evaluation in evaluations:
        evaluation.pop("records", None)
    return {"models": [e["model"] for e in evaluations], "rows": rows, "paired": paired, "evaluations": evaluations}


def paired_test(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` against ``baseline`` on the tasks both evaluations judged (matched by content): the accuracy
    difference there and the exact McNemar p-value of the tasks only one of them got right."""
    from supertiny.eval.stats import mcnemar_p

    first = {record["task_hash"]: bool(record["correct"]) for record in baseline.get("records", [])}
    second = {record["task_hash"]: bool(record["correct"]) for record in other.get("records", [])}
    shared = sorted(set(first) & set(second))
    only_other = sum(second[task] and not first[task] for task in shared)
    only_baseline = sum(first[task] and not second[task] for task in shared)
    difference = (only_other - only_baseline) / len(shared) if shared else None
    return {"model": other["model"], "baseline": baseline["model"], "shared_tasks": len(shared),
            "only_model": only_other, "only_baseline": only_baseline,
            "difference": None if difference is None else round(difference, 4),
            "p_value": round(mcnemar_p(only_other, only_baseline), 6)}
