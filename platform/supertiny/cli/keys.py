"""``supertiny keys``: API keys of the server."""

import click

from supertiny.cli.app import json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.store.session import open_store


@click.group()
def keys() -> None:
    """API keys for the server (stored salted and hashed). From the first key on, requests need
    'Authorization: Bearer <key>' (`supertiny serve --auth` sets it explicitly); revoking keys never opens the
    server."""


@keys.command("create")
@click.argument("name")
@pass_settings
def create_command(settings: Settings, name: str) -> None:
    """Create a key called NAME and print it (it is shown only this once)."""
    from supertiny.serve.auth import create_key

    row, secret = create_key(open_store(settings), name)
    click.echo(secret)
    click.echo(f"key {row.name!r} created ({row.prefix}...); it is not stored and cannot be shown again", err=True)


@keys.command("revoke")
@click.argument("name")
@pass_settings
def revoke_command(settings: Settings, name: str) -> None:
    """Revoke the key NAME (servers refuse it within seconds)."""
    from supertiny.serve.auth import any_active_key, revoke_key

    store = open_store(settings)
    row = revoke_key(store, name)
    click.echo(f"key {row.name!r} ({row.prefix}...) revoked")
    if not any_active_key(store):
        click.echo("warning: no active key is left: the server refuses every request until one is created "
                   "(`supertiny keys create NAME`)", err=True)


@keys.command("list")
@json_option
@pass_settings
def list_command(settings: Settings, as_json: bool) -> None:
    """Every key: name, prefix, created, revoked (never the secret)."""
    from supertiny.serve.auth import list_keys

    rows = list_keys(open_store(settings))
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no API keys: the server accepts every request (`supertiny keys create NAME`)")
        return
    print_table(rows, ["name", "prefix", "active", "created", "revoked"])
