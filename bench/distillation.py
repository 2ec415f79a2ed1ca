"""Distillation report: the prototype teacher's harvest, and every model evaluated on one domain split, side by
side with 95% intervals, each tested against the raw teacher on the tasks both answered.

    python -m bench.distillation --domain bfcl --split test --harvest-run 1 --harvest-run 2 \\
        --teacher qwen2.5-coder-1.5b-instruct --models qwen2.5-coder-0.5b-instruct,student-sft,student-grpo

It runs no model: it reads the user's store (``supertiny harvest status``, ``supertiny eval compare`` and the
trainers' metrics hold the same figures), so each row comes from the CLI commands that made it. Rows:

- the prototype teacher on the harvested train tasks: pass@1 (the share of samples that pass) and pass@N (the
  share of tasks with at least one passing sample), per category, with the records kept;
- the raw teacher and each model on the evaluation split, per category and overall, with Wilson intervals;
- each model against the raw teacher: the accuracy difference on the shared tasks and its exact McNemar p;
- on BFCL, the published per-category figures of Qwen2.5-0.5B-Instruct (the floor) and Hammer2.1-0.5b (the
  stretch), and whether each model reaches them;
- the reward curve of every model trained by grpo;
- with ``--cascade TINY``: the cascade TINY -> raw teacher on the same tasks, its accuracy (with intervals) at every
  confidence threshold against the LLM share, beside random routing at the same share (what a gate that knows
  nothing gets), and the smallest share at which it reaches the teacher's accuracy; with ``--cascade-confidence``
  (repeatable), the gate's confidence measure, each compared on the same tasks.

Writes ``bench/results/distillation-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from supertiny.errors import SupertinyError
from supertiny.eval.stats import format_p_value
from supertiny.policy.kinds import GATE_MEASURES
from supertiny.policy.learned_gate import LEARNED

from bench.engines import machine
from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results"
GATE_SHARE = 0.15  # the LLM share within which a cascade should reach the LLM's accuracy
# published BFCL accuracies (%) of two 0.5B models, per category
PUBLISHED = {
    "Qwen2.5-0.5B-Instruct (floor)": {"simple_python": 61.2, "multiple": 78.0, "parallel": 60.0,
                                      "parallel_multiple": 50.0, "irrelevance": 46.2},
    "Hammer2.1-0.5b (stretch)": {"simple_python": 68.0, "multiple": 83.0, "parallel": 71.5,
                                 "parallel_multiple": 54.0, "irrelevance": 73.9},
}


def harvest_rows(store: Any, run_id: int) -> dict[str, Any]:
    from supertiny.harvest.queries import run_status

    status = run_status(store, run_id)
    rows = [{"category": row["category"], "tasks": row["tasks"], "pass_at_1": row["pass_rate"],
             "pass_at_n": row["pass_at_n"], "pass_at_n_interval": row["pass_at_n_interval"], "kept": row["kept"]}
            for row in status["categories"]]
    rows.append({"category": "overall", "tasks": status["tasks"], "pass_at_1": status["pass_rate"],
                 "pass_at_n": status["pass_at_n"], "pass_at_n_interval": status["pass_at_n_interval"],
                 "kept": status["kept"]})
    return {"run": run_id, "teacher": status["teacher"], "samples_per_task": status["params"]["samples_per_task"],
            "temperature": status["params"]["temperature"], "use_prompt": status["params"]["use_prompt"],
            "guided": bool(status["params"].get("guided")), "elapsed_s": status["elapsed_s"], "rows": rows}


def reward_curves(store: Any, models: list[str]) -> dict[str, list[list[float]]]:
    from supertiny.models.versions import get_model_version

    curves = {}
    for name in models:
        metrics = get_model_version(store, name).metrics or {}
        if metrics.get("reward_curve"):
            curves[name] = metrics["reward_curve"]
    return curves


def gate_records(store: Any, tiny: str, llm: str, domain: str, split: str, measure: str = "mean",
                 gate_features: list[str] | None = None) -> tuple[list[Any], str, str]:
    """The calibration records of the cascade TINY -> LLM on the two evaluations (``NAME:guided``: the guided one,
    as a route with ``guided`` serves that role), confidences by ``measure`` (a learned gate: on ``gate_features``,
    default all, each task scored out of fold), where they came from, and the gate's label."""
    from supertiny.eval.queries import compared_entry
    from supertiny.policy.calibrate import (
        gate_examples_from_evaluations,
        learned_gate_records,
        records_from_evaluations,
    )
    from supertiny.policy.learned_gate import FOLDS

    (tiny_name, tiny_guided), (llm_name, llm_guided) = compared_entry(tiny), compared_entry(llm)
    guided = [role for role, on in (("tiny", tiny_guided), ("llm", llm_guided)) if on]
    if measure != LEARNED:
        records, source = records_from_evaluations(store, tiny_name, llm_name, domain, split, guided=guided,
                                                   measure=measure)
        return records, source, measure
    examples, source = gate_examples_from_evaluations(store, tiny_name, llm_name, domain, split, guided=guided)
    records, gate = learned_gate_records(examples, gate_features)
    label = f"{LEARNED} ({', '.join(gate_features)})" if gate_features else LEARNED
    return records, f"{source}; gate on {', '.join(gate.features)}, confidences out of {FOLDS} folds", label


