"""``supertiny models``: the model registry."""

import click


@click.group()
def models() -> None:
    """Models: pull the offline defaults, register your own, chat, show lineage."""
