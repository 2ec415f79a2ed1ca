"""Harvest benchmark: the teacher answering a domain's train tasks, one sample or N a task, on several engines,
with free or guided decoding.

    python -m bench.harvest --teacher qwen2.5-coder-1.5b-instruct --tasks 40 --samples 1,8 --engines vllm,batched
    python -m bench.harvest --teacher qwen2.5-coder-1.5b-instruct --tasks 100 --samples 1,4 --engines vllm \
        --decoding free,guided

For each engine, decoding and samples-per-task it runs ``supertiny harvest`` (the domain's prompt, the same
temperature for every run so that only N or the decoding differs) into a scratch store and reports wall time,
tasks and samples per minute, generated tokens per second, tokens per answer, answers cut at the token budget,
the pass rate (pass@1 over every sample) and the share of tasks with at least one passing sample (pass@N),
overall and per category with 95% Wilson intervals. Guided runs are compared with the free run of the same
engine and N on the same tasks by an exact McNemar test. In-process engines run ``--in-process-samples`` with
free decoding only (guided decoding needs an engine).

Writes ``bench/results/harvest-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from supertiny.eval.stats import format_p_value

from bench.engines import ENGINES, engine_model, machine, model_dir, parse_decodings, parse_engines, scratch
from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results"


def harvest_once(store: Any, name: str, args: argparse.Namespace, samples: int, guided: bool) -> dict[str, Any]:
    import sqlalchemy as sa
    from supertiny.harvest.runner import HarvestConfig, run_harvest
    from supertiny.prototype.teacher import open_chat_model
    from supertiny.store import Sample, Task

    config = HarvestConfig(domain=args.domain, teacher=name, samples_per_task=samples, temperature=args.temperature,
                           limit=args.tasks, max_new_tokens=args.max_new_tokens, guided=guided)
    opened: list[Any] = []

    def open_teacher() -> Any:
        opened.append(open_chat_model(store, name))
        return opened[-1]

    result = run_harvest(store, config, open_teacher)
    with store.session() as session:
        rows = session.execute(sa.select(Sample.task_id, Task.category, Sample.verdict, Sample.completion_tokens)
                               .join(Task, Task.id == Sample.task_id)
                               .where(Sample.run_id == result.run_id)).all()
    minutes = result.elapsed_s / 60
    tokens = sum(row.completion_tokens or 0 for row in rows)
    categories = sorted({row.category for row in rows})
    return {
        "samples_per_task": samples, "decoding": "guided" if guided else "free", "samples": result.done,
        "wall_s": round(result.elapsed_s, 1), "tasks_per_min": round(len({row.task_id for row in rows}) / minutes, 2),
        "samples_per_min": round(result.done / minutes, 2), "completion_tokens": tokens,
        "tok_s": round(tokens / result.elapsed_s, 1),
        **_pass_counts(rows, args.max_new_tokens),
        "categories": {category: _pass_counts([row for row in rows if row.category == category], args.max_new_tokens)
                       for category in categories},
        "passed_task_ids": sorted({row.task_id for row in rows if row.verdict == "pass"}),
        "task_ids": sorted({row.task_id for row in rows}),
        "served_by": opened[0].model.capabilities.engine if opened else None,
    }


def _pass_counts(rows: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """pass@1 over every sample, pass@N over the tasks (each with its interval), tokens per answer and the
    answers that ran into the token budget."""
    from supertiny.eval.stats import wilson_interval

    tasks = {row.task_id for row in rows}
    passed_tasks = {row.task_id for row in rows if row.verdict == "pass"}
    passed = sum(row.verdict == "pass" for row in rows)
    return {
        "tasks": len(tasks), "samples": len(rows), "passed": passed,
        "pass_rate": round(passed / len(rows), 4) if rows else None,
        "pass_rate_95": [round(bound, 4) for bound in _pass_rate_interval(rows)],
        "tasks_with_a_pass": len(passed_tasks),
        "pass_at_n": round(len(passed_tasks) / len(tasks), 4) if tasks else None,
        "pass_at_n_95": [round(bound, 4) for bound in wilson_interval(len(passed_tasks), len(tasks))],
        "tokens_per_answer": round(sum(row.completion_tokens or 0 for row in rows) / len(rows), 1) if rows else None,
        "at_budget": sum((row.completion_tokens or 0) >= max_new_tokens for row in rows),
    }


def _pass_rate_interval(rows: list[Any]) -> tuple[float, float]:
    """95% interval of the pass rate over every sample: Wilson's with one sample a task; with several, a normal
    interval over the tasks' pass shares, since a task's samples pass or fail together more often than not."""
    from supertiny.eval.stats import wilson_interval

    by_task: dict[Any, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row.task_id, []).append(row.verdict == "pass")
    if all(len(verdicts) == 1 for verdicts in by_task.values()) or len(by_task) < 2:
        return wilson_interval(sum(row.verdict == "pass" for row in rows), len(rows))
    shares = [sum(verdicts) / len(verdicts) for verdicts in by_task.values()]
    mean = sum(shares) / len(shares)
    spread = (sum((share - mean) ** 2 for share in shares) / (len(shares) - 1) / len(shares)) ** 0.5
    return max(0.0, mean - 1.96 * spread), min(1.0, mean + 1.96 * spread)


def paired_comparisons(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each guided run against the free run of the same engine and N: tasks with a pass only under one of them,
    and the exact McNemar p-value."""
    from supertiny.eval.stats import mcnemar_p

    free = {(run["engine"], run["samples_per_task"]): run for run in runs if run["decoding"] == "free"}
    comparisons = []
    for run in runs:
        base = free.get((run["engine"], run["samples_per_task"]))
        if run["decoding"] != "guided" or base is None or base["task_ids"] != run["task_ids"]:
            continue
        guided, unguided = set(run["passed_task_ids"]), set(base["passed_task_ids"])
        only_guided, only_free = len(guided - unguided), len(unguided - guided)
        comparisons.append({"engine": run["engine"], "samples_per_task": run["samples_per_task"],
                            "tasks": len(run["task_ids"]), "free_pass_at_n": base["pass_at_n"],
                            "guided_pass_at_n": run["pass_at_n"], "only_guided": only_guided, "only_free": only_free,
                            "p": mcnemar_p(only_guided, only_free),
                            "either_pass_at_n": len(guided | unguided) / len(run["task_ids"])})
    return comparisons


