"""``supertiny plugins``: what is installed and which hooks each plugin implements."""

import dataclasses

import click

from supertiny.cli.app import json_option, print_json, print_table
from supertiny.plugins import list_plugins


@click.group()
def plugins() -> None:
    """Installed plugins (entry-point group ``supertiny``)."""


@plugins.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """List plugins with the hooks each implements. Exits 1 if any plugin failed to load."""
    infos = [dataclasses.asdict(info) for info in list_plugins()]
    if as_json:
        print_json(infos)
    else:
        print_table(infos, ["name", "distribution", "version", "builtin", "hooks", "error"])
    if any(info["error"] for info in infos):
        raise SystemExit(1)
