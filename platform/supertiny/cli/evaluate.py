"""``supertiny eval``: evaluation of models on a domain."""

import click

from supertiny.cli.app import format_percent, json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.eval import queries
from supertiny.eval.runner import EvalConfig, evaluate
from supertiny.eval.stats import format_p_value
from supertiny.store.session import open_store


@click.group("eval")
def eval_group() -> None:
    """Evaluate models on a domain split: per-category accuracy, latency, size."""


@eval_group.command("run")
@click.option("--model", required=True, help="Registered model name.")
@click.option("--domain", required=True)
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "dev", "test"]))
@click.option("--limit", type=int, help="At most N tasks, taken round-robin over categories.")
@click.option("--per-category", type=int, help="At most N tasks of each category.")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable).")
@click.option("--max-new-tokens", default=384, show_default=True)
@click.option("--concurrency", type=int, help="Tasks in flight at once (default: as many as the model batches: "
              "64 on an engine, the dynamic batch in-process).")
@click.option("--with-prompt", is_flag=True, help="Add the domain's system prompt and few-shot examples.")
@click.option("--timeout-s", default=3600.0, show_default=True, type=float, help="Seconds a task waits for its "
              "answer; the tasks in flight share the model, so each takes longer the more there are.")
@click.option("--guided", is_flag=True, help="Decode every answer under the task's tools' JSON Schemas (the "
              "engine's guided decoding, as `harvest run --guided`). Needs MODEL on an engine.")
@click.option("--agreement-samples", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also sample N answers a task and keep the share that agrees with the greedy one: the "
              "cascade's `agreement` confidence, which `policy calibrate` and bench.distillation read from here.")
@click.option("--agreement-temperature", default=0.7, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The temperature of those samples.")
@json_option
@pass_settings
def run_command(settings: Settings, model: str, domain: str, split: str, limit: int | None, per_category: int | None,
                categories: tuple[str, ...], max_new_tokens: int, concurrency: int | None, with_prompt: bool,
                timeout_s: float, guided: bool, agreement_samples: int, agreement_temperature: float,
                as_json: bool) -> None:
    """Evaluate MODEL on a domain split and store the result."""
    from tqdm import tqdm

    store = open_store(settings)
    config = EvalConfig(model=model, domain=domain, split=split, per_category=per_category, limit=limit,
                        categories=categories, max_new_tokens=max_new_tokens, concurrency=concurrency,
                        use_prompt=with_prompt, timeout_s=timeout_s, guided=guided,
                        agreement_samples=agreement_samples, agreement_temperature=agreement_temperature)
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=f"eval {model}", unit="task", total=total, dynamic_ncols=True))
        bars[0].n = done
        bars[0].refresh()

    try:
        evaluation = evaluate(store, config, progress)
    finally:
        for bar in bars:
            bar.close()
    result = queries.evaluation_as_dict(evaluation, model)
    if as_json:
        print_json(result)
        return
    rows = [{"category": category, **stats} for category, stats in sorted(result["per_category"].items())]
    rows.append({"category": "overall", "n": result["n_tasks"], "accuracy": result["accuracy"],
                 "invalid_rate": result["invalid_rate"], "mean_latency_s": result["mean_latency_s"],
                 "tokens_per_request": result["tokens_per_request"]})
    details = evaluation.details or {}
    click.echo(f"evaluation {result['id']}: {model} on {domain}/{split}{', guided' if guided else ''}, served by "
               f"{details.get('engine')}, "
               f"{details.get('concurrency')} tasks in flight, {details.get('wall_s', 0):.0f} s")
    print_table(rows, ["category", "n", "accuracy", "invalid_rate", "mean_latency_s", "tokens_per_request"],
                formatters={"accuracy": format_percent, "invalid_rate": format_percent,
                            "mean_latency_s": lambda v: f"{v:.2f}", "tokens_per_request": lambda v: f"{v:.0f}"})


@eval_group.command("list")
@click.option("--model")
@click.option("--domain")
@json_option
@pass_settings
def list_command(settings: Settings, model: str | None, domain: str | None, as_json: bool) -> None:
    """Stored evaluations."""
    rows = queries.list_evaluations(open_store(settings), model, domain)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["decoding"] = "guided" if (row.get("config") or {}).get("guided") else "free"
    print_table(rows, ["id", "model", "domain", "split", "decoding", "n_tasks", "accuracy", "invalid_rate",
                       "mean_latency_s", "created_at"],
                formatters={"accuracy": format_percent, "invalid_rate": format_percent})


@eval_group.command("compare")
@click.argument("models", nargs=-1, required=True)
@click.option("--domain")
@click.option("--split")
@json_option
@pass_settings
def compare_command(settings: Settings, models: tuple[str, ...], domain: str | None, split: str | None,
                    as_json: bool) -> None:
    """Per-category accuracy of MODELS (their latest evaluations) side by side, each tested against the first.

    MODEL takes its latest free evaluation, MODEL:guided its latest `eval run --guided` one.
    """
    result = queries.compare(open_store(settings), list(models), domain, split)
    if as_json:
        print_json(result)
        return
    names = result["models"]
    cells = [{"category": row["category"], **{name: _with_interval(row, name) for name in names}}
             for row in result["rows"]]
    print_table(cells, ["category", *names])
    for test in result["paired"]:
        click.echo(_paired_line(test))


def _with_interval(row: dict, name: str) -> str:
    """``62.0% [55.8, 67.8] n=250``."""
    if row.get(name) is None:
        return "-"
    low, high = row[f"interval:{name}"]
    return f"{row[name]:.1%} [{low * 100:.1f}, {high * 100:.1f}] n={row[f'n:{name}']}"


def _paired_line(test: dict) -> str:
    if not test["shared_tasks"]:
        return f"{test['model']} vs {test['baseline']}: no task judged by both, no paired test"
    verdict = "a real difference" if test["p_value"] < 0.05 else "not a significant difference"
    return (f"{test['model']} vs {test['baseline']}: {test['difference'] * 100:+.1f} points on "
            f"{test['shared_tasks']} shared tasks ({test['only_model']} right only for {test['model']}, "
            f"{test['only_baseline']} only for {test['baseline']}), McNemar {format_p_value(test['p_value'])}: "
            f"{verdict}")
