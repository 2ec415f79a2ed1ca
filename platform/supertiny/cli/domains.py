"""``supertiny domains``: the domain plugins and their tasks."""

import click

from supertiny.cli.app import json_option, print_json, print_table
from supertiny.domain import SPLITS
from supertiny.registry import get_domains, lookup


@click.group()
def domains() -> None:
    """Domains: tools, tasks with splits and categories, and a verifier (from plugins)."""


@domains.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """Registered domains."""
    rows = [{"name": name, "description": domain.description, "max_steps": domain.max_steps,
             "tools": len(domain.tools())} for name, domain in sorted(get_domains().items())]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "max_steps", "tools", "description"])


@domains.command("show")
@click.argument("name")
@json_option
def show_command(name: str, as_json: bool) -> None:
    """Tasks per split and category of one domain."""
    domain = lookup("domain", name)
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        for task in domain.tasks(split):
            counts.setdefault(task.category, {}).setdefault(split, 0)
            counts[task.category][split] += 1
    rows = [{"category": category, **{split: by_split.get(split, 0) for split in SPLITS}}
            for category, by_split in sorted(counts.items())]
    info = {"name": domain.name, "description": domain.description, "max_steps": domain.max_steps,
            "tools": [tool.name for tool in domain.tools()], "categories": rows}
    if as_json:
        print_json(info)
        return
    click.echo(f"{domain.name}: {domain.description}")
    if info["tools"]:
        click.echo(f"tools: {', '.join(info['tools'])}")
    print_table(rows, ["category", *SPLITS])
