"""``supertiny train``: stage 2. One subcommand per registered trainer (sft, rft, dpo, grpo, kd and any
plugin's); each command's options are generated from the trainer's config dataclass."""

from typing import Any

import click

from supertiny.cli.app import config_options, pass_settings, print_json
from supertiny.config import Settings

COMMON_OPTIONS = ("student", "data", "teacher", "name", "domain", "as_json", "keep_checkpoints", "memory_check")


class TrainGroup(click.Group):
    """Subcommands come from the trainer registry, so a plugin's trainer is a command too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from supertiny.registry import get_trainers

        return sorted(set(super().list_commands(ctx)) | set(get_trainers()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from supertiny.registry import get_trainers

        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        trainer = get_trainers().get(cmd_name)
        return trainer_command(trainer) if trainer is not None else None


@click.group(cls=TrainGroup)
def train() -> None:
    """Stage 2: train a student on a snapshot (sft, rft, dpo, grpo, kd).

    Every run becomes a new registered model (parent = the student, dataset = the snapshot); re-running
    an interrupted command resumes it from its last checkpoint.
    """


def trainer_command(trainer: Any) -> click.Command:
    """The ``supertiny train <name>`` command of one trainer."""
    params: list[click.Parameter] = [
        click.Option(["--student"], required=True, metavar="MODEL", help="Registered model to train."),
        click.Option(["--data"], required=True, metavar="SNAPSHOT", help="Dataset snapshot: NAME or NAME@VERSION."),
    ]
    if trainer.teacher != "none":
        required = " [required]" if trainer.teacher == "required" else ""
        params.append(click.Option(["--teacher"], metavar="MODEL",
                                   help=f"{getattr(trainer, 'teacher_help', 'Teacher model.')}{required}"))
    params += [
        click.Option(["--name"], metavar="NEW_NAME", help="Name of the new model (default: "
                     "<student>-<algorithm>-<snapshot>-v<version>)."),
        click.Option(["--domain"], help="Refuse the snapshot unless it comes from this domain."),
        click.Option(["--keep-checkpoints"], is_flag=True, help="Keep the run's checkpoints after the model is saved."),
        click.Option(["--memory-check/--no-memory-check"], default=True, show_default=True,
                     help="Refuse to start when the estimated memory exceeds what is available."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON."),
        *config_options(trainer.config_class, COMMON_OPTIONS),
    ]

    @pass_settings
    def run(settings: Settings, student: str, data: str, name: str | None, domain: str | None,
            keep_checkpoints: bool, memory_check: bool, as_json: bool, teacher: str | None = None,
            **options: Any) -> None:
        from supertiny.progress import BarProgress, quiet_libraries
        from supertiny.store.session import open_store
        from supertiny.train.pipeline import train_model

        quiet_libraries()
        config = trainer.config_class(**options)
        store = open_store(settings)
        progress = BarProgress()
        try:
            result = train_model(store, settings, trainer.name, student=student, data=data, config=config,
                                 teacher=teacher, name=name, domain=domain, progress=progress,
                                 check_memory=memory_check, keep_checkpoints=keep_checkpoints)
        finally:
            progress.close()
        if as_json:
            print_json(result)
            return
        click.echo(summary(result))

    doc = (trainer.config_class.__doc__ or trainer.description or "").strip()
    return click.Command(trainer.name, callback=run, params=params, help=doc,
                         short_help=trainer.description or None)


def summary(result: Any) -> str:
    """Two lines: what was made from what, and how the training went."""
    metrics = result.metrics
    first, last = metrics.get("loss_first"), metrics.get("loss_last")
    loss = f"{first:.4f} -> {last:.4f}" if first is not None and last is not None else "-"
    size = f"{result.size_bytes / 1e6:,.1f} MB" if result.size_bytes else "-"
    params = f"{result.param_count:,}" if result.param_count else "-"
    return (f"model {result.name}: {result.algorithm} of {result.parent} on {result.dataset}\n"
            f"  params {params}  size {size}  steps {metrics.get('steps')}  loss {loss}  "
            f"time {metrics.get('wall_time_s', 0):.1f}s\n"
            f"  saved to {result.path}")
