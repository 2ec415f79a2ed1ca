"""``supertiny compress``: stage 3. One subcommand per registered compressor (prune, quantize and any
plugin's); each command's options are generated from the compressor's config dataclass."""

from typing import Any

import click

from supertiny.cli.app import pass_settings, print_json, print_table
from supertiny.config import Settings

COMMON_OPTIONS = ("model", "data", "name", "domain", "heal", "heal_name", "heal_max_steps", "heal_epochs",
                  "heal_learning_rate", "eval_domain", "eval_split", "eval_per_category", "eval_limit", "speed",
                  "as_json")


class CompressGroup(click.Group):
    """Subcommands come from the compressor registry, so a plugin's compressor is a command too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from supertiny.registry import get_compressors

        return sorted(set(super().list_commands(ctx)) | set(get_compressors()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from supertiny.registry import get_compressors

        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        compressor = get_compressors().get(cmd_name)
        return compressor_command(compressor) if compressor is not None else None


@click.group(cls=CompressGroup)
def compress() -> None:
    """Stage 3: shrink a student (prune, quantize, gguf).

    Every run becomes a new registered model whose parent is the input model (stage pruned or
    quantized); `prune --heal` then distils the pruned model from its parent (stage healed). The
    summary compares parameters, bytes on disk, tokens/s and, with --eval-domain, accuracy.
    """


def compressor_command(compressor: Any) -> click.Command:
    """The ``supertiny compress <name>`` command of one compressor."""
    from supertiny.cli.app import config_options

    params: list[click.Parameter] = [
        click.Option(["--model"], required=True, metavar="MODEL", help="Registered model to compress."),
    ]
    if compressor.data != "none":
        required = " [required]" if compressor.data == "required" else ""
        params.append(click.Option(["--data"], metavar="SNAPSHOT", help=f"{compressor.data_help}{required}"))
    params += [
        click.Option(["--name"], metavar="NEW_NAME", help="Name of the new model (default: <model>-<what was done>)."),
        click.Option(["--domain"], help="Refuse the snapshot unless it comes from this domain."),
    ]
    if compressor.healable:
        params += [
            click.Option(["--heal"], is_flag=True, help="Then distil the result from MODEL on --data (the kd trainer; "
                         "a second model, stage healed). `supertiny train heal` gives every option."),
            click.Option(["--heal-name"], metavar="NEW_NAME", help="Name of the healed model (default: <new>-healed)."),
            click.Option(["--heal-max-steps"], type=int, default=-1, show_default=True,
                         help="Healing optimizer steps (-1: --heal-epochs over the snapshot)."),
            click.Option(["--heal-epochs"], type=float, default=1.0, show_default=True, help="Healing epochs."),
            click.Option(["--heal-learning-rate"], type=float, help="Healing learning rate (default: the kd "
                         "trainer's)."),
        ]
    params += [
        click.Option(["--eval-domain"], metavar="DOMAIN", help="Evaluate the models before and after on this "
                     "domain."),
        click.Option(["--eval-split"], default="dev", show_default=True, type=click.Choice(["train", "dev", "test"])),
        click.Option(["--eval-per-category"], type=int, metavar="N", help="At most N tasks of each category."),
        click.Option(["--eval-limit"], type=int, metavar="N", help="At most N tasks in all."),
        click.Option(["--speed/--no-speed"], default=True, show_default=True,
                     help="Measure prefill and decode tokens/s before and after."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON."),
    ]
    fields = config_options(compressor.config_class)
    clashes = sorted({option.name for option in fields} & set(COMMON_OPTIONS))
    if clashes:
        raise TypeError(f"{compressor.config_class.__name__} fields clash with common compress options: {clashes}")
    params += fields

    @pass_settings
    def run(settings: Settings, model: str, name: str | None, domain: str | None, eval_domain: str | None,
            eval_split: str, eval_per_category: int | None, eval_limit: int | None, speed: bool, as_json: bool,
            data: str | None = None, heal: bool = False, heal_name: str | None = None, heal_max_steps: int = -1,
            heal_epochs: float = 1.0, heal_learning_rate: float | None = None, **options: Any) -> None:
        from supertiny.compress.pipeline import execute_compression, prepare_compression
        from supertiny.compress.report import ReportOptions
        from supertiny.errors import InvalidInputError
        from supertiny.progress import BarProgress, quiet_libraries
        from supertiny.store.session import open_store
        from supertiny.train.heal_config import HealConfig

        quiet_libraries()
        store = open_store(settings)
        heal_config = None
        if heal:
            if not data:
                raise InvalidInputError("--heal distils on a snapshot: give --data")
            heal_config = HealConfig(max_steps=heal_max_steps, epochs=heal_epochs, learning_rate=heal_learning_rate)
            heal_config.validate()
        progress = BarProgress()
        try:
            prepared = prepare_compression(store, settings, compressor.name, model=model, data=data,
                                           config=compressor.config_class(**options), name=name, domain=domain,
                                           progress=progress)
            result = execute_compression(prepared)
            healed = None
            if heal_config is not None:
                from supertiny.train.heal_trainer import heal_model

                healed = heal_model(store, settings, result.name, data=str(data), teacher=model, name=heal_name,
                                    config=heal_config, domain=domain, progress=progress)
        finally:
            progress.close()
        names = [model, result.name] + ([healed.name] if healed else [])
        report = ReportOptions(speed=speed, eval_domain=eval_domain, eval_split=eval_split,
                               eval_per_category=eval_per_category, eval_limit=eval_limit)
        rows = _reports(store, names, report, quiet=as_json)
        if as_json:
            print_json({"result": result, "healed": healed, "models": rows})
            return
        click.echo(_headline(result, healed))
        _print_models(rows, report)

    doc = (compressor.config_class.__doc__ or compressor.description or "").strip()
    return click.Command(compressor.name, callback=run, params=params, help=doc,
                         short_help=compressor.description or None)


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


def _headline(result: Any, healed: Any) -> str:
    data = f" (calibrated on {result.dataset})" if result.dataset else ""
    lines = [f"model {result.name}: {result.algorithm} of {result.parent}{data}, saved to {result.path}"]
    if healed is not None:
        first, last = healed.metrics.get("loss_first"), healed.metrics.get("loss_last")
        loss = f", kd loss {first:.4f} -> {last:.4f}" if first is not None and last is not None else ""
        lines.append(f"model {healed.name}: healed from {result.parent} on {healed.dataset}{loss}")
    return "\n".join(lines)


def _print_models(rows: list[dict[str, Any]], options: Any) -> None:
    from supertiny.cli.models import _bytes, _params

    columns = ["name", "stage", "params", "size"]
    if options.speed:
        columns += ["prefill tok/s", "decode tok/s"]
    categories: list[str] = []
    if options.eval_domain:
        categories = sorted({category for row in rows for category in row.get("per_category", {})})
        columns += ["accuracy", *categories]
    table = []
    for row in rows:
        line = {"name": row["name"], "stage": row["stage"], "params": _params(row["params"]),
                "size": _bytes(row["size_bytes"]), "prefill tok/s": row.get("prefill_tok_s"),
                "decode tok/s": row.get("decode_tok_s"), "accuracy": _percent(row.get("accuracy"))}
        line.update({category: _percent(row.get("per_category", {}).get(category)) for category in categories})
        table.append(line)
    print_table(table, columns, formatters={"prefill tok/s": _rate, "decode tok/s": _rate})
    for row in rows:
        for key in ("speed_error", "eval_error"):
            if row.get(key):
                click.echo(f"  {row['name']}: {key.replace('_', ' ')}: {row[key]}", err=True)
    if options.eval_domain:
        click.echo(f"accuracy on {options.eval_domain} {options.eval_split}"
                   f" ({rows[0].get('eval_tasks', '-')} tasks a model)")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"
