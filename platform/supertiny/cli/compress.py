"""``supertiny compress``: stage 3. One subcommand per registered compressor (prune, quantize, gguf and any
plugin's); each command's options are generated from the compressor's config dataclass."""

from typing import Any

import click

from supertiny.cli.algorithms import AlgorithmGroup
from supertiny.cli.app import format_bytes, format_params, format_percent, print_json, print_table


def report_options() -> list[click.Option]:
    """The options that say what the summary measures on the model before and after."""
    return [
        click.Option(["--eval-domain"], metavar="DOMAIN", help="Evaluate the models before and after on this "
                     "domain."),
        click.Option(["--eval-split"], default="dev", show_default=True, type=click.Choice(["train", "dev", "test"])),
        click.Option(["--eval-per-category"], type=int, metavar="N", help="At most N tasks of each category."),
        click.Option(["--eval-limit"], type=int, metavar="N", help="At most N tasks in all."),
        click.Option(["--speed/--no-speed"], default=True, show_default=True,
                     help="Measure prefill and decode tokens/s before and after."),
    ]


def present(store: Any, result: Any, options: dict[str, Any], as_json: bool) -> None:
    """Compare the input model with the new one: size, speed and, with --eval-domain, accuracy."""
    from supertiny.compress.report import ReportOptions

    report = ReportOptions(**options)
    rows = _reports(store, [result.parent, result.name], report, quiet=as_json)
    if as_json:
        print_json({"result": result, "models": rows})
        return
    data = f" (calibrated on {result.dataset})" if result.dataset else ""
    click.echo(f"model {result.name}: {result.algorithm} of {result.parent}{data}, saved to {result.path}")
    _print_models(rows, report)


@click.group(cls=AlgorithmGroup, kind="compressor", present=present, extra_options=report_options)
def compress() -> None:
    """Stage 3: shrink a student (prune, quantize, gguf).

    Every run becomes a new registered model whose parent is the input model (stage pruned or
    quantized); `supertiny train heal` then distils a pruned model from its parent. The summary
    compares parameters, bytes on disk, tokens/s and, with --eval-domain, accuracy.
    """


def _reports(store: Any, names: list[str], options: Any, quiet: bool) -> list[dict[str, Any]]:
    """Each model's report, with a bar per evaluation."""
    from tqdm import tqdm

    from supertiny.compress.report import model_report

    if not options.speed and not options.eval_domain:
        return [model_report(store, name, options) for name in names]
    bars: dict[str, Any] = {}

    def progress(model: str, done: int, total: int) -> None:
        if model not in bars:
            bars[model] = tqdm(desc=f"eval {model}", unit="task", total=total, dynamic_ncols=True, disable=quiet)
        bars[model].n = done
        bars[model].refresh()
        if done >= total:
            bars[model].close()

    try:
        return [model_report(store, name, options, progress) for name in names]
    finally:
        for bar in bars.values():
            bar.close()


def _print_models(rows: list[dict[str, Any]], options: Any) -> None:
    columns = ["name", "stage", "params", "size"]
    if options.speed:
        columns += ["prefill tok/s", "decode tok/s"]
    categories: list[str] = []
    if options.eval_domain:
        categories = sorted({category for row in rows for category in row.get("per_category", {})})
        columns += ["accuracy", *categories]
    table = []
    for row in rows:
        line = {"name": row["name"], "stage": row["stage"], "params": format_params(row["params"]),
                "size": format_bytes(row["size_bytes"]), "prefill tok/s": row.get("prefill_tok_s"),
                "decode tok/s": row.get("decode_tok_s"), "accuracy": format_percent(row.get("accuracy"))}
        line.update({category: format_percent(row.get("per_category", {}).get(category)) for category in categories})
        table.append(line)
    print_table(table, columns, formatters={"prefill tok/s": _rate, "decode tok/s": _rate})
    for row in rows:
        for key in ("speed_error", "eval_error"):
            if row.get(key):
                click.echo(f"  {row['name']}: {key.replace('_', ' ')}: {row[key]}", err=True)
    if options.eval_domain:
        click.echo(f"accuracy on {options.eval_domain} {options.eval_split}"
                   f" ({rows[0].get('eval_tasks', '-')} tasks a model)")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
