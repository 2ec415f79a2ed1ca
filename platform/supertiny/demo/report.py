"""The demo's report: report.md (printed at the end), report.json and two plots, next to the state file.

- accuracy per model (overall and per category), latency per request, parameters and bytes;
- the cascade's accuracy / LLM-share curve over thresholds, the chosen point, and what live traffic got;
- the wall time of every step; where the files are.
"""

import json
import platform
import time
from pathlib import Path
from typing import Any

from supertiny.eval.stats import format_p_value

EVAL_STEPS = (("eval-teacher", "teacher (LLM)"), ("eval-teacher-guided", "teacher (LLM), guided"),
              ("eval-base", "student, untrained"), ("eval-sft", "student + sft"),
              ("eval-trained", "student, trained"), ("eval-pruned", "student, pruned + healed"),
              ("eval-compressed", "student, compressed"))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _with_interval(accuracy: float | None, n: int | None) -> str:
    """``53.3% [30.1, 75.2]``: the accuracy and its 95% Wilson interval (the accuracy alone when n is unknown)."""
    from supertiny.eval.stats import wilson_interval

    if accuracy is None or not n:
        return _percent(accuracy)
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{accuracy:.1%} [{low * 100:.1f}, {high * 100:.1f}]"


def _megabytes(value: int | None) -> str:
    return "-" if not value else f"{value / 1e6:,.0f} MB"


def _params(value: int | None) -> str:
    return "-" if not value else f"{value / 1e6:,.0f}M"


def evaluation_rows(state: Any) -> list[dict[str, Any]]:
    rows = []
    for step, label in EVAL_STEPS:
        if state.done(step) and "skipped" not in state.result(step):
            rows.append({"label": label, **state.result(step)})
    return rows


