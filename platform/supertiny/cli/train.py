"""``supertiny train``: stage 2. One subcommand per registered trainer (sft, rft, dpo, grpo, kd and any
plugin's); each command's options are generated from the trainer's config dataclass."""

from typing import Any

import click

from supertiny.cli.algorithms import AlgorithmGroup
from supertiny.cli.app import print_json


def _present(store: Any, result: Any, options: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
    else:
        click.echo(summary(result))


@click.group(cls=AlgorithmGroup, kind="trainer", present=_present, extra_options=list)
def train() -> None:
    """Stage 2: train a student on a snapshot (sft, rft, dpo, grpo, kd, heal).

    Every run becomes a new registered model (parent = the student, dataset = the snapshot); re-running
    an interrupted command resumes it from its last checkpoint.
    """


def summary(result: Any) -> str:
    """Two lines: what was made from what, and how the training went."""
    metrics = result.metrics
    first, last = metrics.get("loss_first"), metrics.get("loss_last")
    loss = f"{first:.4f} -> {last:.4f}" if first is not None and last is not None else "-"
    size = f"{result.size_bytes / 1e6:,.1f} MB" if result.size_bytes else "-"
    params = f"{result.param_count:,}" if result.param_count else "-"
    return (f"model {result.name}: {result.algorithm} of {result.parent} on {result.dataset}\n"
            f"  params {params}  size {size}  steps {metrics.get('steps')}  loss {loss}  "
            f"time {metrics.get('wall_time_s', 0):.1f}s\n"
            f"  saved to {result.path}")
