"""Harvest benchmark: the teacher answering a domain's train tasks, one sample or N a task, on several engines.

    python -m bench.harvest --teacher qwen2.5-coder-1.5b-instruct --tasks 40 --samples 1,8 --engines vllm,batched

For each engine and each samples-per-task it runs ``supertiny harvest`` (the domain's prompt, the same
temperature for every run so that only N differs) into a scratch store and reports wall time, tasks and
samples per minute, generated tokens per second, the pass rate (pass@1 over every sample) and the share of
tasks with at least one passing sample (pass@N). In-process engines run ``--in-process-samples`` only.

Writes ``bench/results/harvest-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from bench.engines import ENGINES, engine_model, machine, model_dir, parse_engines, scratch

RESULTS = Path(__file__).resolve().parent / "results"


def harvest_once(store: Any, name: str, args: argparse.Namespace, samples: int) -> dict[str, Any]:
    import sqlalchemy as sa
    from supertiny.eval.stats import wilson_interval
    from supertiny.harvest.runner import HarvestConfig, run_harvest
    from supertiny.prototype.teacher import open_chat_model
    from supertiny.store import Sample

    config = HarvestConfig(domain=args.domain, teacher=name, samples_per_task=samples, temperature=args.temperature,
                           limit=args.tasks, max_new_tokens=args.max_new_tokens)
    opened: list[Any] = []

    def open_teacher() -> Any:
        opened.append(open_chat_model(store, name))
        return opened[-1]

    result = run_harvest(store, config, open_teacher)
    with store.session() as session:
        rows = session.execute(sa.select(Sample.task_id, Sample.verdict, Sample.completion_tokens)
                               .where(Sample.run_id == result.run_id)).all()
    tasks = {task_id for task_id, _, _ in rows}
    passed_tasks = {task_id for task_id, verdict, _ in rows if verdict == "pass"}
    tokens = sum(tokens or 0 for *_, tokens in rows)
    minutes = result.elapsed_s / 60
    low, high = wilson_interval(len(passed_tasks), len(tasks))
    return {
        "samples_per_task": samples, "tasks": len(tasks), "samples": result.done, "wall_s": round(result.elapsed_s, 1),
        "tasks_per_min": round(len(tasks) / minutes, 2), "samples_per_min": round(result.done / minutes, 2),
        "completion_tokens": tokens, "tok_s": round(tokens / result.elapsed_s, 1),
        "pass_rate": round(result.passed / result.done, 4) if result.done else None,
        "tasks_with_a_pass": len(passed_tasks), "pass_at_n": round(len(passed_tasks) / len(tasks), 4),
        "pass_at_n_95": [round(low, 4), round(high, 4)],
        "served_by": opened[0].model.capabilities.engine if opened else None,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Harvest benchmark ({result['created']})", "",
             f"teacher `{result['teacher']}` on {result['tasks']} `{result['domain']}` train tasks, temperature "
             f"{result['temperature']}, at most {result['max_new_tokens']} new tokens an answer, {result['machine']}",
             "", "| engine | samples / task | wall s | tasks / min | samples / min | tok/s | pass rate (all samples) "
             "| tasks with a pass (pass@N) |", "|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        low, high = run["pass_at_n_95"]
        lines.append(f"| {run['engine']} | {run['samples_per_task']} | {run['wall_s']} | {run['tasks_per_min']} "
                     f"| {run['samples_per_min']} | {run['tok_s']} | {run['pass_rate']:.1%} "
                     f"| {run['tasks_with_a_pass']}/{run['tasks']} = {run['pass_at_n']:.1%} "
                     f"[{low:.1%}, {high:.1%}] |")
    by_engine: dict[str, dict[int, float]] = {}
    for run in result["runs"]:
        by_engine.setdefault(run["engine"], {})[run["samples_per_task"]] = run["wall_s"]
    lines.append("")
    for engine, walls in by_engine.items():
        if 1 in walls and len(walls) > 1:
            most = max(walls)
            lines.append(f"- {engine}: {most} samples a task took {walls[most] / walls[1]:.2f}x the wall time of 1.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{run['engine']}\nN={run['samples_per_task']}" for run in result["runs"]]
    left.bar(labels, [run["wall_s"] for run in result["runs"]], color="tab:blue")
    left.set(title="wall time", ylabel="seconds")
    right.bar(labels, [run["samples_per_min"] for run in result["runs"]], color="tab:orange")
    right.set(title="verified samples per minute", ylabel="samples / min")
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
    runs = []
    for kind in kinds:
        counts = args.samples if kind == "vllm" else args.in_process_samples
        with engine_model(kind, store, settings, directory, label="teacher") as name:
            for samples in [int(value) for value in counts.split(",") if value.strip()]:
                run = {"engine": kind, **harvest_once(store, name, args, samples)}
                runs.append(run)
                print(f"{kind:>10} N={samples}: {run['wall_s']} s, {run['tasks_per_min']} tasks/min, "
                      f"{run['samples_per_min']} samples/min, pass rate {run['pass_rate']}, pass@N {run['pass_at_n']}",
                      flush=True)
    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "teacher": args.teacher,
              "domain": args.domain, "tasks": args.tasks, "temperature": args.temperature,
              "max_new_tokens": args.max_new_tokens, "machine": machine(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"harvest-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md and .png")
    return result


if __name__ == "__main__":
    main()
