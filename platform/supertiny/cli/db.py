"""``supertiny db``: create, inspect and verify the store's schema."""

import click

from supertiny.cli.app import json_option, pass_settings, print_json
from supertiny.config import Settings
from supertiny.store import migrate
from supertiny.store.engine import describe_url


@click.group()
def db() -> None:
    """The SQL store: apply migrations, show the revision, check the schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_settings
def upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate every table to REVISION."""
    reached = migrate.upgrade(settings.database_url, revision)
    click.echo(f"database {describe_url(settings.database_url)} is at revision {reached}")


@db.command()
@json_option
@pass_settings
def current(settings: Settings, as_json: bool) -> None:
    """Show the database's revision and the migrations' head."""
    revision, head = migrate.current_revision(settings.database_url), migrate.head_revision()
    if as_json:
        print_json({"url": describe_url(settings.database_url), "current": revision, "head": head,
                    "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else f"behind head {head}: run `supertiny db upgrade`"
    click.echo(f"{describe_url(settings.database_url)}: revision {revision or '(blank)'} ({state})")


@db.command()
@json_option
@pass_settings
def check(settings: Settings, as_json: bool) -> None:
    """Check that the database is at head and that models and migrations agree."""
    report = migrate.check(settings.database_url)
    if as_json:
        print_json({"ok": report.ok, "current": report.current, "head": report.head,
                    "differences": report.differences})
    elif report.ok:
        click.echo(f"ok: revision {report.head} (head); the models and the migrations agree")
    else:
        if report.current != report.head:
            click.echo(f"database at revision {report.current or '(blank)'}, "
                       f"migrations at head {report.head}: run `supertiny db upgrade`")
        for difference in report.differences:
            click.echo(f"difference: {difference}")
    if not report.ok:
        raise SystemExit(1)
