"""Routing benchmark (issue #7): accuracy and LLM share of the tiny model, the LLM, cascade and hybrid-token.

    python -m bench.routing                                # qwen2.5-coder 0.5b / 1.5b on BFCL test, 10 a category
    python -m bench.routing --hybrid-thresholds ""         # cascade only: stored evaluations, no decoding
    python -m bench.routing --cascade-thresholds 0.5,0.7,0.9 --hybrid-thresholds 0.3,0.6 --no-reuse

On the same tasks (``--split``, the first ``--per-category`` of each category):

- tiny and llm: a stored evaluation of each model (:func:`supertiny.eval.runner.evaluate`), the latest one
  with the same task selection and no prompt engineering, or a new one (``--no-reuse``: always new);
- cascade: simulated from both evaluations joined by task (the tiny model answers; an invalid or low-confidence
  answer escalates and the LLM's answer counts) with :func:`supertiny.policy.calibrate.cascade_curve`, at every
  threshold that changes the routing (the table shows a handful, or ``--cascade-thresholds``);
- hybrid-token: each task decoded again at each ``--hybrid-thresholds`` value with
  :func:`supertiny.policy.hybrid.hybrid_generate` (the tiny model proposes every token, below the threshold of
  ``--reward`` the LLM supplies it), the answer checked by the domain as the evaluation checks it; the LLM
  request share is the share of requests with at least one LLM token.

The aim: at least the LLM-only accuracy with at most ``--budget`` (20%) of requests escalated.

Writes ``bench/results/routing/routing-<timestamp>.json``, ``.md`` (the table) and ``.png`` (accuracy against
LLM share).
"""

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results" / "routing"
TINY = "qwen2.5-coder-0.5b-instruct"
LLM = "qwen2.5-coder-1.5b-instruct"
SHARE_MARKS = (0.1, 0.3, 0.5)  # LLM shares near which the default table shows a cascade point
EPSILON = 1e-9
Record = dict[str, Any]  # one task of an evaluation's details["records"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_thresholds(text: str | None) -> list[float]:
    """Comma-separated thresholds, each in [0, 1.01]."""
    values = [float(part) for part in (text or "").split(",") if part.strip()]
    for value in values:
        if not 0 <= value <= 1.01:
            raise argparse.ArgumentTypeError(f"a threshold is between 0 and 1.01, got {value}")
    return values


# --- stored evaluations -------------------------------------------------------------------------


def _same_tasks(config: dict[str, Any] | None, split: str, per_category: int | None) -> bool:
    """An evaluation ran the tasks this benchmark selects, without the domain's prompt."""
    config = config or {}
    return (config.get("split") == split and config.get("per_category") == per_category
            and config.get("limit") is None and not config.get("categories") and not config.get("use_prompt"))


def stored_evaluation(store: Any, model: str, domain: str, split: str,
                      per_category: int | None) -> dict[str, Any] | None:
    """The latest evaluation of ``model`` on these tasks with per-record details, or None."""
    import sqlalchemy as sa
    from supertiny.store import Evaluation, ModelVersion

    query = (sa.select(Evaluation).join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
             .where(ModelVersion.name == model, Evaluation.domain == domain, Evaluation.split == split)
             .order_by(Evaluation.id.desc()))
    with store.session() as session:
        for row in session.scalars(query):
            details = row.details or {}
            records = details.get("records")
            if (_same_tasks(details.get("config"), split, per_category) and isinstance(records, list) and records
                    and all("task_hash" in record for record in records)):
                return {"id": row.id, "accuracy": row.accuracy, "n_tasks": row.n_tasks, "config": details["config"],
                        "records": records, "reused": True}
    return None


