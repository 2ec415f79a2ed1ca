"""What every command shares: error handling, settings, the store, and output as table or JSON."""

import dataclasses
import datetime as dt
import json
import sys
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from supertiny.config import Settings
from supertiny.errors import SupertinyError

pass_settings = click.make_pass_decorator(Settings)


class SupertinyGroup(click.Group):
    """A click group that turns SupertinyError into ``error: <message>`` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SupertinyError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: the next run of the same command resumes", err=True)
            ctx.exit(130)


def json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=json_default))


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[str],
                formatters: dict[str, Callable[[Any], str]] | None = None) -> None:
    """Print rows as an aligned plain-text table."""
    formatters = formatters or {}
    cells = [[formatters.get(col, _cell)(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)]
    out = sys.stdout
    out.write("  ".join(col.upper().ljust(widths[i]) for i, col in enumerate(columns)).rstrip() + "\n")
    for line in cells:
        out.write("  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def config_options(config_class: type, reserved: Sequence[str] = ()) -> list[click.Option]:
    """One ``--option`` per field of a config dataclass: type, default, choices and help from the field.
    ``reserved`` names the command's own parameters, which no field may take."""
    hints = typing.get_type_hints(config_class)
    options = []
    for field in dataclasses.fields(config_class):
        if field.name in reserved:
            raise TypeError(f"{config_class.__name__}.{field.name} clashes with an option of the command")
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = field.metadata.get("help", "")
        kind = _base_type(hints[field.name])
        if kind is bool:
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", field.name], default=default, show_default=True,
                                        help=help_text))
            continue
        click_type: Any = click.Choice(field.metadata["choices"]) if "choices" in field.metadata else kind
        options.append(click.Option([flag, field.name], type=click_type, default=default,
                                    show_default=default is not None, help=help_text))
    return options


def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; anything not a plain scalar is read as a string."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    kind = arguments[0] if arguments else hint
    return kind if kind in (bool, int, float, str) else str


def serving_line(model: Any) -> str:
    """One line saying what runs a model (an engine, or in-process and why): a ChatModel or its LangChain
    adapter."""
    inner = getattr(model, "model", model)
    capabilities = getattr(inner, "capabilities", None)
    if capabilities is None:
        return f"LangChain {type(model).__name__}"
    if capabilities.local:
        return f"{capabilities.engine} (no engine runs for it: `supertiny engine start {inner.name}`)"
    return capabilities.engine


def format_params(value: int | None) -> str:
    """A parameter count: ``1.54B``, ``494.0M`` or ``120,000``."""
    if value is None:
        return "-"
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:,}"


def format_bytes(value: int | None) -> str:
    """A size in decimal units: ``988.10 MB``."""
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return "-"  # pragma: no cover


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
