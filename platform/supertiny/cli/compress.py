"""``supertiny compress``: stage 3 compressors."""

import click


@click.group()
def compress() -> None:
    """Stage 3: shrink a student (prune, quantize)."""
