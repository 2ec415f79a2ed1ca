"""``supertiny policy``: routing policies per route (stored, versioned, applied without a restart)."""

import json
from collections.abc import Sequence
from typing import Any

import click

from supertiny.cli.app import json_option, pass_settings, print_json, print_table
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.store.session import open_store


@click.group()
def policy() -> None:
    """Routing policies: which model answers each route (tiny, llm, cascade, hybrid-token, canary, shadow).

    \b
    A route is the `model` name clients send. Examples:
      supertiny policy set tools cascade -p tiny=qwen-0.5b-sft -p llm=qwen2.5-coder-1.5b-instruct -p threshold=0.6
      supertiny policy set tools canary -p a=qwen-0.5b-kd -p b=qwen-0.5b-sft -p percent=10
      supertiny policy calibrate tools --target-accuracy 0.9
      supertiny policy activate tools 3        # roll back to version 3
    """


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def params_from_pairs(pairs: Sequence[str], params_json: str | None = None) -> dict[str, Any]:
    """A policy's params from ``--params`` JSON and ``KEY=VALUE`` pairs (a value is JSON where it parses)."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            params = json.loads(params_json)
        except ValueError as exc:
            raise InvalidInputError(f"--params is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise InvalidInputError("--params must be a JSON object")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"-p takes KEY=VALUE, got {pair!r}")
        params[key.strip()] = _value(value)
    return params


def _row(row: Any) -> dict[str, Any]:
    from supertiny.policy.policy_store import policy_summary

    return policy_summary(row)


def _param_text(key: str, value: Any) -> str:
    """One param as ``-p`` takes it; a learned gate by what it reads (its weights: ``--json``)."""
    if key == "gate" and isinstance(value, dict):
        return f"<learned on {value.get('examples')} examples: {','.join(value.get('features') or [])}>"
    return ",".join(value) if isinstance(value, list) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    """Params as ``-p`` takes them, without the defaults every policy has."""
    return " ".join(f"{key}={_param_text(key, value)}" for key, value in params.items()
                    if key not in ("timeout_s", "fallback") and value not in (None, []))


@policy.command("kinds")
@json_option
def kinds_command(as_json: bool) -> None:
    """The policy kinds that can be set, with their params."""
    from supertiny.registry import get_policies

    kinds = []
    for name, kind in sorted(get_policies().items()):
        schema = kind.params_model.model_json_schema()
        required = set(schema.get("required", []))
        params = {key: {"required": key in required, "default": spec.get("default"),
                        "description": spec.get("description", "")}
                  for key, spec in schema.get("properties", {}).items()}
        kinds.append({"kind": name, "description": kind.description, "params": params})
    if as_json:
        print_json(kinds)
        return
    for kind in kinds:
        click.echo(f"{kind['kind']}: {kind['description']}")
        for key, spec in kind["params"].items():
            default = "required" if spec["required"] else f"default {spec['default']}"
            click.echo(f"    {key:<16} {default:<26} {spec['description']}")


@policy.command("set")
@click.argument("route")
@click.argument("kind")
@click.option("-p", "--param", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A param (repeatable); values are JSON when they parse (0.6, true), else strings.")
@click.option("--params", "params_json", metavar="JSON", help="All params as one JSON object.")
@click.option("--note", help="Why this version (kept in the history).")
@click.option("--allow-unknown-models", is_flag=True, help="Store it even if a model it names is not registered "
              "yet (the route answers 502 until it is).")
@json_option
@pass_settings
def set_command(settings: Settings, route: str, kind: str, pairs: tuple[str, ...], params_json: str | None,
                note: str | None, allow_unknown_models: bool, as_json: bool) -> None:
    """Store a new version of ROUTE's policy and make it active (servers pick it up within seconds). Every model
    it names must be registered (or a model directory)."""
    from supertiny.policy.policy_store import check_models_exist, set_policy

    store, params = open_store(settings), params_from_pairs(pairs, params_json)
    if not allow_unknown_models:
        check_models_exist(store, kind, params)
    row = set_policy(store, route, kind, params, note)
    if as_json:
        print_json(_row(row))
        return
    click.echo(f"route {row.route}: version {row.version} is active ({row.kind} {_params_text(row.params)})")


@policy.command("list")
@json_option
@pass_settings
def list_command(settings: Settings, as_json: bool) -> None:
    """Every route with its active policy."""
    from supertiny.policy.policy_store import active_rows

    rows = [_row(row) for row in active_rows(open_store(settings))]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no route has an active policy: `supertiny policy set ROUTE KIND -p ...`")
        return
    print_table(rows, ["route", "version", "kind", "params", "created"], {"params": _params_text})


@policy.command("show")
@click.argument("route")
@json_option
@pass_settings
def show_command(settings: Settings, route: str, as_json: bool) -> None:
    """ROUTE's active policy with every param."""
    from supertiny.errors import NotFoundError
    from supertiny.policy.policy_store import active_row

    row = active_row(open_store(settings), route)
    if row is None:
        raise NotFoundError(f"route {route!r} has no active policy",
                            hint="`supertiny policy history` shows its versions")
    summary = _row(row)
    if as_json:
        print_json(summary)
        return
    click.echo(f"route {row.route}  version {row.version}  kind {row.kind}  "
               f"created {summary['created']:%Y-%m-%d %H:%M:%S}")
    for key, value in row.params.items():
        click.echo(f"  {key}: {_param_text(key, value) if key == 'gate' else value}")
    if row.note:
        click.echo(f"  note: {row.note}")


