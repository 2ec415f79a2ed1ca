"""``supertiny serve`` and ``supertiny demo``: the long-running entry points."""

import click

from supertiny.errors import SupertinyError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the OpenAI-compatible API, routing each request by its route's stored policy."""
    raise SupertinyError("the server is not part of this build yet (issue #7)")


@click.command()
@click.option("--quick", is_flag=True, help="A small subset for a first look (about 10 minutes).")
def demo(quick: bool) -> None:
    """Run the whole pipeline end to end on the embedded default and print a report."""
    raise SupertinyError("the end-to-end demo is not part of this build yet (issue #8)")