def cascade_rows(records: list[Any], tiny: str, llm: str, source: str, label: str) -> dict[str, Any]:
    """The cascade's accuracy / LLM-share curve over ``records`` (see :func:`gate_records`), against random
    routing."""
    from supertiny.eval.stats import wilson_interval
    from supertiny.policy.calibrate import cascade_curve

    n = len(records)
    tiny_accuracy = sum(bool(record.tiny_correct) for record in records) / n
    llm_accuracy = sum(bool(record.llm_correct) for record in records) / n
    points = []
    for point in cascade_curve(records):
        low, high = wilson_interval(round((point.accuracy or 0) * n), n)
        random_accuracy = (1 - point.llm_share) * tiny_accuracy + point.llm_share * llm_accuracy
        points.append({"threshold": point.threshold, "llm_share": point.llm_share, "accuracy": point.accuracy,
                       "interval": [round(low, 4), round(high, 4)], "random": round(random_accuracy, 4),
                       "gain": round((point.accuracy or 0) - random_accuracy, 4)})
    reaching = [point for point in points if (point["accuracy"] or 0) >= llm_accuracy]
    inside = [point for point in points if 0 < point["llm_share"] < 1]
    within = [point for point in points if point["llm_share"] <= GATE_SHARE + 1e-12]
    return {"tiny": tiny, "llm": llm, "confidence": label, "source": source, "tasks": n,
            "tiny_accuracy": tiny_accuracy, "llm_accuracy": llm_accuracy, "points": points,
            "best_within_gate_share": max(within, key=lambda point: point["accuracy"] or 0) if within else None,
            "share_reaching_llm": min((point["llm_share"] for point in reaching), default=None),
            "best_gain": max(inside, key=lambda point: point["gain"]) if inside else None}


def gates_paired(first: tuple[list[Any], dict[str, Any]], other: tuple[list[Any], dict[str, Any]],
                 share: float) -> dict[str, Any]:
    """Two gates on the same tasks, each at its most accurate threshold escalating at most ``share``: their
    accuracies and the exact McNemar p of the difference, task by task."""
    from supertiny.eval.stats import mcnemar_p
    from supertiny.policy.calibrate import cascade_outcomes

    def at_share(gate: tuple[list[Any], dict[str, Any]]) -> tuple[dict[str, Any], list[bool | None]]:
        records, entry = gate
        point = max((point for point in entry["points"] if point["llm_share"] <= share + 1e-12),
                    key=lambda point: (point["accuracy"] or 0, -point["llm_share"]))
        return point, cascade_outcomes(records, point["threshold"])

    (first_point, first_outcomes), (other_point, other_outcomes) = at_share(first), at_share(other)
    only_other = sum(bool(b) and not a for a, b in zip(first_outcomes, other_outcomes, strict=True))
    only_first = sum(bool(a) and not b for a, b in zip(first_outcomes, other_outcomes, strict=True))
    return {"gate": other[1]["confidence"], "against": first[1]["confidence"], "share": share,
            "gate_point": other_point, "against_point": first_point, "only_gate": only_other,
            "only_against": only_first, "p_value": mcnemar_p(only_other, only_first)}


