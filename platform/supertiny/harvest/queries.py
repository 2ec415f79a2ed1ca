"""Read-side queries over harvest runs and their samples."""

from typing import Any

import sqlalchemy as sa

from supertiny.errors import NotFoundError
from supertiny.store import HarvestRun, Sample, Store, Task


def run_as_dict(run: HarvestRun) -> dict[str, Any]:
    return {
        "id": run.id, "domain": run.domain, "teacher": run.teacher, "status": run.status,
        "split": run.params.get("split"), "planned": run.n_planned, "done": run.n_done, "passed": run.n_passed,
        "pass_rate": run.n_passed / run.n_done if run.n_done else None,
        "elapsed_s": run.elapsed_s, "s_per_sample": run.elapsed_s / run.n_done if run.n_done else None,
        "params": run.params, "created_at": run.created_at, "finished_at": run.finished_at, "error": run.error,
    }


def list_runs(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        return [run_as_dict(run) for run in session.scalars(sa.select(HarvestRun).order_by(HarvestRun.id))]


def get_run(store: Store, run_id: int) -> HarvestRun:
    with store.session() as session:
        run = session.get(HarvestRun, run_id)
    if run is None:
        raise NotFoundError(f"no harvest run {run_id}", hint="see `supertiny harvest list`")
    return run


def run_status(store: Store, run_id: int) -> dict[str, Any]:
    """The run with pass rate, tokens and latency per category (from the samples themselves)."""
    run = get_run(store, run_id)
    passed = sa.func.sum(sa.case((Sample.verdict == "pass", 1), else_=0))
    query = (
        sa.select(Task.category, sa.func.count(Sample.id), passed, sa.func.avg(Sample.latency_s),
                  sa.func.avg(Sample.completion_tokens), sa.func.avg(Sample.prompt_tokens))
        .join(Task, Task.id == Sample.task_id)
        .where(Sample.run_id == run_id)
        .group_by(Task.category)
        .order_by(Task.category)
    )
    with store.session() as session:
        rows = session.execute(query).all()
    categories = [
        {"category": category, "samples": count, "passed": int(n_passed or 0),
         "pass_rate": (n_passed or 0) / count if count else None, "mean_latency_s": float(latency or 0),
         "mean_completion_tokens": float(completion or 0), "mean_prompt_tokens": float(prompt or 0)}
        for category, count, n_passed, latency, completion, prompt in rows
    ]
    return {**run_as_dict(run), "categories": categories}
