"""``supertiny train``: stage 2 trainers."""

import click


@click.group()
def train() -> None:
    """Stage 2: train a student on a snapshot (sft, rft, dpo, kd)."""
