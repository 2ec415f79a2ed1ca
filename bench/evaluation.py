"""Evaluation benchmark: one model on a domain's test split through several engines or decodings, side by side.

    python -m bench.evaluation --model qwen2.5-coder-0.5b-instruct --per-category 50 --engines vllm,batched
    python -m bench.evaluation --model qwen2.5-coder-1.5b-instruct --per-category 50 --engines vllm \
        --decoding free,guided

For each engine and decoding it runs ``supertiny eval run`` (greedy, the same tasks; ``--guided`` for guided
decoding, on the vllm engine only) into a scratch store and reports wall time, tasks per minute, accuracy with
its 95% Wilson interval, overall and per category, and, against the first run, how many tasks got a different
verdict with an exact McNemar test (engines compute in different kernels and orders, so a greedy answer can
flip where two tokens are nearly tied; a decoding changes the answers themselves).

Writes ``bench/results/evaluation-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from bench.engines import ENGINES, engine_model, machine, model_dir, parse_decodings, parse_engines, scratch
from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate_once(store: Any, name: str, args: argparse.Namespace, guided: bool = False) -> dict[str, Any]:
    from supertiny.eval.runner import EvalConfig, evaluate
    from supertiny.eval.stats import wilson_interval

    evaluation = evaluate(store, EvalConfig(model=name, domain=args.domain, split=args.split,
                                            per_category=args.per_category, max_new_tokens=args.max_new_tokens,
                                            guided=guided))
    records = evaluation.details["records"]
    correct = sum(record["correct"] for record in records)
    low, high = wilson_interval(correct, len(records))
    wall = evaluation.details["wall_s"]
    return {"tasks": len(records), "correct": correct, "accuracy": correct / len(records),
            "accuracy_95": [low, high], "wall_s": round(wall, 1), "tasks_per_min": round(len(records) / wall * 60, 2),
            "mean_latency_s": round(evaluation.mean_latency_s, 3), "served_by": evaluation.details["engine"],
            "concurrency": evaluation.details["concurrency"],
            "per_category": {category: stats["accuracy"] for category, stats in evaluation.per_category.items()},
            "per_category_n": {category: stats["n"] for category, stats in evaluation.per_category.items()},
            "verdicts": {record["task_hash"]: record["correct"] for record in records}}


def compare(first: dict[str, bool], other: dict[str, bool]) -> dict[str, Any]:
    from supertiny.eval.stats import mcnemar_p

    shared = sorted(set(first) & set(other))
    only_first = sum(first[task] and not other[task] for task in shared)
    only_other = sum(other[task] and not first[task] for task in shared)
    return {"tasks": len(shared), "differ": only_first + only_other, "only_first": only_first,
            "only_other": only_other, "mcnemar_p": mcnemar_p(only_first, only_other)}


def markdown(result: dict[str, Any]) -> str:
    from supertiny.eval.stats import format_accuracy

    runs = result["runs"]
    lines = [f"# Evaluation benchmark ({result['created']})", "",
             f"model `{result['model']}` on `{result['domain']}` {result['split']}, {result['per_category']} tasks a "
             f"category, greedy, at most {result['max_new_tokens']} new tokens, {result['machine']}", "",
             "| engine | decoding | wall s | tasks / min | tasks in flight | accuracy [95% CI] "
             "| right only here / only in the first run (McNemar p) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        diff = run.get("against_first")
        versus = f"{diff['only_other']} / {diff['only_first']} of {diff['tasks']} (p={diff['mcnemar_p']:.2g})" \
            if diff else "-"
        lines.append(f"| {run['engine']} | {run.get('decoding', 'free')} | {run['wall_s']} | {run['tasks_per_min']} "
                     f"| {run['concurrency']} | {format_accuracy(run['correct'], run['tasks'])} | {versus} |")
    lines += ["", "| category | " + " | ".join(_label(run) for run in runs) + " |", "|---|" + "---|" * len(runs)]
    for category in sorted(runs[0]["per_category"]):
        cells = [format_accuracy(round(run["per_category"][category] * run["per_category_n"][category]),
                                 run["per_category_n"][category]) if category in run.get("per_category_n", {})
                 else "-" for run in runs]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    fastest, slowest = min(runs, key=lambda run: run["wall_s"]), max(runs, key=lambda run: run["wall_s"])
    if len(runs) > 1 and slowest["wall_s"] > 0:  # a tiny run can round to 0 s
        lines += ["", f"- {_label(fastest)} took {fastest['wall_s'] / slowest['wall_s']:.2f}x the wall time of "
                  f"{_label(slowest)}."]
    return "\n".join(lines) + "\n"


def _label(run: dict[str, Any]) -> str:
    return f"{run['engine']} {run.get('decoding', 'free')}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [_label(run) for run in runs]
    left.bar(names, [run["wall_s"] for run in runs], color="tab:blue")
    left.set(title=f"wall time, {runs[0]['tasks']} tasks", ylabel="seconds")
    accuracy = [run["accuracy"] * 100 for run in runs]
    errors = [[a - run["accuracy_95"][0] * 100 for a, run in zip(accuracy, runs, strict=True)],
              [run["accuracy_95"][1] * 100 - a for a, run in zip(accuracy, runs, strict=True)]]
    right.bar(names, accuracy, yerr=errors, capsize=6, color="tab:green")
    right.set(title="accuracy (95% Wilson interval)", ylabel="%", ylim=(0, 100))
    figure.suptitle(f"eval: {result['model']} on {result['domain']} {result['split']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Registered model name or HF directory.")
    parser.add_argument("--domain", default="bfcl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--engines", default="vllm,batched", help=f"Comma-separated: {', '.join(ENGINES)}.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--decoding", default="free", help="Comma-separated: free, guided (guided: the engine "
                        "decodes under the tools' JSON Schemas; vllm only).")
    parser.add_argument("--db", help="Database URL of the scratch store (default: a temporary SQLite file).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kinds = parse_engines(args.engines)

    from supertiny.plugins import load_plugins

    load_plugins()
    settings, store = scratch(args.db)
    directory = model_dir(args.model)
    decodings = parse_decodings(args.decoding)
    runs = []
    for kind in kinds:
        with engine_model(kind, store, settings, directory, label="eval") as name:
            for decoding in decodings if kind == "vllm" else ["free"]:
                run = {"engine": kind, "decoding": decoding, **evaluate_once(store, name, args, decoding == "guided")}
                if runs:
                    run["against_first"] = compare(runs[0]["verdicts"], run["verdicts"])
                runs.append(run)
                print(f"{kind:>10} {decoding}: {run['tasks']} tasks in {run['wall_s']} s ({run['tasks_per_min']}/min), "
                      f"accuracy {run['accuracy']:.1%}", flush=True)
    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "model": args.model, "domain": args.domain,
              "split": args.split, "per_category": args.per_category, "max_new_tokens": args.max_new_tokens,
              "machine": machine(), "runs": runs}
    write_result_files(args.out, "evaluation", result, markdown(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
