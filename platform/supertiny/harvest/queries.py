"""Read-side queries over harvest runs and their samples. Reading the runs first records the ones whose process
is gone as interrupted, so that what a reader sees is true."""

import os
from typing import Any

import sqlalchemy as sa

from supertiny.errors import NotFoundError
from supertiny.processes import alive, this_host
from supertiny.store import HarvestRun, Sample, Store, Task

_PASSED = sa.func.sum(sa.case((Sample.verdict == "pass", 1), else_=0))


def run_as_dict(run: HarvestRun, done: int, passed: int, sample_seconds: float) -> dict[str, Any]:
    """A run with counts taken from its samples: right even while it runs or after a kill -9."""
    return {
        "id": run.id, "domain": run.domain, "teacher": run.teacher, "status": run.status,
        "split": run.params.get("split"), "planned": run.n_planned, "done": done, "passed": passed,
        "pass_rate": passed / done if done else None,
        "elapsed_s": run.elapsed_s, "s_per_sample": sample_seconds / done if done else None,
        "params": run.params, "created_at": run.created_at, "finished_at": run.finished_at, "error": run.error,
    }


def _sample_counts(session, run_ids: list[int]) -> dict[int, tuple[int, int, float]]:
    rows = session.execute(sa.select(Sample.run_id, sa.func.count(Sample.id), _PASSED, sa.func.sum(Sample.latency_s))
                           .where(Sample.run_id.in_(run_ids)).group_by(Sample.run_id)).all()
    return {run_id: (count, int(passed or 0), float(seconds or 0)) for run_id, count, passed, seconds in rows}


def close_orphaned_runs(store: Store) -> list[int]:
    """Record as interrupted every run recorded running by a process of this host that is gone (a kill -9, a
    crash): without it such a run would read as running for ever. Returns their ids."""
    host, closed = this_host(), []
    with store.session() as session:
        for run in session.scalars(sa.select(HarvestRun).where(HarvestRun.status == "running",
                                                                HarvestRun.host == host)):
            if run.pid != os.getpid() and not alive(run.pid):
                run.status = "interrupted"
                run.error = (f"its process (pid {run.pid}) ended without closing the run: killed, or the machine "
                             "stopped; the same command resumes it")
                closed.append(run.id)
    return closed


def list_runs(store: Store) -> list[dict[str, Any]]:
    close_orphaned_runs(store)
    with store.session() as session:
        runs = session.scalars(sa.select(HarvestRun).order_by(HarvestRun.id)).all()
        counts = _sample_counts(session, [run.id for run in runs])
    return [run_as_dict(run, *counts.get(run.id, (0, 0, 0.0))) for run in runs]


def get_run(store: Store, run_id: int) -> HarvestRun:
    close_orphaned_runs(store)
    with store.session() as session:
        run = session.get(HarvestRun, run_id)
    if run is None:
        raise NotFoundError(f"no harvest run {run_id}", hint="see `supertiny harvest list`")
    return run


def run_status(store: Store, run_id: int) -> dict[str, Any]:
    """The run with pass rate, tokens and latency per category (from the samples themselves), and per category
    the best-of-N view: tasks, pass@1 (the share of samples that pass), pass@N (the share of tasks with at least
    one passing sample, with its 95% Wilson interval) and the passing samples a pass-only snapshot keeps."""
    run = get_run(store, run_id)
    query = (
        sa.select(Task.category, sa.func.count(Sample.id), _PASSED, sa.func.avg(Sample.latency_s),
                  sa.func.avg(Sample.completion_tokens), sa.func.avg(Sample.prompt_tokens))
        .join(Task, Task.id == Sample.task_id)
        .where(Sample.run_id == run_id)
        .group_by(Task.category)
        .order_by(Task.category)
    )
    per_task = (sa.select(Task.category, Sample.task_id, _PASSED).join(Task, Task.id == Sample.task_id)
                .where(Sample.run_id == run_id).group_by(Task.category, Sample.task_id))
    with store.session() as session:
        rows = session.execute(query).all()
        tasks = session.execute(per_task).all()
        counts = _sample_counts(session, [run_id]).get(run_id, (0, 0, 0.0))
    categories = [
        {"category": category, "samples": count, "passed": int(n_passed or 0),
         "pass_rate": (n_passed or 0) / count if count else None, "mean_latency_s": float(latency or 0),
         "mean_completion_tokens": float(completion or 0), "mean_prompt_tokens": float(prompt or 0),
         **_best_of_n([int(passed or 0) for task_category, _, passed in tasks if task_category == category])}
        for category, count, n_passed, latency, completion, prompt in rows
    ]
    overall = _best_of_n([int(passed or 0) for _, _, passed in tasks])
    return {**run_as_dict(run, *counts), "categories": categories, **overall}


def _best_of_n(passed_per_task: list[int]) -> dict[str, Any]:
    from supertiny.eval.stats import wilson_interval

    tasks = len(passed_per_task)
    solved = sum(passed > 0 for passed in passed_per_task)
    low, high = wilson_interval(solved, tasks)
    return {"tasks": tasks, "tasks_passed": solved, "pass_at_n": solved / tasks if tasks else None,
            "pass_at_n_interval": [round(low, 4), round(high, 4)], "kept": sum(passed_per_task)}
