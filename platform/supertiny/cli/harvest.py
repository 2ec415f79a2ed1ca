"""``supertiny harvest``: stage 1, the teacher's trajectories into the store."""

import click


@click.group()
def harvest() -> None:
    """Stage 1: run the teacher on a domain's tasks, verify each trajectory, store it."""