def _percent(value: float | None, interval: list[float]) -> str:
    return "-" if value is None else f"{value:.1%} [{interval[0]:.1%}, {interval[1]:.1%}]"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Harvest benchmark ({result['created']})", "",
             f"teacher `{result['teacher']}` on {result['tasks']} `{result['domain']}` train tasks, temperature "
             f"{result['temperature']}, at most {result['max_new_tokens']} new tokens an answer, {result['machine']}",
             "", "| engine | decoding | samples / task | wall s | tasks / min | samples / min | tok/s "
             "| tokens / answer | at the token budget | pass@1 (all samples) | tasks with a pass (pass@N) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        pass_at_1, pass_at_n = _percent(run["pass_rate"], run["pass_rate_95"]), _percent(run["pass_at_n"],
                                                                                          run["pass_at_n_95"])
        lines.append(f"| {run['engine']} | {run['decoding']} | {run['samples_per_task']} | {run['wall_s']} "
                     f"| {run['tasks_per_min']} | {run['samples_per_min']} | {run['tok_s']} "
                     f"| {run['tokens_per_answer']} | {run['at_budget']}/{run['samples']} | {pass_at_1} "
                     f"| {run['tasks_with_a_pass']}/{run['tasks']} = {pass_at_n} |")
    categories = sorted({category for run in result["runs"] for category in run["categories"]})
    labels = [f"{run['engine']} {run['decoding']} N={run['samples_per_task']}" for run in result["runs"]]
    lines += ["", "pass@N per category (tasks with a passing sample), 95% Wilson intervals:", "",
              "| category | tasks | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for category in categories:
        cells = [run["categories"].get(category) for run in result["runs"]]
        tasks = next((cell["tasks"] for cell in cells if cell), 0)
        lines.append(f"| {category} | {tasks} | " + " | ".join(
            _percent(cell["pass_at_n"], cell["pass_at_n_95"]) if cell else "-" for cell in cells) + " |")
    if result.get("comparisons"):
        lines += ["", "Guided against free decoding, same engine, N and tasks (exact McNemar on pass@N):", "",
                  "| engine | samples / task | tasks | free | guided | passed only guided | passed only free | p "
                  "| a pass under either (both runs' samples) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in result["comparisons"]:
            lines.append(f"| {row['engine']} | {row['samples_per_task']} | {row['tasks']} "
                         f"| {row['free_pass_at_n']:.1%} | {row['guided_pass_at_n']:.1%} | {row['only_guided']} "
                         f"| {row['only_free']} | {format_p_value(row['p'])} | {row['either_pass_at_n']:.1%} |")
    walls: dict[tuple[str, str], dict[int, float]] = {}
    for run in result["runs"]:
        walls.setdefault((run["engine"], run["decoding"]), {})[run["samples_per_task"]] = run["wall_s"]
    lines.append("")
    for (engine, decoding), by_n in walls.items():
        if 1 in by_n and len(by_n) > 1:
            most = max(by_n)
            lines.append(f"- {engine}, {decoding}: {most} samples a task took {by_n[most] / by_n[1]:.2f}x the wall "
                         "time of 1.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{run['engine']} {run['decoding']}\nN={run['samples_per_task']}" for run in result["runs"]]
    left.bar(labels, [run["wall_s"] for run in result["runs"]], color="tab:blue")
    left.set(title="wall time", ylabel="seconds")
    values = [100 * (run["pass_at_n"] or 0) for run in result["runs"]]
    errors = [[value - 100 * run["pass_at_n_95"][0] for value, run in zip(values, result["runs"], strict=True)],
              [100 * run["pass_at_n_95"][1] - value for value, run in zip(values, result["runs"], strict=True)]]
    right.bar(labels, values, yerr=errors, capsize=4, color="tab:orange")
    right.set(title="tasks with a verified answer (pass@N), 95% CI", ylabel="%", ylim=(0, 100))
    figure.suptitle(f"harvest: {result['teacher']} on {result['tasks']} {result['domain']} tasks")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="Registered model name or HF directory.")
    parser.add_argument("--domain", default="bfcl")
    parser.add_argument("--tasks", type=int, default=40, help="Train tasks (the domain's first N, round-robin "
                        "over categories).")
    parser.add_argument("--samples", default="1,8", help="Comma-separated samples per task.")
    parser.add_argument("--in-process-samples", default="1", help="Samples per task on the in-process engines.")
    parser.add_argument("--decoding", default="free", help="Comma-separated: free, guided (guided: the engine "
                        "decodes under the tools' JSON Schemas; vllm only).")
    parser.add_argument("--engines", default="vllm,batched", help=f"Comma-separated: {', '.join(ENGINES)}.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--db", help="Database URL of the scratch store (default: a temporary SQLite file).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kinds = parse_engines(args.engines)

    from supertiny.plugins import load_plugins

    load_plugins()
    settings, store = scratch(args.db)
    directory = model_dir(args.teacher)
    decodings = parse_decodings(args.decoding)
    runs = []
    for kind in kinds:
        counts = args.samples if kind == "vllm" else args.in_process_samples
        with engine_model(kind, store, settings, directory, label="teacher") as name:
            for decoding in decodings if kind == "vllm" else ["free"]:
                for samples in [int(value) for value in counts.split(",") if value.strip()]:
                    run = {"engine": kind, **harvest_once(store, name, args, samples, decoding == "guided")}
                    runs.append(run)
                    print(f"{kind:>10} {decoding} N={samples}: {run['wall_s']} s, {run['tasks_per_min']} tasks/min, "
                          f"{run['samples_per_min']} samples/min, pass rate {run['pass_rate']}, "
                          f"pass@N {run['pass_at_n']}", flush=True)
    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "teacher": args.teacher,
              "domain": args.domain, "tasks": args.tasks, "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens, "machine": machine(), "runs": runs,
              "comparisons": paired_comparisons(runs)}
    write_result_files(args.out, "harvest", result, markdown(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
