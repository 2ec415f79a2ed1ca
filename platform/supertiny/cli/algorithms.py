"""Command groups whose subcommands are registered algorithms (``train``, ``compress``): one command per
plugin, its options generated from the algorithm's declaration and its config dataclass."""

from collections.abc import Callable
from typing import Any

import click

from supertiny.cli.app import config_options, pass_settings
from supertiny.config import Settings

# what a group does with a run's result: (store, the new model, the group's own options, as_json)
Presenter = Callable[[Any, Any, dict[str, Any], bool], None]


class AlgorithmGroup(click.Group):
    """Subcommands come from the plugin registry of ``kind``, so a plugin's algorithm is a command too.
    ``extra_options`` are the group's own options on every command; ``present`` shows each result."""

    def __init__(self, *args: Any, kind: str, present: Presenter, extra_options: Callable[[], list[click.Option]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind, self.present, self.extra_options = kind, present, extra_options

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._algorithms()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        algorithm = self._algorithms().get(cmd_name)
        return self.algorithm_command(algorithm) if algorithm is not None else None

    def _algorithms(self) -> dict[str, Any]:
        from supertiny.registry import collect

        return collect(self.kind)

    def algorithm_command(self, algorithm: Any) -> click.Command:
        """The ``supertiny <group> <name>`` command of one algorithm."""
        common = common_options(algorithm)
        extra = self.extra_options()
        fields = config_options(algorithm.config_class)
        taken = {option.name for option in common + extra}
        clashes = sorted({option.name for option in fields} & taken)
        if clashes:
            raise TypeError(f"{algorithm.config_class.__name__} fields clash with the common options: {clashes}")
        extra_names = {option.name for option in extra}

        @pass_settings
        def run(settings: Settings, as_json: bool, **values: Any) -> None:
            from supertiny.progress import BarProgress, quiet_libraries
            from supertiny.runs.pipeline import run_algorithm
            from supertiny.store.session import open_store

            quiet_libraries()
            shown = {key: values.pop(key) for key in extra_names}
            inputs = {key: values.pop(key) for key in taken - extra_names - {"as_json"} if key in values}
            store = open_store(settings)
            progress = BarProgress()
            try:
                result = run_algorithm(store, settings, self.kind, algorithm.name,
                                       model=inputs.pop(algorithm.model_option),
                                       config=algorithm.config_class(**values), progress=progress,
                                       check_memory=inputs.pop("memory_check", True), **inputs)
            finally:
                progress.close()
            self.present(store, result, shown, as_json)

        doc = (algorithm.config_class.__doc__ or algorithm.description or "").strip()
        return click.Command(algorithm.name, callback=run, params=[*common, *extra, *fields], help=doc,
                             short_help=algorithm.description or None)


def common_options(algorithm: Any) -> list[click.Option]:
    """The options every run of ``algorithm`` takes: its input model, snapshot, teacher and new name."""
    options = [click.Option([f"--{algorithm.model_option}"], required=True, metavar="MODEL",
                            help=algorithm.model_help)]
    if algorithm.data != "none":
        options.append(click.Option(["--data"], required=algorithm.data == "required", metavar="SNAPSHOT",
                                    help=algorithm.data_help))
    if algorithm.teacher != "none":
        required = " [required]" if algorithm.teacher == "required" and not _has_default_teacher(algorithm) else ""
        options.append(click.Option(["--teacher"], metavar="MODEL", help=f"{algorithm.teacher_help}{required}"))
    options += [
        click.Option(["--name"], metavar="NEW_NAME",
                     help=f"Name of the new model (default: {algorithm.name_pattern})."),
        click.Option(["--domain"], help="Refuse the snapshot unless it comes from this domain."),
    ]
    if algorithm.resumable:
        options.append(click.Option(["--keep-checkpoints"], is_flag=True,
                                    help="Keep the run's checkpoints after the model is saved."))
    if algorithm.checks_memory:
        options.append(click.Option(["--memory-check/--no-memory-check"], default=True, show_default=True,
                                    help="Refuse to start when the estimated memory exceeds what is available."))
    options.append(click.Option(["--json", "as_json"], is_flag=True, help="Print the result as JSON."))
    return options


def _has_default_teacher(algorithm: Any) -> bool:
    from supertiny.runs.algorithm import Algorithm

    return type(algorithm).default_teacher is not Algorithm.default_teacher

