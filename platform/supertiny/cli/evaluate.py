"""``supertiny eval``: evaluation of models on a domain."""

import click


@click.group("eval")
def eval_group() -> None:
    """Evaluate models on a domain split: per-category accuracy, latency, size."""
