"""Serving benchmark: throughput and latency of ``supertiny serve`` on several engines side by side, and what
the server (HTTP, auth, routing, request logging) adds over calling the model directly.

    python -m bench.serving                      # a tiny model in-process, with and without dynamic batching
    python -m bench.serving --model qwen2.5-coder-0.5b-instruct --engines in-process,batched,vllm \
        --concurrency 1,4,16,64 --max-tokens 64 --requests-per-client 1 --min-requests 16

Engines: ``in-process`` (transformers, one request at a time), ``batched`` (transformers with dynamic
batching), ``vllm`` (the model's vLLM engine, started for the run and stopped after). For each engine and
concurrency level it measures:

- served: clients (threads of a separate process) POSTing /v1/chat/completions to a live server
  (tiny policy, request log on) with requests/s, tokens/s, p50/p99 latency, errors, and the per-request
  overhead = client latency minus the time the request spent with the model (the server reports it in
  ``x-supertiny-model-ms``: waiting for the model slot plus generating);
- bare (``--bare``; by default for the vLLM engine only): threads calling ``ChatModel.generate`` directly,
  with as many in flight as the server allows the model;
- that every served request was logged exactly once.

Writes ``bench/results/serving-<timestamp>.json``, ``.png`` and ``.md`` (a markdown table).
"""

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.engines import ENGINES, engine_model, machine, model_dir, parse_engines, scratch
from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results"
QUESTION = [{"role": "user", "content": "What is the weather in Paris in celsius?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather of a city.",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    return {"requests": len(latencies) + errors, "errors": errors, "elapsed_s": round(elapsed, 3),
            "rps": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
            "p50_ms": round(percentile(latencies, 50) * 1000, 2), "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None}


def run_clients(concurrency: int, total: int, one: Any) -> tuple[list[float], float, int, list[Any]]:
    """``total`` calls of ``one()`` from ``concurrency`` threads: latencies, wall time, errors, results."""
    latencies: list[float] = []
    results: list[Any] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        nonlocal errors
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            try:
                result = one()
            except Exception as exc:
                with lock:
                    errors += 1
                    results.append(exc)
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                results.append(result)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return latencies, time.perf_counter() - started, errors, results


def bench_bare(model: Any, concurrency: int, total: int, options: Any, tools: list | None) -> dict[str, Any]:
    # what the server's ModelPool allows the model at once
    slot = threading.Semaphore(64 if not model.capabilities.local else model.capabilities.max_concurrency)

    def one() -> float:
        with slot:
            return model.generate(QUESTION, tools, options).latency_s

    latencies, elapsed, errors, _ = run_clients(concurrency, total, one)
    return summary(latencies, elapsed, errors)


def plot(engines: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    for engine in engines:
        levels = engine["levels"]
        labels = [str(level["concurrency"]) for level in levels]
        left.plot(labels, [level["served"]["rps"] for level in levels], "-o", label=engine["engine"])
        middle.plot(labels, [level["served"]["p50_ms"] for level in levels], "-o", label=f"{engine['engine']} p50")
        middle.plot(labels, [level["served"]["p99_ms"] for level in levels], "--", color=middle.lines[-1].get_color(),
                    label=f"{engine['engine']} p99")
        right.plot(labels, [level["served"]["overhead_p50_ms"] for level in levels], "-o",
                   label=f"{engine['engine']} p50")
        right.plot(labels, [level["served"]["overhead_p99_ms"] for level in levels], "--",
                   color=right.lines[-1].get_color(), label=f"{engine['engine']} p99")
    left.set(title="throughput through supertiny serve", xlabel="concurrent clients", ylabel="requests / s")
    middle.set(title="latency per request", xlabel="concurrent clients", ylabel="ms", yscale="log")
    right.set(title="added by the server (latency - model time)", xlabel="concurrent clients", ylabel="ms")
    for axis in (left, middle, right):
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Serving benchmark ({result['created']})",
        "",
        f"model `{result['model']}`, up to {result['max_tokens']} new tokens a request, tools: {result['tools']}, "
        f"store {result['store']}, {result['machine']}",
        "",
        "| engine | clients | served req/s | tok/s | served p50 / p99 ms | added p50 / p99 ms | bare req/s "
        "| bare p50 / p99 ms | errors | logged once |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine in result["engines"]:
        for level in engine["levels"]:
            served, bare = level["served"], level.get("bare")
            bare_cells = f"{bare['rps']} | {bare['p50_ms']} / {bare['p99_ms']}" if bare else "- | -"
            added = f"{served['overhead_p50_ms']} / {served['overhead_p99_ms']}"
            lines.append(
                f"| {engine['engine']} | {level['concurrency']} | {served['rps']} | {served['tok_s']} "
                f"| {served['p50_ms']} / {served['p99_ms']} | {added} "
                f"| {bare_cells} | {served['errors']} | {level['logged_exactly_once']} |")
    lines += ["", "served: clients (another process) POSTing /v1/chat/completions to `supertiny serve` (tiny policy, "
              "request log on); bare: threads calling the model directly (for the vLLM engine: its OpenAI API "
              "through supertiny's client); added = client latency minus the request's model time (slot wait "
              "+ generation): HTTP, parsing, policy lookup, routing and logging."]
    for engine in result["engines"]:
        levels = {level["concurrency"]: level["served"]["rps"] for level in engine["levels"]}
        if 1 in levels and 16 in levels and levels[1]:
            lines.append(f"- {engine['engine']}: {levels[16] / levels[1]:.1f}x the 1-client throughput at 16 "
                         "clients")
    return "\n".join(lines) + "\n"


def bench_engine(kind: str, args: argparse.Namespace, settings: Any, store: Any, directory: str,
                 tools: list | None) -> dict[str, Any]:
    with engine_model(kind, store, settings, directory) as name:
        return _bench_levels(kind, name, args, settings, store, tools)


def _bench_levels(kind: str, name: str, args: argparse.Namespace, settings: Any, store: Any,
                  tools: list | None) -> dict[str, Any]:
    import sqlalchemy as sa
    from supertiny.models.backend import GenerationOptions
    from supertiny.policy.policy_store import set_policy
    from supertiny.runtime.loading import open_model
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer
    from supertiny.store.tables import RequestLog

    route = f"bench-{kind}-{dt.datetime.now():%H%M%S}"
    set_policy(store, route, "tiny", {"tiny": name, "timeout_s": args.timeout_s}, note="bench.serving")
    model = open_model(store, name)
    options = GenerationOptions(max_new_tokens=args.max_tokens)
    model.generate(QUESTION, tools, options)  # warm up
    bare_too = args.bare == "all" or (args.bare == "remote" and not model.capabilities.local)
    app = create_app(settings, ServeOptions(log_flush_interval_s=0.05), store=store)
    levels = []
    with BackgroundServer(app) as server:
        import httpx

        body = {"model": route, "messages": QUESTION, "max_tokens": args.max_tokens}
        warm = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=600)
        if warm.status_code != 200:
            raise SystemExit(f"the server's first request failed: HTTP {warm.status_code} {warm.text[:500]}")
        for concurrency in [int(value) for value in args.concurrency.split(",") if value.strip()]:
            total = max(args.min_requests, concurrency * args.requests_per_client)
            bare = bench_bare(model, concurrency, total, options, tools) if bare_too else None
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                # the clients run in their own process, so they do not share the server's GIL
                served = pool.submit(_served, server.base_url, route, concurrency, total, args.max_tokens,
                                     tools).result()
            assert app.state.log_writer.flush(60), "the request log did not drain"
            with store.session() as session:
                logged = list(session.scalars(sa.select(RequestLog.request_id)
                                              .where(RequestLog.request_id.in_(served["ids"]))))
            once = len(logged) == len(set(logged)) == len(served["ids"])
            levels.append({"concurrency": concurrency, "requests": total, "bare": bare,
                           "served": {key: value for key, value in served.items() if key != "ids"},
                           "logged_exactly_once": once})
            bare_text = f"bare {bare['rps']:>6} req/s p50 {bare['p50_ms']:>8} ms | " if bare else ""
            print(f"{kind:>10} {concurrency:>3} clients: {bare_text}served {served['rps']:>6} req/s "
                  f"{served['tok_s']:>7} tok/s p50 {served['p50_ms']:>8} p99 {served['p99_ms']:>8} ms | added p50 "
                  f"{served['overhead_p50_ms']} p99 {served['overhead_p99_ms']} ms | errors {served['errors']} | "
                  f"logged once {once}", flush=True)
    return {"engine": kind, "description": ENGINES[kind], "served_by": model.capabilities.engine,
            "levels": levels}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Registered model name or HF directory (default: a tiny in-process model).")
    parser.add_argument("--engines", default="in-process,batched",
                        help=f"Comma-separated, side by side in one run: {', '.join(ENGINES)}.")
    parser.add_argument("--db", help="Database URL of the store (default: a temporary SQLite file).")
    parser.add_argument("--concurrency", default="1,16,64", help="Comma-separated client counts.")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=48, help="At least this many requests per level.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="The bench route's policy timeout.")
    parser.add_argument("--bare", choices=("all", "remote", "none"), default="remote",
                        help="Also call the model directly (remote: only models behind an engine).")
    parser.add_argument("--no-tools", action="store_true", help="Send no tools (plain chat).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    kinds = parse_engines(args.engines)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings, store = scratch(args.db)
    if args.model is None:
        from supertiny.testing import build_tiny_model

        directory = str(build_tiny_model(settings.home / "tiny-model", seed=0))
    else:
        directory = model_dir(args.model)
    tools = None if args.no_tools else [WEATHER_TOOL]
    engines = [bench_engine(kind, args, settings, store, directory, tools) for kind in kinds]

    created = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    result = {"created": created, "model": args.model or "tiny in-process test model (2 layers, hidden 64)",
              "max_tokens": args.max_tokens, "tools": not args.no_tools, "store": store.engine.url.get_backend_name(),
              "machine": machine(), "engines": engines}
    write_result_files(args.out, "serving", result, markdown(result),
                       lambda path: plot(engines, path, f"supertiny serving ({result['model']})"))
    return result


def _served(base_url: str, route: str, concurrency: int, total: int, max_tokens: int,
            tools: list | None) -> dict[str, Any]:
    import httpx

    local = threading.local()
    body = {"model": route, "messages": QUESTION, "max_tokens": max_tokens, **({"tools": tools} if tools else {})}

    def one() -> tuple[str, float, float, int]:
        if not hasattr(local, "client"):  # TCP_NODELAY: measure the server, not the client's Nagle delay
            transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            local.client = httpx.Client(base_url=base_url, timeout=600, transport=transport)
        started = time.perf_counter()
        response = local.client.post("/chat/completions", json=body)
        latency = time.perf_counter() - started
        response.raise_for_status()
        answer = response.json()
        return (answer["id"], latency, float(response.headers["x-supertiny-model-ms"]) / 1000,
                int(answer["usage"]["completion_tokens"]))

    latencies, elapsed, errors, results = run_clients(concurrency, total, one)
    done = [result for result in results if isinstance(result, tuple)]
    overhead = [latency - model_s for _, latency, model_s, _ in done]
    out = summary(latencies, elapsed, errors)
    tokens = sum(completion for *_, completion in done)
    out.update({"tok_s": round(tokens / elapsed, 1) if elapsed else 0.0,
                "tokens_per_request": round(tokens / len(done), 1) if done else None,
                "overhead_p50_ms": round(percentile(overhead, 50) * 1000, 2),
                "overhead_p99_ms": round(percentile(overhead, 99) * 1000, 2),
                "overhead_mean_ms": round(statistics.fmean(overhead) * 1000, 2) if overhead else None,
                "ids": [request_id for request_id, *_ in done],
                "error_samples": [str(result)[:200] for result in results if not isinstance(result, tuple)][:3]})
    return out


if __name__ == "__main__":
    main()
