"""Served routes: the same domain tasks sent through a live ``supertiny serve`` to several routes, each answer
checked by the domain's verifier, side by side in one run.

    python -m bench.served_routes                     # the 1.5B alone, free vs guided (`-p guided=llm`)
    python -m bench.served_routes --per-category 20 \\
        --route cascade cascade tiny=st-sft llm=qwen2.5-coder-1.5b-instruct threshold=0.6 \\
        --route cascade-guided cascade tiny=st-sft llm=qwen2.5-coder-1.5b-instruct threshold=0.6 guided=llm

Each ``--route LABEL KIND KEY=VALUE ...`` becomes the policy of route ``bench-LABEL`` in the user's store (as
``supertiny policy set`` would store it; disabled again at the end). The server runs in-process on a free port
and the requests go through the official OpenAI client, ``--concurrency`` in flight, the routes' requests
interleaved so that every route sees the same load. For each route: accuracy per category and overall with
Wilson 95% intervals, the share the router escalated, how each guided role decoded, p50/p95 latency and
completion tokens; each route against the first on the same tasks: the accuracy difference and its exact
McNemar p. Models served by an engine (``supertiny engine start``) answer there.

Writes ``bench/results/served-routes-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import collections
import concurrent.futures
import datetime as dt
import statistics
import time
from pathlib import Path
from typing import Any

from supertiny.errors import SupertinyError
from supertiny.eval.stats import format_p_value

from bench.engines import machine
from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results"
LLM = "qwen2.5-coder-1.5b-instruct"


def parse_routes(specs: list[list[str]] | None, llm: str) -> list[dict[str, Any]]:
    """``--route LABEL KIND KEY=VALUE ...`` as label, kind and params; by default the LLM free and guided."""
    from supertiny.cli.policy import params_from_pairs

    if not specs:
        return [{"label": "llm", "kind": "llm", "params": {"llm": llm}},
                {"label": "llm-guided", "kind": "llm", "params": {"llm": llm, "guided": ["llm"]}}]
    routes = []
    for spec in specs:
        if len(spec) < 2:
            raise argparse.ArgumentTypeError(f"--route takes LABEL KIND [KEY=VALUE ...], got {' '.join(spec)!r}")
        routes.append({"label": spec[0], "kind": spec[1], "params": params_from_pairs(spec[2:])})
    if len({route["label"] for route in routes}) < len(routes):
        raise argparse.ArgumentTypeError("each --route needs its own label")
    return routes


def ask(client: Any, domain: Any, task: Any, route: str, max_tokens: int) -> dict[str, Any]:
    """One request to ``route``, its answer verified; a failed request counts as wrong and says why."""
    from supertiny.eval.served import ask_route

    started = time.perf_counter()
    record = {"task": task.content_hash(), "category": task.category}
    try:
        answer = ask_route(client, domain, task, route, max_tokens)
    except Exception as exc:
        return {**record, "correct": False, "error": f"{type(exc).__name__}: {exc}"[:300],
                "latency_s": time.perf_counter() - started}
    extension = answer["supertiny"]
    return {**record, "correct": answer["correct"], "escalated": bool(extension.get("escalated")),
            "served_by": extension.get("served_by"), "decoding": extension.get("decoding") or {},
            "latency_s": answer["latency_s"], "completion_tokens": answer["completion_tokens"]}


def summarize(label: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    from supertiny.eval.stats import wilson_interval

    def accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
        correct = sum(row["correct"] for row in rows)
        return {"n": len(rows), "accuracy": correct / len(rows), "interval": wilson_interval(correct, len(rows))}

    by_category: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in records:
        by_category[record["category"]].append(record)
    latencies = sorted(record["latency_s"] for record in records)
    tokens = [record["completion_tokens"] for record in records if record.get("completion_tokens") is not None]
    return {"label": label, **accuracy(records),
            "categories": {category: accuracy(rows) for category, rows in sorted(by_category.items())},
            "escalated": sum(bool(record.get("escalated")) for record in records) / len(records),
            "errors": sum("error" in record for record in records),
            "decoding": dict(collections.Counter(f"{role}: {how}" for record in records
                                                 for role, how in record.get("decoding", {}).items())),
            "p50_latency_s": statistics.median(latencies),
            "p95_latency_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "mean_completion_tokens": statistics.fmean(tokens) if tokens else None,
            "records": records}


def paired(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    from supertiny.eval.stats import mcnemar_p

    base = {record["task"]: record["correct"] for record in first["records"]}
    both = [(base[record["task"]], record["correct"]) for record in other["records"] if record["task"] in base]
    only_other = sum(1 for a, b in both if b and not a)
    only_first = sum(1 for a, b in both if a and not b)
    return {"route": other["label"], "against": first["label"], "tasks": len(both), "only_route": only_other,
            "only_against": only_first, "difference": (only_other - only_first) / len(both),
            "mcnemar_p": mcnemar_p(only_other, only_first)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import openai
    from supertiny.config import get_settings
    from supertiny.errors import NotFoundError
    from supertiny.policy.policy_store import check_models_exist, disable, set_policy, validate_params
    from supertiny.registry import lookup
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer
    from supertiny.store.session import open_store
    from supertiny.task_selection import select_tasks

    settings = get_settings()
    store = open_store(settings)
    domain = lookup("domain", args.domain)
    tasks = select_tasks(domain, args.split, per_category=args.per_category)
    if not tasks:
        raise NotFoundError(f"domain {args.domain!r} has no {args.split} tasks")
    routes = parse_routes(args.route, args.llm)
    for route in routes:  # every route is checked before any is stored
        route["params"].setdefault("timeout_s", args.timeout_s)  # a loaded CPU engine outlasts the 120 s default
        validate_params(route["kind"], route["params"])
        check_models_exist(store, route["kind"], route["params"])
    records: dict[str, list[dict[str, Any]]] = {route["label"]: [] for route in routes}
    started = time.perf_counter()
    stored: list[str] = []
    try:
        for route in routes:
            set_policy(store, f"bench-{route['label']}", route["kind"], route["params"], note="bench.served_routes")
            stored.append(f"bench-{route['label']}")
        with BackgroundServer(create_app(settings, ServeOptions(auth="open"))) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=args.timeout_s, max_retries=0)
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                futures = {pool.submit(ask, client, domain, task, f"bench-{route['label']}", args.max_tokens):
                           route["label"] for task in tasks for route in routes}
                for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    records[futures[future]].append(future.result())
                    print(f"\r{done}/{len(futures)} answers", end="", flush=True)
            print()
            server.server.should_exit = True  # flush the request log
    finally:
        for name in stored:
            disable(store, name)
    wall_s = time.perf_counter() - started
    summaries = [summarize(route["label"], records[route["label"]]) for route in routes]
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "domain": args.domain,
            "split": args.split, "tasks": len(tasks), "per_category": args.per_category,
            "concurrency": args.concurrency, "max_tokens": args.max_tokens, "wall_s": wall_s,
            "routes": [{**route, **summary} for route, summary in zip(routes, summaries, strict=True)],
            "paired": [paired(summaries[0], other) for other in summaries[1:]]}


def markdown(result: dict[str, Any]) -> str:
    routes = result["routes"]
    categories = sorted(routes[0]["categories"])
    lines = [f"# Served routes, {result['domain']} {result['split']}, {result['tasks']} tasks", "",
             f"{result['date']}, {result['machine']}; {result['concurrency']} requests in flight, "
             f"{result['wall_s']:.0f} s in all.", "",
             "| category | " + " | ".join(route["label"] for route in routes) + " |",
             "|---|" + "---|" * len(routes)]

    def cell(row: dict[str, Any]) -> str:
        low, high = row["interval"]
        return f"{row['accuracy']:.1%} [{low:.1%}, {high:.1%}]"

    for category in categories:
        lines.append(f"| {category} (n={routes[0]['categories'][category]['n']}) | "
                     + " | ".join(cell(route["categories"][category]) for route in routes) + " |")
    lines.append(f"| overall (n={routes[0]['n']}) | " + " | ".join(cell(route) for route in routes) + " |")
    lines += ["", "| route | policy | escalated | decoding | p50 / p95 latency | completion tokens | errors |",
              "|---|---|---|---|---|---|---|"]
    for route in routes:
        params = " ".join(f"{key}={','.join(value) if isinstance(value, list) else value}"
                          for key, value in route["params"].items() if key != "timeout_s")
        decoding = ", ".join(f"{how} {count}" for how, count in route["decoding"].items()) or "free"
        tokens = f"{route['mean_completion_tokens']:.0f}" if route["mean_completion_tokens"] is not None else "-"
        lines.append(f"| {route['label']} | {route['kind']} {params} | {route['escalated']:.0%} | {decoding} | "
                     f"{route['p50_latency_s']:.1f} / {route['p95_latency_s']:.1f} s | {tokens} | {route['errors']} |")
    for pair in result["paired"]:
        lines.append(f"\n{pair['route']} vs {pair['against']} on {pair['tasks']} tasks: right only with "
                     f"{pair['route']} {pair['only_route']}, only with {pair['against']} {pair['only_against']}, "
                     f"{pair['difference']:+.1%}, exact McNemar {format_p_value(pair['mcnemar_p'])}.")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = result["routes"]
    categories = [*sorted(routes[0]["categories"]), "overall"]
    figure, axes = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(routes)
    for index, route in enumerate(routes):
        rows = [*(route["categories"][category] for category in categories[:-1]), route]
        values = [row["accuracy"] * 100 for row in rows]
        errors = [[value - row["interval"][0] * 100 for value, row in zip(values, rows, strict=True)],
                  [row["interval"][1] * 100 - value for value, row in zip(values, rows, strict=True)]]
        axes.bar([position + index * width for position in range(len(categories))], values, width, yerr=errors,
                 capsize=3, label=route["label"])
    axes.set_xticks([position + width * (len(routes) - 1) / 2 for position in range(len(categories))], categories)
    axes.set(ylabel="% right (95% Wilson interval)", ylim=(0, 105),
             title=f"served routes on {result['tasks']} {result['domain']} {result['split']} tasks")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", nargs="+", action="append", metavar="LABEL KIND KEY=VALUE",
                        help="A route to compare (repeatable); the first is the baseline of the paired tests.")
    parser.add_argument("--llm", default=LLM, help="The model of the default routes.")
    parser.add_argument("--domain", default="bfcl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-category", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight (all routes together).")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--timeout-s", type=float, default=900.0, help="A request's client timeout, and the "
                        "routes' policy timeout where --route sets none.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        parse_routes(args.route, args.llm)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        result = run(args)
    except SupertinyError as exc:  # a route, a model or a domain that does not exist: one line, nothing stored
        parser.exit(2, f"error: {exc.message}\n")
    write_result_files(args.out, "served-routes", result, markdown(result), lambda path: plot(result, path))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