def evaluation_for(store: Any, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """A stored evaluation of ``model`` on the benchmark's tasks (with ``--reuse``), else a new one."""
    from supertiny.eval.runner import EvalConfig, evaluate

    if args.reuse:
        found = stored_evaluation(store, model, args.domain, args.split, args.per_category)
        if found is not None:
            log(f"{model}: reusing evaluation {found['id']} ({found['n_tasks']} tasks, accuracy "
                f"{found['accuracy']:.3f})")
            return found
    log(f"{model}: evaluating on {args.domain}/{args.split}, {args.per_category} a category")
    config = EvalConfig(model=model, domain=args.domain, split=args.split, per_category=args.per_category,
                        max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    row = evaluate(store, config, progress=lambda done, total: log(f"  {model}: {done}/{total}"))
    found = stored_evaluation(store, model, args.domain, args.split, args.per_category)
    assert found is not None and found["id"] == row.id
    return {**found, "reused": False}


def join_records(tiny: Sequence[Record], llm: Sequence[Record]) -> list[tuple[Record, Record]]:
    """(tiny record, llm record) of every task both evaluations answered, in the tiny evaluation's order."""
    by_hash = {record["task_hash"]: record for record in llm}
    return [(record, by_hash[record["task_hash"]]) for record in tiny if record["task_hash"] in by_hash]


def calibration_records(pairs: Sequence[tuple[Record, Record]]) -> list[Any]:
    from supertiny.policy.calibrate import CalibrationRecord

    return [CalibrationRecord(confidence=None if tiny.get("confidence") is None else float(tiny["confidence"]),
                              tiny_valid=bool(tiny.get("valid", True)), tiny_correct=bool(tiny["correct"]),
                              llm_correct=bool(llm["correct"]))
            for tiny, llm in pairs]


# --- cascade ------------------------------------------------------------------------------------


def point_at(curve: Sequence[Any], threshold: float) -> Any:
    """The curve's point at any threshold. The curve has a point at 0 and at every distinct confidence, so the
    routing at ``threshold`` is the one at the first point at or above it (nothing lies in between)."""
    chosen = next((point for point in curve if point.threshold >= threshold - EPSILON), curve[-1])
    return dataclasses.replace(chosen, threshold=threshold)


def table_points(curve: Sequence[Any], thresholds: Sequence[float], llm_accuracy: float, budget: float) -> list[Any]:
    """The cascade points the table shows: ``thresholds`` when given, else threshold 0, the most accurate point
    within the budget, the cheapest one reaching the LLM's accuracy, and those nearest a few LLM shares."""
    from supertiny.errors import InvalidInputError
    from supertiny.policy.calibrate import choose

    if thresholds:
        return [point_at(curve, threshold) for threshold in thresholds]
    points = [curve[0]]
    for goal in ({"llm_budget": budget}, {"target_accuracy": llm_accuracy}):
        with contextlib.suppress(InvalidInputError):  # no such point: nothing to show
            points.append(choose(curve, **goal))
    for share in SHARE_MARKS:
        points.append(min(curve, key=lambda point: (abs(point.llm_share - share), -(point.accuracy or 0.0))))
    unique = {point.threshold: point for point in points}
    return [unique[threshold] for threshold in sorted(unique)]


# --- hybrid-token -------------------------------------------------------------------------------


def check_answer(domain: Any, task: Any, tools: list[dict[str, Any]], generation: Any) -> dict[str, Any]:
    """Validity and verdict of one answer, as :func:`supertiny.eval.runner.evaluate` judges single-shot
    answers."""
    from supertiny.eval.runner import judge

    verdict, valid = judge(domain, task, tools, generation)
    return {"correct": verdict.verdict == "pass", "verdict": verdict.verdict, "reason": verdict.reason[:300],
            "valid": valid}


def run_hybrid(tiny: Any, llm: Any, domain: Any, tasks: Sequence[Any], threshold: float, reward: Any,
               args: argparse.Namespace) -> dict[str, Any]:
    """Decode every task with token-level hybrid decoding at ``threshold`` (through the engines when both models
    run on one, else in-process); accuracy, LLM shares and latency."""
    from supertiny.models.backend import GenerationOptions
    from supertiny.policy.base import TierError
    from supertiny.policy.hybrid import hybrid_generate, on_engines
    from supertiny.policy.hybrid_engines import hybrid_generate_on_engines
    from supertiny.prototype.agent import task_tools

    where = "engines" if on_engines(tiny, llm) else "in-process"
    decode = hybrid_generate_on_engines if where == "engines" else hybrid_generate

    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=0.0, logprobs=True)
    records = []
    started = time.perf_counter()
    for index, task in enumerate(tasks, 1):
        tools = task_tools(domain, task)
        record: dict[str, Any] = {"task": task.external_id, "task_hash": task.content_hash(),
                                  "category": task.category}
        began = time.perf_counter()
        try:
            result = decode(tiny, llm, task.messages, tools, options, threshold, reward, args.top_k)
        except TierError as exc:  # one failed decoding counts as a wrong answer, not a failed benchmark
            record.update(correct=False, verdict="error", reason=str(exc)[:300], valid=False, tokens=0,
                          llm_tokens=0, latency_s=time.perf_counter() - began)
        else:
            record.update(check_answer(domain, task, tools, result.generation))
            record.update(tokens=len(result.sources), llm_tokens=result.llm_tokens,
                          confidence=result.generation.confidence, latency_s=time.perf_counter() - began,
                          answer=result.generation.text[:500])
        records.append(record)
        log(f"  hybrid {threshold:g} ({where}): {index}/{len(tasks)} ({record['llm_tokens']}/{record['tokens']} LLM "
            f"tokens, {record['verdict']}, {record['latency_s']:.1f} s)")
    tokens = sum(record["tokens"] for record in records)
    return {"threshold": threshold, "n": len(records), "decoded_on": where,
            "accuracy": sum(record["correct"] for record in records) / len(records),
            "llm_request_share": sum(record["llm_tokens"] > 0 for record in records) / len(records),
            "llm_token_share": sum(record["llm_tokens"] for record in records) / tokens if tokens else 0.0,
            "errors": sum(record["verdict"] == "error" for record in records),
            "mean_latency_s": (time.perf_counter() - started) / len(records), "records": records}


def hybrid_placements(choice: str) -> list[bool]:
    """The ``in_process`` flags the models are opened with, one hybrid run each."""
    return {"auto": [False], "in-process": [True], "both": [False, True]}[choice]


# --- report -------------------------------------------------------------------------------------


def row(policy: str, threshold: float | None, accuracy: float | None, request_share: float,
        token_share: float | None, n: int, latency_s: float | None = None, where: str | None = None) -> dict[str, Any]:
    return {"policy": policy, "threshold": threshold, "accuracy": accuracy, "llm_request_share": request_share,
            "llm_token_share": token_share, "n": n, "mean_latency_s": latency_s, "decoded_on": where}


# (key in the aim, policy, the share the budget bounds): the aim counts escalated requests; hybrid-token
# nearly always takes some token from the LLM, so its token share against the budget is reported beside it
AIM_SHARES = (("cascade", "cascade", "llm_request_share"), ("hybrid-token", "hybrid-token", "llm_request_share"),
              ("hybrid-token (tokens)", "hybrid-token", "llm_token_share"))


def check_aim(rows: Sequence[dict[str, Any]], llm_accuracy: float, budget: float) -> dict[str, Any]:
    """Per policy, the cheapest point with at least the LLM's accuracy within the budget (``met``), else the most
    accurate point within the budget (None when no point is within it). ``met``: by LLM request share."""
    verdict: dict[str, Any] = {"llm_accuracy": llm_accuracy, "budget": budget}
    for key, policy, share in AIM_SHARES:
        within = [candidate for candidate in rows if candidate["policy"] == policy
                  and candidate["accuracy"] is not None and candidate[share] <= budget + EPSILON]
        reaching = [candidate for candidate in within if candidate["accuracy"] >= llm_accuracy - EPSILON]
        if reaching:
            best = min(reaching, key=lambda point: (point[share], -point["accuracy"]))
        else:
            best = max(within, key=lambda point: (point["accuracy"], -point[share]), default=None)
        verdict[key] = {"met": bool(reaching), "point": best, "share": share}
    verdict["met"] = verdict["cascade"]["met"] or verdict["hybrid-token"]["met"]
    return verdict


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def aim_lines(aim: dict[str, Any]) -> list[str]:
    lines = []
    for key, _, share in AIM_SHARES:
        point = aim[key]["point"]
        unit = "requests" if share == "llm_request_share" else "tokens"
        if aim[key]["met"]:
            lines.append(f"- {key}: **met** at threshold {point['threshold']:.4g}: accuracy "
                         f"{_percent(point['accuracy'])} with {_percent(point[share])} of {unit} from the LLM.")
        elif point is not None:
            lines.append(f"- {key}: not met; the best within the budget is threshold {point['threshold']:.4g}: "
                         f"accuracy {_percent(point['accuracy'])} with {_percent(point[share])} of {unit} from "
                         "the LLM.")
        else:
            lines.append(f"- {key}: not met; no measured point keeps the LLM share of {unit} within the budget.")
    return lines


def markdown(result: dict[str, Any]) -> str:
    aim = result["aim"]
    lines = [f"# Routing benchmark ({result['created']})", "",
             f"tiny {result['tiny']}, LLM {result['llm']}; {result['domain']}/{result['split']}, "
             f"{result['per_category']} tasks a category, {result['n']} tasks both evaluations answered "
             f"(evaluations {result['evaluations']['tiny']['id']} and {result['evaluations']['llm']['id']}).", "",
             "| policy | threshold | accuracy | LLM request share | LLM token share (hybrid) | n | s / request |",
             "|---|---|---|---|---|---|---|"]
    for entry in result["rows"]:
        threshold = "-" if entry["threshold"] is None else f"{entry['threshold']:.4g}"
        policy = f"{entry['policy']} ({entry['decoded_on']})" if entry.get("decoded_on") else entry["policy"]
        latency = "-" if entry.get("mean_latency_s") is None else f"{entry['mean_latency_s']:.1f}"
        lines.append(f"| {policy} | {threshold} | {_percent(entry['accuracy'])} | "
                     f"{_percent(entry['llm_request_share'])} | {_percent(entry['llm_token_share'])} | {entry['n']} "
                     f"| {latency} |")
    lines += ["", f"Aim: at least the LLM-only accuracy ({_percent(aim['llm_accuracy'])}) with at most "
              f"{_percent(aim['budget'])} of requests escalated: {'met' if aim['met'] else 'not met'}.",
              *aim_lines(aim), "",
              "cascade: the tiny model answers; an invalid answer, or one below the confidence threshold, goes to "
              "the LLM (simulated from the two evaluations; the full curve is in the JSON). hybrid-token: the LLM "
              f"supplies each token whose {result['reward']} reward is below the threshold; LLM request share = "
              "requests with at least one LLM token."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aim = result["aim"]
    figure, axis = plt.subplots(figsize=(7.5, 5))
    curve = [point for point in result["cascade_curve"] if point["accuracy"] is not None]
    axis.plot([point["llm_share"] for point in curve], [point["accuracy"] for point in curve], "-", color="C0",
              lw=1.5, label="cascade (all thresholds)")
    shown = [entry for entry in result["rows"] if entry["policy"] == "cascade"]
    axis.scatter([entry["llm_request_share"] for entry in shown], [entry["accuracy"] for entry in shown], s=22,
                 color="C0", zorder=3)
    for entry in shown:
        axis.annotate(f"{entry['threshold']:.3g}", (entry["llm_request_share"], entry["accuracy"]), fontsize=7,
                      xytext=(3, -9), textcoords="offset points", color="C0")
    hybrid = [entry for entry in result["rows"] if entry["policy"] == "hybrid-token"]
    if hybrid:
        axis.scatter([entry["llm_request_share"] for entry in hybrid], [entry["accuracy"] for entry in hybrid],
                     marker="s", s=36, color="C1", zorder=3, label="hybrid-token (x: LLM request share)")
        axis.scatter([entry["llm_token_share"] for entry in hybrid], [entry["accuracy"] for entry in hybrid],
                     marker="D", s=30, facecolors="none", edgecolors="C1", zorder=3,
                     label="hybrid-token (x: LLM token share)")
        for entry in hybrid:
            for share in (entry["llm_request_share"], entry["llm_token_share"]):
                axis.annotate(f"{entry['threshold']:.3g}", (share, entry["accuracy"]), fontsize=7, xytext=(3, 4),
                              textcoords="offset points", color="C1")
    for entry, color in ((result["rows"][0], "C2"), (result["rows"][1], "C3")):
        axis.scatter([entry["llm_request_share"]], [entry["accuracy"]], marker="*", s=140, color=color, zorder=4,
                     label=f"{entry['policy']} only")
    axis.axhline(aim["llm_accuracy"], color="gray", ls="--", lw=0.8)
    axis.axvline(aim["budget"], color="gray", ls=":", lw=0.8)
    axis.set(xlim=(-0.03, 1.03), ylim=(0, 1.02), xlabel="share of requests (or tokens) from the LLM",
             ylabel="accuracy",
             title=f"routing on {result['domain']}/{result['split']} ({result['n']} tasks): "
                   f"aim {'met' if aim['met'] else 'not met'}")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- main ---------------------------------------------------------------------------------------


def ensure_registered(store: Any, name: str, directory: Path | None) -> None:
    """Register ``directory`` as ``name`` unless it is already registered there."""
    if directory is None:
        return
    from supertiny.errors import InvalidInputError
    from supertiny.models.versions import find_model_version, register_external

    row = find_model_version(store, name)
    if row is None:
        register_external(store, directory, name=name)
    elif Path(row.path).resolve() != directory.resolve():
        raise InvalidInputError(f"{name!r} is already registered at {row.path}, not {directory}",
                                hint="give another model name")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", default=TINY, help="Registered tiny model.")
    parser.add_argument("--llm", default=LLM, help="Registered LLM (the same vocabulary, for hybrid-token).")
    parser.add_argument("--tiny-model-dir", type=Path, help="Register this HF directory as --tiny first (tests).")
    parser.add_argument("--llm-model-dir", type=Path, help="Register this HF directory as --llm first (tests).")
    parser.add_argument("--domain", default="bfcl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-category", type=int, default=10, help="The first N tasks of each category.")
    parser.add_argument("--cascade-thresholds", type=parse_thresholds, default=[],
                        help="Comma-separated cascade thresholds for the table (default: a handful of the full "
                        "curve's points; the curve itself is always in the JSON and the plot).")
    parser.add_argument("--hybrid-thresholds", type=parse_thresholds, default=[0.3, 0.5, 0.7],
                        help="Comma-separated hybrid-token thresholds, each a full decoding run ('' skips hybrid).")
    parser.add_argument("--reward", default="tiny-probability", help="Token reward of hybrid-token.")
    parser.add_argument("--hybrid-on", choices=("auto", "in-process", "both"), default="auto",
                        help="Where hybrid-token decodes: auto (through the engines when both models run on one, "
                             "else in-process), in-process, or both, side by side.")
    parser.add_argument("--top-k", type=int, default=5, help="Tiny log-probabilities the reward sees.")
    parser.add_argument("--budget", type=float, default=0.2, help="The aim's largest LLM request share.")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="Reuse the latest stored evaluation of each model on these tasks.")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="Of new evaluations and hybrid answers.")
    parser.add_argument("--concurrency", type=int, help="Tasks in flight in new evaluations (default: as batched).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--database-url", "--db", dest="database_url",
                        help="Database URL of the store (default: the settings' store, SUPERTINY_HOME).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from supertiny.config import get_settings
    from supertiny.errors import InvalidInputError
    from supertiny.policy.calibrate import cascade_curve
    from supertiny.registry import lookup
    from supertiny.runtime.loading import close_models, open_model
    from supertiny.store.session import open_store
    from supertiny.task_selection import select_tasks

    if args.threads:
        torch.set_num_threads(args.threads)
    store = open_store(get_settings(database_url=args.database_url))
    ensure_registered(store, args.tiny, args.tiny_model_dir)
    ensure_registered(store, args.llm, args.llm_model_dir)
    domain = lookup("domain", args.domain)
    reward = lookup("token_reward", args.reward) if args.hybrid_thresholds else None
    tasks = select_tasks(domain, args.split, args.per_category)
    if not tasks:
        raise InvalidInputError(f"domain {args.domain!r} has no tasks in split {args.split!r}")
    if args.hybrid_thresholds and domain.environment(tasks[0]) is not None:
        raise InvalidInputError(f"{args.domain!r} executes its tools: hybrid-token is benchmarked on single-shot "
                                "domains only", hint="pass --hybrid-thresholds ''")

    try:
        evaluations = {role: evaluation_for(store, model, args) for role, model in (("tiny", args.tiny),
                                                                                    ("llm", args.llm))}
        pairs = join_records(evaluations["tiny"]["records"], evaluations["llm"]["records"])
        if not pairs:
            raise InvalidInputError(f"evaluations {evaluations['tiny']['id']} and {evaluations['llm']['id']} "
                                    "share no task")
        n = len(pairs)
        tiny_accuracy = sum(tiny["correct"] for tiny, _ in pairs) / n
        llm_accuracy = sum(llm["correct"] for _, llm in pairs) / n
        curve = cascade_curve(calibration_records(pairs))
        rows = [row("tiny", None, tiny_accuracy, 0.0, 0.0, n), row("llm", None, llm_accuracy, 1.0, 1.0, n)]
        rows += [row("cascade", point.threshold, point.accuracy, point.llm_share, None, point.n)
                 for point in table_points(curve, args.cascade_thresholds, llm_accuracy, args.budget)]

        hybrid = []
        if args.hybrid_thresholds:
            joined = {tiny["task_hash"] for tiny, _ in pairs}
            hybrid_tasks = [task for task in tasks if task.content_hash() in joined]
            for in_process in hybrid_placements(args.hybrid_on):
                tiny_model = open_model(store, args.tiny, in_process=in_process)
                llm_model = open_model(store, args.llm, in_process=in_process)
                for threshold in args.hybrid_thresholds:
                    hybrid.append(run_hybrid(tiny_model, llm_model, domain, hybrid_tasks, threshold, reward, args))
                    point = hybrid[-1]
                    rows.append(row("hybrid-token", threshold, point["accuracy"], point["llm_request_share"],
                                    point["llm_token_share"], point["n"], point["mean_latency_s"],
                                    point["decoded_on"]))
    finally:
        close_models()

    # the aim is judged on the full cascade curve, not only on the points the table shows
    aim = check_aim([*rows, *(row("cascade", point.threshold, point.accuracy, point.llm_share, None, point.n)
                              for point in curve)], llm_accuracy, args.budget)
    result = {
        "created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "tiny": args.tiny, "llm": args.llm,
        "domain": args.domain, "split": args.split, "per_category": args.per_category, "n": n,
        "reward": args.reward, "top_k": args.top_k, "max_new_tokens": args.max_new_tokens,
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "evaluations": {role: {key: evaluation[key] for key in ("id", "accuracy", "n_tasks", "reused", "config")}
                        for role, evaluation in evaluations.items()},
        "rows": rows, "aim": aim, "cascade_curve": [dataclasses.asdict(point) for point in curve], "hybrid": hybrid,
    }
    table = markdown(result)
    write_result_files(args.out, "routing", result, table, lambda path: plot(result, path))
    print(table)
    return result


if __name__ == "__main__":
    main()