def _models_table(rows: list[dict[str, Any]]) -> list[str]:
    categories = sorted({category for row in rows for category in row["per_category"]})
    header = ["model", "name", "accuracy", *categories, "invalid calls", "latency / request", "params", "size"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        counts = row.get("per_category_n") or {}
        cells = [row["label"], f"`{row['model']}`", f"**{_with_interval(row['accuracy'], row['n'])}**",
                 *(_with_interval(row["per_category"].get(category), counts.get(category)) for category in categories),
                 _percent(row["invalid_rate"]), f"{row['mean_latency_s']:.1f} s", _params(row["params"]),
                 _megabytes(row["size_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _harvest_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per category and decoding: pass@1 (the share of answers that pass), pass@N (the share of tasks with a passing
    answer, with its 95% interval) and the passing answers kept."""
    categories = sorted({category for run in runs for category in run["categories"]})
    header = ["category"]
    for run in runs:
        decoding, n = "guided" if run["guided"] else "free", run["samples_per_task"]
        header += [f"{decoding} pass@1", *([f"{decoding} pass@{n}"] if n > 1 else []), f"{decoding} kept"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for category in categories:
        cells = [category]
        for run in runs:
            row = run["categories"].get(category)
            if row is None:
                cells += ["-"] * (3 if run["samples_per_task"] > 1 else 2)
                continue
            cells.append(_percent(row["pass_at_1"]))
            if run["samples_per_task"] > 1:
                cells.append(_with_interval(row["pass_at_n"], row["tasks"]))
            cells.append(str(row["kept"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _llm_lines(plan: Any) -> list[str]:
    """What the teacher rows measure where the LLM is an export of the pulled teacher."""
    if plan.llm_export is None:
        return []
    algorithm, scheme = plan.llm_export
    what = f"as a {scheme} GGUF for llama.cpp" if algorithm == "gguf" else f"quantized to {scheme}"
    if scheme == "w8a8":
        what += " (int8 weights and activations)"
    return ["", f"The LLM `{plan.llm}` is the teacher `{plan.teacher}` {what}: it harvested, it is the teacher in "
                "these rows and the route's LLM tier (`--llm-quantize none` keeps the teacher as pulled)."]


def _paired_lines(store: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Each student against the teacher on the tasks both answered (exact McNemar)."""
    from supertiny.errors import NotFoundError
    from supertiny.eval.queries import evaluation_by_id, paired_test

    teacher = next((row for row in rows if row["label"] == EVAL_STEPS[0][1]), None)
    if teacher is None or "evaluation_id" not in teacher:
        return []
    try:
        baseline = evaluation_by_id(store, teacher["evaluation_id"], with_records=True)
        lines = []
        for row in rows:
            if row is teacher or "evaluation_id" not in row:
                continue
            test = paired_test(baseline, evaluation_by_id(store, row["evaluation_id"], with_records=True))
            if test["shared_tasks"]:
                verdict = "a real difference" if test["p_value"] < 0.05 else "not a significant difference"
                lines.append(f"- {row['label']} vs the teacher: {test['difference'] * 100:+.1f} points on "
                             f"{test['shared_tasks']} shared tasks ({test['only_model']} right only for it, "
                             f"{test['only_baseline']} only for the teacher), "
                             f"McNemar {format_p_value(test['p_value'])}: {verdict}")
    except NotFoundError:  # evaluations deleted since the demo ran: the table still stands
        return []
    return lines


def _steps_table(state: Any, names: list[str]) -> list[str]:
    """Wall time of each step of the plan, when it finished (a step reused from an earlier run keeps its time)."""
    lines = ["| step | wall time | served by | finished |", "|---|---|---|---|"]
    total = 0.0
    for name in names:
        if state.done(name):
            step = state.steps[name]
            total += step["wall_s"]
            lines.append(f"| {name} | {step['wall_s']:.0f} s | {_served_by(step.get('result') or {})} "
                         f"| {step.get('finished_at', '-')} |")
    lines.append(f"| **total** | **{total / 60:.1f} min** | | |")
    return lines


def _served_by(result: dict[str, Any]) -> str:
    """Which engine answered a step's requests (and how long starting it took), or nothing for steps that
    generate nothing."""
    engine = result.get("engine") or {}
    if not engine.get("served_by"):
        return ""
    tier = f"{engine['tier']}: " if engine.get("tier") else ""
    why = f" ({engine['why']})" if engine.get("why") else ""
    started = engine.get("engine_s") or 0.0
    return f"{tier}{engine['served_by']}{why}" + (f", started in {started:.0f} s" if started >= 1 else "")


def _gate_text(policy: dict[str, Any]) -> str:
    """The route's gate: learned (on which features; confidences out of fold) or a token-probability measure."""
    if policy.get("confidence") == "learned":
        return (f"Gate learned from the evaluations on {', '.join(policy.get('gate_features') or [])} (the curve "
                "scores each task by a gate fitted without it)")
    return f"Gate: the tiny answer's {policy.get('confidence', 'mean')} token probability"


def plot_routing(path: Path, policy: dict[str, Any], rows: list[dict[str, Any]], served: dict[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted((point for point in policy["curve"] if point["accuracy"] is not None),
                   key=lambda point: point["llm_share"])
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    axes.plot([point["llm_share"] * 100 for point in curve], [point["accuracy"] * 100 for point in curve],
              marker=".", label="cascade, over thresholds")
    axes.scatter([policy["expected_llm_share"] * 100], [policy["expected_accuracy"] * 100], s=90, marker="*",
                 color="tab:red", zorder=3, label=f"chosen threshold {policy['threshold']:.3g}")
    by_model = {row["model"]: row for row in rows}
    for model, share, label in ((policy["llm"], 100, "LLM only"), (policy["tiny"], 0, "tiny only")):
        if model in by_model:
            axes.scatter([share], [by_model[model]["accuracy"] * 100], s=60, marker="s", label=label, zorder=3)
    if served and served.get("accuracy") is not None:
        axes.scatter([served["llm_share"] * 100], [served["accuracy"] * 100], s=60, marker="D", color="tab:green",
                     label=f"served traffic ({served['requests']} requests)", zorder=3)
    axes.set_xlabel("requests escalated to the LLM (%)")
    axes.set_ylabel("BFCL test accuracy (%)")
    axes.set_title("Accuracy vs LLM share (cascade)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_size(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for row in rows:
        if row["size_bytes"]:
            axes.scatter([row["size_bytes"] / 1e6], [row["accuracy"] * 100], s=60)
            axes.annotate(row["label"], (row["size_bytes"] / 1e6, row["accuracy"] * 100), fontsize=8,
                          xytext=(5, 4), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("size on disk (MB, log scale)")
    axes.set_ylabel("BFCL test accuracy (%)")
    axes.set_title("Accuracy vs size")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(demo: Any) -> Path:
    """Write report.md, report.json and the PNGs into the demo's directory; return report.md."""
    state, plan, directory = demo.state, demo.plan, demo.directory
    rows = evaluation_rows(state)
    policy = state.result("policy") if state.done("policy") else None
    served = state.result("serve") if state.done("serve") else None
    harvest = state.result("harvest") if state.done("harvest") else None
    routing_png, size_png = directory / "accuracy_vs_llm_share.png", directory / "accuracy_vs_size.png"
    if policy:
        plot_routing(routing_png, policy, rows, served)
    if rows:
        plot_size(size_png, rows)

    lines = [f"# supertiny demo report ({plan.tag})", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({platform.machine()}, "
             f"{_cpu()}); store `{demo.settings.database_url}`.", ""]
    if harvest:
        each = f" ({plan.harvest_samples} sampled answers each)" if plan.harvest_samples > 1 else ""
        if harvest.get("guided"):
            answered = (f"{plan.harvest_tasks} BFCL train tasks freely{each} and once more under its tools' JSON "
                        "Schemas (guided decoding)")
        else:
            answered = f"{plan.harvest_tasks} BFCL train tasks{each}"
        lines += [f"Harvest: the teacher `{plan.llm}` answered {answered}; {harvest['passed']} of {harvest['done']} "
                  f"answers passed the verifier ({harvest['pass_rate']:.0%}), for "
                  f"{harvest.get('tasks_with_a_pass', harvest['passed'])} tasks, and became the training snapshot "
                  f"`{state.result('snapshot')['ref']}`.", ""]
        if harvest.get("runs"):
            lines += [*_harvest_table(harvest["runs"]), ""]
    if rows:
        lines += [f"## Models on BFCL test ({rows[0]['n']} tasks, {plan.eval_per_category} per category)", "",
                  *_models_table(rows), "", *_paired_lines(demo.store, rows), "",
                  "Latency is per request on this CPU with every test task in flight at once (it includes the "
                  "wait for the model); the teacher is evaluated on the raw requests (as it is served), without "
                  "the domain prompt that steered it during the harvest.",
                  *_llm_lines(plan), ""]
    if policy:
        guided = "; the LLM answers under the tools' JSON Schemas" if policy.get("guided_llm") else ""
        lines += ["## Routing", "",
                  f"Route `{policy['route']}`: cascade `{policy['tiny']}` -> `{policy['llm']}` ({policy['why']}"
                  f"{guided}). "
                  f"{_gate_text(policy)}; calibrated threshold {policy['threshold']:.4g} "
                  f"({', '.join(f'{key} {value:.3g}' for key, value in policy['goal'].items())}): on the evaluation "
                  f"tasks {_percent(policy['expected_accuracy'])} accuracy with "
                  f"{_percent(policy['expected_llm_share'])} of requests escalated to the LLM.", ""]
    if served:
        lines += [f"Served through the OpenAI client ({served['requests']} fresh test requests): accuracy "
                  f"{_percent(served['accuracy'])}, {_percent(served['llm_share'])} escalated to the LLM, "
                  f"latency p50 {served['p50_latency_s']:.1f} s, mean {served['mean_latency_s']:.1f} s.", ""]
    lines += ["## Steps", "", *_steps_table(state, [name for name, _, _ in demo.steps()]), "", "## Files", "",
              f"- this report: `{directory / 'report.md'}` (and `report.json`)"]
    if policy:
        lines.append(f"- accuracy vs LLM share: `{routing_png}`")
    if rows:
        lines.append(f"- accuracy vs size: `{size_png}`")
    lines += [f"- models: `{demo.settings.models_dir}`", f"- store: `{demo.settings.database_url}`", "",
              f"Serve it: `supertiny serve`, then POST /v1/chat/completions with `model: \"{plan.route}\"`.", ""]
    report = directory / "report.md"
    report.write_text("\n".join(lines))
    (directory / "report.json").write_text(json.dumps({"plan": plan.tag, "steps": state.current()}, indent=2,
                                                      default=str))
    return report


def _cpu() -> str:
    import os

    try:
        model = next(line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"
