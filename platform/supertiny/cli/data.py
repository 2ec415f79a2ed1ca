"""``supertiny data``: immutable dataset snapshots and their export."""

from pathlib import Path

import click

from supertiny.cli.app import json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.data import export, snapshot
from supertiny.store.session import open_store


@click.group()
def data() -> None:
    """Datasets: versioned, immutable snapshots of verified samples or request logs."""


@data.command("snapshot")
@click.option("--name", required=True, help="Dataset name; each snapshot is a new version of it.")
@click.option("--run", "runs", type=int, multiple=True, help="Harvest run id (repeatable).")
@click.option("--logs", "logs_route", help="Take logged traffic of this server route instead.")
@click.option("--verdict", type=click.Choice(["pass", "fail", "unknown"]), help="Keep samples with this verdict.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "dev", "test"]),
              help="Keep tasks of this split (repeatable).")
@click.option("--served-by", help="With --logs: keep answers served by this model.")
@click.option("--distinct", is_flag=True, help="With --run: keep one of a task's samples that give the same answer "
              "(several samples of a task often agree word for word).")
@click.option("--note", help="Free text stored with the snapshot.")
@json_option
@pass_settings
def snapshot_command(settings: Settings, name: str, runs: tuple[int, ...], logs_route: str | None,
                     verdict: str | None, splits: tuple[str, ...], served_by: str | None, distinct: bool,
                     note: str | None, as_json: bool) -> None:
    """Create a new immutable version of dataset NAME."""
    store = open_store(settings)
    source = snapshot.SnapshotSource(runs=runs, logs_route=logs_route, verdict=verdict, splits=splits,
                                     served_by=served_by, distinct=distinct)
    dataset = snapshot.create_snapshot(store, name, source, note)
    if as_json:
        print_json(snapshot.snapshot_as_dict(dataset))
    else:
        click.echo(f"dataset {dataset.name}@{dataset.version}: {dataset.n_items} items")


@data.command("list")
@json_option
@pass_settings
def list_command(settings: Settings, as_json: bool) -> None:
    """Every snapshot, with items per split."""
    rows = snapshot.list_snapshots(open_store(settings))
    if as_json:
        print_json(rows)
        return
    print_table(rows, ["ref", "domain", "items", "splits", "created_at", "note"],
                formatters={"splits": lambda splits: " ".join(f"{k}:{v}" for k, v in sorted(splits.items()))})


@data.command("show")
@click.argument("ref")
@click.option("--items", "n_items", default=3, show_default=True, help="Records to print.")
@json_option
@pass_settings
def show_command(settings: Settings, ref: str, n_items: int, as_json: bool) -> None:
    """One snapshot (NAME or NAME@VERSION) and its first records."""
    store = open_store(settings)
    dataset = snapshot.get_snapshot(store, ref)
    items = snapshot.snapshot_items(store, dataset)
    splits: dict[str, int] = {}
    for item in items:
        splits[item.split] = splits.get(item.split, 0) + 1
    summary = snapshot.snapshot_as_dict(dataset, splits)
    records = [{"position": item.position, "split": item.split, "category": item.category,
                **export.chat_record(item)} for item in items[:n_items]]
    if as_json:
        print_json({**summary, "records": records})
        return
    print_json(summary)
    for record in records:
        click.echo(f"--- item {record['position']} ({record['split']}, {record['category']})")
        for message in record["messages"]:
            calls = " ".join(f"{call['function']['name']}({call['function']['arguments']})"
                             for call in message.get("tool_calls") or [])
            click.echo(f"{message['role']:>9}: {(message.get('content') or '')[:200]} {calls}".rstrip())


@data.command("export")
@click.argument("ref")
@click.option("--format", "fmt", type=click.Choice(export.FORMATS), default="jsonl", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder (a file per split), or a .jsonl file with --split.")
@click.option("--split", help="Export only this split.")
@pass_settings
def export_command(settings: Settings, ref: str, fmt: str, out: Path, split: str | None) -> None:
    """Write a snapshot in the OpenAI chat format with tools (JSONL, or a Hugging Face dataset)."""
    store = open_store(settings)
    dataset = snapshot.get_snapshot(store, ref)
    written = export.export_items(snapshot.snapshot_items(store, dataset, split), out, fmt)
    for path in written:
        click.echo(f"wrote {path}")
