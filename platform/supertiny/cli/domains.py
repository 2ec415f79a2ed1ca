"""``supertiny domains``: the domain plugins and their tasks."""

import click


@click.group()
def domains() -> None:
    """Domains: tools, tasks with splits and categories, and a verifier (from plugins)."""
