"""The ``supertiny`` command line: a click group whose subcommands stay thin."""

import signal
import sys
from typing import Any

import click

from supertiny import __version__
from supertiny.cli import compress as compress_cli
from supertiny.cli import data, db, domains, engine, evaluate, harvest, keys, models, plugins, policy, train
from supertiny.cli.app import SupertinyGroup, pass_settings
from supertiny.cli.runtime import demo, serve
from supertiny.config import get_settings
from supertiny.plugins import load_plugins, pm, report_plugin_errors

__all__ = ["cli", "main", "pass_settings"]


@click.group(cls=SupertinyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supertiny")
@click.option("--db", "database_url", metavar="URL", help="Database URL (default: $SUPERTINY_DATABASE_URL, "
              "else SQLite in the data dir).")
@click.option("--home", metavar="DIR", help="Data dir for models and artifacts (default: $SUPERTINY_HOME, "
              "else ~/.cache/supertiny).")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, home: str | None) -> None:
    """supertiny: distil a tool-calling LLM into a super-tiny model and serve both behind one API.

    \b
    The pipeline, one command group a stage:
      harvest   run the teacher on a domain's tasks, verify, store  (stage 1)
      data      turn harvested samples or request logs into snapshots
      train     sft / rft / dpo / kd a student on a snapshot         (stage 2)
      compress  prune / quantize a student                          (stage 3)
      eval      per-category accuracy, latency and size
      policy    routing policies: tiny, llm, cascade, hybrid-token, canary, shadow
      serve     the OpenAI-compatible production backend
      engine    vLLM engines that every stage sends its generation to
    """
    ctx.obj = get_settings(database_url=database_url, home=home)


for group in (
    db.db,
    plugins.plugins,
    domains.domains,
    models.models,
    engine.engine,
    harvest.harvest,
    data.data,
    train.train,
    compress_cli.compress,
    evaluate.eval_group,
    policy.policy,
    keys.keys,
    serve,
    demo,
):
    cli.add_command(group)


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a service manager, a CI timeout) stop a command as Ctrl-C does, so that it records
    its run as interrupted and keeps what it finished, instead of dying with the run marked running."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    """Console entry point: load plugins, let them add commands, run the CLI."""
    stop_on_sigterm()
    load_plugins()
    pm.hook.register_commands(cli=cli)
    report_plugin_errors(sys.stderr)
    cli(prog_name="supertiny")
