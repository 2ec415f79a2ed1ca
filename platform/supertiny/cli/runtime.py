"""``supertiny serve`` and ``supertiny demo``: the long-running entry points."""

import click

from supertiny.cli.app import pass_settings
from supertiny.config import Settings
from supertiny.errors import SupertinyError
from supertiny.store.engine import describe_url


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes (each loads its own models).")
@click.option("--preload/--no-preload", default=True, show_default=True,
              help="Open the models of every active route at startup.")
@click.option("--model-concurrency", default=1, show_default=True, type=int,
              help="Requests one in-process model runs at once.")
@click.option("--max-tokens-limit", default=4096, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@pass_settings
def serve(settings: Settings, host: str, port: int, workers: int, preload: bool, model_concurrency: int,
          max_tokens_limit: int, log_level: str) -> None:
    """Serve the OpenAI-compatible API, routing each request by its route's stored policy.

    \b
    POST /v1/chat/completions   model = a route name (`supertiny policy list`)
    GET  /v1/models             the routes with an active policy
    GET  /health, GET /metrics  status and Prometheus metrics
    """
    import os

    import uvicorn

    from supertiny.serve.app import OPTIONS_ENV, ServeOptions, create_app
    from supertiny.store.session import open_store

    if workers < 1:
        raise SupertinyError("--workers must be at least 1")
    open_store(settings)  # migrate once, before any worker starts
    options = ServeOptions(preload=preload, local_model_concurrency=model_concurrency,
                           max_tokens_limit=max_tokens_limit)
    click.echo(f"supertiny serving on http://{host}:{port}/v1 ({workers} worker{'s' if workers > 1 else ''}, "
               f"store {describe_url(settings.database_url)})", err=True)
    if workers == 1:
        uvicorn.run(create_app(settings, options), host=host, port=port, log_level=log_level)
        return
    os.environ["SUPERTINY_DATABASE_URL"] = settings.database_url
    os.environ["SUPERTINY_HOME"] = str(settings.home)
    os.environ[OPTIONS_ENV] = options.to_env()
    uvicorn.run("supertiny.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)


@click.command()
@click.option("--quick", is_flag=True, help="A small subset for a first look (about 10 minutes).")
def demo(quick: bool) -> None:
    """Run the whole pipeline end to end on the embedded default and print a report."""
    raise SupertinyError("the end-to-end demo is not part of this build yet (issue #8)")
