"""``supertiny data``: immutable dataset snapshots."""

import click


@click.group()
def data() -> None:
    """Datasets: versioned, immutable snapshots of verified samples or request logs."""