@policy.command("history")
@click.argument("route")
@json_option
@pass_settings
def history_command(settings: Settings, route: str, as_json: bool) -> None:
    """Every version of ROUTE's policy, oldest first; * marks the active one."""
    from supertiny.policy.policy_store import history

    rows = [_row(row) for row in history(open_store(settings), route)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["active"] = "*" if row["active"] else ""
    print_table(rows, ["active", "version", "kind", "params", "created", "note"], {"params": _params_text})


@policy.command("activate")
@click.argument("route")
@click.argument("version", type=int)
@pass_settings
def activate_command(settings: Settings, route: str, version: int) -> None:
    """Make stored VERSION of ROUTE active again (rollback)."""
    from supertiny.policy.policy_store import activate

    row = activate(open_store(settings), route, version)
    click.echo(f"route {row.route}: version {row.version} is active ({row.kind} {_params_text(row.params)})")


@policy.command("disable")
@click.argument("route")
@pass_settings
def disable_command(settings: Settings, route: str) -> None:
    """Stop serving ROUTE (its history stays; `activate` brings a version back)."""
    from supertiny.policy.policy_store import disable

    row = disable(open_store(settings), route)
    click.echo(f"route {row.route}: disabled (version {row.version} was active)")


@policy.command("calibrate")
@click.argument("route")
@click.option("--target-accuracy", type=float, help="Reach this accuracy (0-1) with the least LLM traffic.")
@click.option("--llm-budget", type=float, help="Send at most this fraction (0-1) of requests/tokens to the LLM.")
@click.option("--from", "source", type=click.Choice(["auto", "evaluations", "logs"]), default="auto",
              show_default=True, help="auto: stored evaluations of both models when there are, else logged traffic.")
@click.option("--domain", help="Use evaluations on this domain.")
@click.option("--split", help="Use evaluations on this split.")
@click.option("--tiny-evaluation", type=int, help="Evaluation id of the tiny model (with --llm-evaluation).")
@click.option("--llm-evaluation", type=int, help="Evaluation id of the LLM.")
@click.option("--gate-features", help="A learned gate's features, comma-separated (default: every one the answers "
              "carry; e.g. leave out agreement to serve without sampling).")
@click.option("--dry-run", is_flag=True, help="Print the curve and the choice; store nothing.")
@json_option
@pass_settings
def calibrate_command(settings: Settings, route: str, target_accuracy: float | None, llm_budget: float | None,
                      source: str, domain: str | None, split: str | None, tiny_evaluation: int | None,
                      llm_evaluation: int | None, gate_features: str | None, dry_run: bool, as_json: bool) -> None:
    """Choose ROUTE's cascade / hybrid-token threshold for a target accuracy or an LLM budget (a cascade whose
    confidence is learned also gets its gate fitted)."""
    from supertiny.policy.calibrate import calibrate

    if (target_accuracy is None) == (llm_budget is None):
        raise InvalidInputError("give exactly one of --target-accuracy and --llm-budget")
    result = calibrate(open_store(settings), route, target_accuracy=target_accuracy, llm_budget=llm_budget,
                       source=source, domain=domain, split=split, tiny_evaluation=tiny_evaluation,
                       llm_evaluation=llm_evaluation, dry_run=dry_run,
                       gate_features=[name.strip() for name in gate_features.split(",") if name.strip()]
                       if gate_features else None)
    if as_json:
        print_json(result.summary())
        return
    click.echo(f"{result.kind} route {route}, {result.goal}; from {result.source}")
    shown = _thin(result.points, 20)
    if result.chosen not in shown:
        shown = sorted([*shown, result.chosen], key=lambda point: point.threshold)
    rows = [{"chosen": "*" if point == result.chosen else "", "threshold": point.threshold,
             "llm_share": f"{point.llm_share:.3f}",
             "accuracy": "-" if point.accuracy is None else f"{point.accuracy:.3f}"} for point in shown]
    print_table(rows, ["chosen", "threshold", "llm_share", "accuracy"])
    chosen = result.chosen
    accuracy = "" if chosen.accuracy is None else f", accuracy {chosen.accuracy:.3f}"
    stored = f"stored as version {result.policy.version}" if result.policy else "dry run: nothing stored"
    click.echo(f"threshold {chosen.threshold}: LLM share {chosen.llm_share:.3f}{accuracy}; {stored}")


def _thin(points: list[Any], count: int) -> list[Any]:
    if len(points) <= count:
        return list(points)
    step = (len(points) - 1) / (count - 1)
    return [points[round(index * step)] for index in range(count)]