def published_check(compared: dict[str, Any]) -> dict[str, dict[str, dict[str, bool]]]:
    """For each model and each published reference: whether it reaches the reference in every category."""
    by_category = {row["category"]: row for row in compared["rows"]}
    checks: dict[str, dict[str, dict[str, bool]]] = {}
    for model in compared["models"]:
        checks[model] = {}
        for reference, figures in PUBLISHED.items():
            checks[model][reference] = {
                category: by_category.get(category, {}).get(model) is not None
                and by_category[category][model] * 100 >= figure
                for category, figure in figures.items()}
    return checks


def cell(row: dict[str, Any], model: str) -> str:
    if row.get(model) is None:
        return "-"
    low, high = row[f"interval:{model}"]
    return f"{row[model]:.1%} [{low * 100:.1f}, {high * 100:.1f}]"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Distillation report ({result['created']})", "", f"{result['machine']}", ""]
    for harvest in result.get("harvests", []):
        lines += [f"## Prototype teacher: harvest run {harvest['run']} ({harvest['teacher']}, "
                  f"{'guided' if harvest.get('guided') else 'free'} decoding, "
                  f"{harvest['samples_per_task']} samples a task at temperature {harvest['temperature']}, "
                  f"domain prompt {'on' if harvest['use_prompt'] else 'off'}, {harvest['elapsed_s'] or 0:.0f} s)", "",
                  f"| category | tasks | pass@1 | pass@{harvest['samples_per_task']} [95% CI] | records kept |",
                  "|---|---|---|---|---|"]
        for row in harvest["rows"]:
            low, high = row["pass_at_n_interval"]
            lines.append(f"| {row['category']} | {row['tasks']} | {row['pass_at_1']:.1%} | {row['pass_at_n']:.1%} "
                         f"[{low * 100:.1f}, {high * 100:.1f}] | {row['kept']} |")
        lines.append("")
    compared = result["compared"]
    models = compared["models"]
    n = next(row[f"n:{models[0]}"] for row in compared["rows"] if row["category"] == "overall")
    lines += [f"## `{result['domain']}` {result['split']} split: accuracy [95% Wilson interval] ({n} tasks)", "",
              "| category | " + " | ".join(f"`{model}`" for model in models) + " |",
              "|---|" + "---|" * len(models)]
    for row in compared["rows"]:
        lines.append(f"| {row['category']} | " + " | ".join(cell(row, model) for model in models) + " |")
    lines += ["", f"## Against the raw teacher `{models[0]}` (exact McNemar on the tasks both answered)", "",
              "| model | difference | right only for the model | right only for the teacher | p |",
              "|---|---|---|---|---|"]
    for test in compared["paired"]:
        difference = "-" if test["difference"] is None else f"{test['difference'] * 100:+.1f} points"
        lines.append(f"| `{test['model']}` | {difference} | {test['only_model']} | {test['only_baseline']} "
                     f"| {format_p_value(test['p_value'])} |")
    if result.get("published"):
        lines += ["", "## Published 0.5B figures reached in every category", "",
                  "| model | " + " | ".join(PUBLISHED) + " |", "|---|" + "---|" * len(PUBLISHED)]
        for model, checks in result["published"].items():
            cells = []
            for reference in PUBLISHED:
                missed = [category for category, reached in checks[reference].items() if not reached]
                cells.append("yes" if not missed else f"no ({', '.join(missed)})")
            lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    cascade = result.get("cascade")
    if cascade:
        reach = cascade["share_reaching_llm"]
        best = cascade["best_gain"]
        lines += ["", f"## Cascade `{cascade['tiny']}` -> `{cascade['llm']}` on the same {cascade['tasks']} tasks", "",
                  f"tiny alone {cascade['tiny_accuracy']:.1%}, LLM alone {cascade['llm_accuracy']:.1%}; reaches the "
                  f"LLM's accuracy at " + (f"{reach:.0%} escalated" if reach is not None else "no share below 100%")
                  + (f"; largest gain over random routing: {best['gain'] * 100:+.1f} points at {best['llm_share']:.0%}"
                     f" escalated" if best else ""), "",
                  "| threshold | escalated | cascade [95% CI] | random routing at that share | gain |",
                  "|---|---|---|---|---|"]
        stride = max(1, len(cascade["points"]) // 20)
        shown = cascade["points"][::stride]
        if shown[-1] is not cascade["points"][-1]:
            shown.append(cascade["points"][-1])
        for point in shown:
            low, high = point["interval"]
            lines.append(f"| {point['threshold']:.4g} | {point['llm_share']:.0%} | {point['accuracy']:.1%} "
                         f"[{low * 100:.1f}, {high * 100:.1f}] | {point['random']:.1%} | {point['gain'] * 100:+.1f} |")
    measures = result.get("cascade_by_confidence") or []
    if len(measures) > 1:
        lines += ["", f"## The cascade's gate by confidence measure (same {measures[0]['tasks']} tasks)", "",
                  f"| confidence | reaches the LLM's accuracy at | largest gain over random routing | best at <= "
                  f"{GATE_SHARE:.0%} escalated [95% CI] |", "|---|---|---|---|"]
        for entry in measures:
            reach, best, capped = entry["share_reaching_llm"], entry["best_gain"], entry["best_within_gate_share"]
            capped_cell = (f"{capped['accuracy']:.1%} [{capped['interval'][0] * 100:.1f}, "
                           f"{capped['interval'][1] * 100:.1f}] at {capped['llm_share']:.0%} "
                           f"(random {capped['random']:.1%})" if capped else "-")
            lines.append(f"| {entry['confidence']} | " + (f"{reach:.0%} escalated" if reach is not None else "never")
                         + " | " + (f"{best['gain'] * 100:+.1f} points at {best['llm_share']:.0%}" if best else "-")
                         + f" | {capped_cell} |")
    paired = result.get("gates_paired") or []
    if paired:
        lines += ["", f"## Each gate against `{paired[0]['against']}` at the same share of escalations (exact McNemar "
                  "on the tasks' outcomes)", "", "| gate | at most escalated | gate | against | right only with the "
                  "gate / only with the other | p |", "|---|---|---|---|---|---|"]
        for row in paired:
            gate, against = row["gate_point"], row["against_point"]
            lines.append(f"| {row['gate']} | {row['share']:.0%} | {gate['accuracy']:.1%} at {gate['llm_share']:.0%} "
                         f"| {against['accuracy']:.1%} at {against['llm_share']:.0%} | {row['only_gate']} / "
                         f"{row['only_against']} | {format_p_value(row['p_value'])} |")
    for model, curve in result.get("reward_curves", {}).items():
        lines += ["", f"## grpo reward of `{model}` (mean verifier reward per logged step)", "",
                  ", ".join(f"{step}: {reward:.2f}" for step, reward in curve)]
    return "\n".join(lines) + "\n"


def _short_gate_label(label: str) -> str:
    """A gate's label for a legend: a learned gate's long feature list as its count."""
    if "(" in label and len(label) > 40:
        return f"{label.split(' (')[0]} ({label.count(',') + 1} features)"
    return label


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = result["compared"]
    models = compared["models"]
    curves = result.get("reward_curves", {})
    cascade = result.get("cascade")
    panels = 1 + bool(curves) + bool(cascade)
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    left = axes[0][0]
    rows = compared["rows"]
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        xs, heights, errors = [], [], [[], []]
        for position, row in enumerate(rows):
            if row.get(model) is None:
                continue
            low, high = row[f"interval:{model}"]
            xs.append(position + index * width)
            heights.append(row[model] * 100)
            errors[0].append(row[model] * 100 - low * 100)
            errors[1].append(high * 100 - row[model] * 100)
        left.bar(xs, heights, width, yerr=errors, capsize=2, label=model)
    left.set_xticks([position + 0.4 - width / 2 for position in range(len(rows))],
                    [row["category"] for row in rows], rotation=20)
    left.set(ylabel="accuracy % (95% Wilson interval)", ylim=(0, 100),
             title=f"{result['domain']} {result['split']}")
    left.legend(fontsize=7)
    if cascade:
        axis = axes[0][1]
        points = cascade["points"]
        shares = [point["llm_share"] * 100 for point in points]
        axis.plot(shares, [point["accuracy"] * 100 for point in points], marker=".",
                  label=f"cascade ({cascade.get('confidence', 'mean')} confidence)")
        axis.fill_between(shares, [point["interval"][0] * 100 for point in points],
                          [point["interval"][1] * 100 for point in points], alpha=0.2)
        for entry in (result.get("cascade_by_confidence") or [])[1:]:
            axis.plot([point["llm_share"] * 100 for point in entry["points"]],
                      [point["accuracy"] * 100 for point in entry["points"]],
                      label=f"cascade ({_short_gate_label(entry['confidence'])})")
        axis.plot(shares, [point["random"] * 100 for point in points], linestyle="--", label="random routing")
        # the curves differ by a few points: a scale from 0 would flatten them into one line
        lowest = min(point["interval"][0] for point in points) * 100
        highest = max(point["interval"][1] for point in points) * 100
        axis.set(xlabel="requests escalated to the LLM (%)", ylabel="accuracy % (95% interval)",
                 ylim=(max(0.0, lowest - 5), min(100.0, highest + 5)),
                 title=f"cascade {cascade['tiny']} -> {cascade['llm']}")
        axis.legend(fontsize=7)
    if curves:
        right = axes[0][-1]
        for model, curve in curves.items():
            right.plot([step for step, _ in curve], [reward for _, reward in curve], marker="o", label=model)
        right.set(xlabel="optimizer step", ylabel="mean verifier reward", ylim=(0, 1), title="grpo reward")
        right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="bfcl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--teacher", required=True, help="The raw teacher: every model is tested against it.")
    parser.add_argument("--models", required=True, help="Comma-separated registered models, each evaluated on the "
                        "split (`supertiny eval run`); NAME:guided takes its guided evaluation.")
    parser.add_argument("--harvest-run", type=int, action="append", default=[],
                        help="The prototype teacher's harvest run (repeatable: e.g. its free and guided runs).")
    parser.add_argument("--grpo", default="", help="Comma-separated grpo models whose reward curves to draw (evaluated "
                        "or not).")
    parser.add_argument("--cascade", metavar="TINY", help="Draw the cascade TINY -> the teacher on the same tasks.")
    parser.add_argument("--cascade-llm", metavar="LLM", help="The cascade's LLM tier (default: --teacher); "
                        "NAME:guided for a route that decodes it guided.")
    parser.add_argument("--cascade-confidence", action="append", choices=GATE_MEASURES, default=[],
                        help="The cascade gate's confidence measure (repeatable: the first is tabled in full, every "
                             "one is compared and drawn; default: mean).")
    parser.add_argument("--gate-features", action="append", default=[], metavar="F1,F2",
                        help="Also compare a learned gate on just these features (repeatable: one gate each).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    try:
        result = report(args)
    except SupertinyError as exc:  # a model without an evaluation, a run that does not exist: one line
        parser.exit(2, f"error: {exc}\n")
    write_result_files(args.out, "distillation", result, markdown(result), lambda path: plot(result, path))
    print(markdown(result))
    return result


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Every section of the report, read from the store."""
    from supertiny.config import get_settings
    from supertiny.eval.queries import compare, compared_entry
    from supertiny.plugins import load_plugins
    from supertiny.store.session import open_store

    load_plugins()
    store = open_store(get_settings())
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    compared = compare(store, [args.teacher, *models], args.domain, args.split)
    result: dict[str, Any] = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                              "domain": args.domain, "split": args.split, "compared": compared,
                              "reward_curves": reward_curves(store, [*(compared_entry(model)[0] for model in models),
                                                                     *filter(None, args.grpo.split(","))])}
    if args.harvest_run:
        result["harvests"] = [harvest_rows(store, run) for run in args.harvest_run]
    if args.cascade:
        llm = args.cascade_llm or args.teacher
        gates = [(measure, None) for measure in dict.fromkeys(args.cascade_confidence or ["mean"])]
        gates += [(LEARNED, [name.strip() for name in features.split(",") if name.strip()])
                  for features in args.gate_features]
        curves = []
        for measure, features in gates:
            records, source, label = gate_records(store, args.cascade, llm, args.domain, args.split, measure, features)
            curves.append((records, cascade_rows(records, args.cascade, llm, source, label)))
        result["cascade"], result["cascade_by_confidence"] = curves[0][1], [entry for _, entry in curves]
        # each other gate against the first where it reaches the LLM's accuracy, and at the issue's share
        result["gates_paired"] = [gates_paired(curves[0], curve, share) for curve in curves[1:]
                                  for share in dict.fromkeys(filter(None, (curve[1]["share_reaching_llm"],
                                                                           GATE_SHARE)))]
    if args.domain == "bfcl":
        result["published"] = published_check(compared)
    return result


if __name__ == "__main__":
    main()
