"""``supertiny policy``: routing policies per route."""

import click


@click.group()
def policy() -> None:
    """Routing policies: which model answers each route (tiny, llm, cascade, hybrid-token, ...)."""
