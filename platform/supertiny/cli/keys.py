"""``supertiny keys``: API keys of the server."""

import click


@click.group()
def keys() -> None:
    """API keys for the server (stored salted and hashed)."""
