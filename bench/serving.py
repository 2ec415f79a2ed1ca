"""Serving benchmark: what the server (HTTP, auth, routing, request logging) adds over the bare model call.

    python -m bench.serving                      # a tiny in-process model, 1 / 16 / 64 concurrent clients
    python -m bench.serving --model qwen2.5-coder-0.5b-instruct --max-tokens 32 --requests-per-client 2

For each concurrency level it measures, with the same model and the same one-request-at-a-time model
slot the server uses:

- bare: threads calling ``ChatModel.generate`` directly (requests/s, p50/p99 latency);
- served: clients (threads of a separate process) POSTing /v1/chat/completions to a live server
  (tiny policy, request log on) with
  requests/s, p50/p99 latency, errors, and the per-request overhead = client latency minus the time
  the request spent with the model (the server reports it in ``x-supertiny-model-ms``: waiting for the
  model slot plus generating), so queueing for the model is not counted as routing overhead;
- that every served request was logged exactly once.

Writes ``bench/results/serving-<timestamp>.json``, ``.png`` and ``.md`` (a markdown table).
"""

import argparse
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
    slot = threading.Semaphore(1)  # what the server's ModelPool does for an in-process model

    def one() -> float:
        with slot:
            return model.generate(QUESTION, tools, options).latency_s

    latencies, elapsed, errors, _ = run_clients(concurrency, total, one)
    return summary(latencies, elapsed, errors)


def plot(levels: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concurrency = [level["concurrency"] for level in levels]
    labels = [str(value) for value in concurrency]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    positions = range(len(labels))
    width = 0.38
    left.bar([p - width / 2 for p in positions], [level["bare"]["rps"] for level in levels], width, label="bare model")
    left.bar([p + width / 2 for p in positions], [level["served"]["rps"] for level in levels], width, label="served")
    left.set(title="throughput", xlabel="concurrent clients", ylabel="requests / s", xticks=list(positions),
             xticklabels=labels)
    left.legend()
    for key, style in (("p50_ms", "-o"), ("p99_ms", "--o")):
        middle.plot(labels, [level["bare"][key] for level in levels], style, color="tab:blue", label=f"bare {key[:3]}")
        middle.plot(labels, [level["served"][key] for level in levels], style, color="tab:orange",
                    label=f"served {key[:3]}")
    middle.set(title="latency per request", xlabel="concurrent clients", ylabel="ms", yscale="log")
    middle.legend()
    right.bar([p - width / 2 for p in positions], [level["served"]["overhead_p50_ms"] for level in levels], width,
              label="p50")
    right.bar([p + width / 2 for p in positions], [level["served"]["overhead_p99_ms"] for level in levels], width,
              label="p99")
    right.set(title="added by the server (latency - model time)", xlabel="concurrent clients", ylabel="ms",
              xticks=list(positions), xticklabels=labels)
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Serving benchmark ({result['created']})",
        "",
        f"model `{result['model']}`, {result['max_tokens']} new tokens a request, tools: {result['tools']}, "
        f"store {result['store']}, {result['machine']}",
        "",
        "| clients | bare req/s | served req/s | bare p50 / p99 ms | served p50 / p99 ms | added p50 / p99 ms "
        "| errors | logged once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in result["levels"]:
        bare, served = level["bare"], level["served"]
        lines.append(
            f"| {level['concurrency']} | {bare['rps']} | {served['rps']} | {bare['p50_ms']} / {bare['p99_ms']} "
            f"| {served['p50_ms']} / {served['p99_ms']} | {served['overhead_p50_ms']} / {served['overhead_p99_ms']} "
            f"| {served['errors']} | {level['logged_exactly_once']} |")
    lines += ["", "added = client-observed latency minus the request's model time (slot wait + generation), "
              "i.e. HTTP, parsing, policy lookup, routing and logging."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Registered model name or HF directory (default: a tiny in-process model).")
    parser.add_argument("--db", help="Database URL of the store (default: a temporary SQLite file).")
    parser.add_argument("--concurrency", default="1,16,64", help="Comma-separated client counts.")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=48, help="At least this many requests per level.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-tools", action="store_true", help="Send no tools (plain chat).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import sqlalchemy as sa
    import torch
    from supertiny.config import Settings
    from supertiny.models.backend import GenerationOptions
    from supertiny.models.loading import open_model
    from supertiny.route.policy_store import set_policy
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer
    from supertiny.store.session import open_store
    from supertiny.store.tables import RequestLog

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="supertiny-bench-"))
    settings = Settings(home=workdir, database_url=args.db or f"sqlite:///{workdir / 'bench.db'}")
    store = open_store(settings)
    model_name = args.model
    if model_name is not None and args.db is None and not Path(model_name).is_dir():
        # a registered name: its weights, from the user's store (the benchmark's own traffic stays in a scratch one)
        from supertiny.config import get_settings
        from supertiny.models.registry import get_model_version

        model_name = get_model_version(open_store(get_settings()), model_name).path
    if model_name is None:
        from supertiny.testing import build_tiny_model

        model_name = str(build_tiny_model(workdir / "tiny-model", seed=0))
    model = open_model(store, model_name)
    route = f"bench-{dt.datetime.now():%H%M%S}"
    set_policy(store, route, "tiny", {"tiny": model_name}, note="bench.serving")
    tools = None if args.no_tools else [WEATHER_TOOL]
    options = GenerationOptions(max_new_tokens=args.max_tokens)
    model.generate(QUESTION, tools, options)  # warm up

    app = create_app(settings, ServeOptions(log_flush_interval_s=0.05), store=store)
    levels = []
    with BackgroundServer(app) as server:
        import httpx

        body = {"model": route, "messages": QUESTION, "max_tokens": args.max_tokens}
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=600).raise_for_status()  # warm up
        for concurrency in [int(value) for value in args.concurrency.split(",") if value.strip()]:
            total = max(args.min_requests, concurrency * args.requests_per_client)
            bare = bench_bare(model, concurrency, total, options, tools)
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients:
                # the clients run in their own process, so they do not share the server's GIL
                served = clients.submit(_served, server.base_url, route, concurrency, total, args.max_tokens,
                                        tools).result()
            assert app.state.log_writer.flush(60), "the request log did not drain"
            with store.session() as session:
                logged = list(session.scalars(sa.select(RequestLog.request_id)
                                              .where(RequestLog.request_id.in_(served["ids"]))))
            once = len(logged) == len(set(logged)) == len(served["ids"])
            levels.append({"concurrency": concurrency, "requests": total, "bare": bare,
                           "served": {key: value for key, value in served.items() if key != "ids"},
                           "logged_exactly_once": once})
            print(f"{concurrency:>3} clients: bare {bare['rps']:>7} req/s p50 {bare['p50_ms']:>8} ms | served "
                  f"{served['rps']:>7} req/s p50 {served['p50_ms']:>8} p99 {served['p99_ms']:>8} ms | added p50 "
                  f"{served['overhead_p50_ms']} p99 {served['overhead_p99_ms']} ms | errors {served['errors']} | "
                  f"logged once {once}", flush=True)

    created = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    result = {"created": created, "model": args.model or "tiny in-process test model (2 layers, hidden 64)",
              "max_tokens": args.max_tokens, "tools": not args.no_tools, "store": store.engine.url.get_backend_name(),
              "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)",
              "levels": levels}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"serving-{dt.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    plot(levels, stem.with_suffix(".png"), f"supertiny serving overhead ({result['model']})")
    print(f"wrote {stem}.json, .md and .png")
    return result


def _served(base_url: str, route: str, concurrency: int, total: int, max_tokens: int,
            tools: list | None) -> dict[str, Any]:
    import httpx

    local = threading.local()
    body = {"model": route, "messages": QUESTION, "max_tokens": max_tokens, **({"tools": tools} if tools else {})}

    def one() -> tuple[str, float, float]:
        if not hasattr(local, "client"):  # TCP_NODELAY: measure the server, not the client's Nagle delay
            transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            local.client = httpx.Client(base_url=base_url, timeout=600, transport=transport)
        started = time.perf_counter()
        response = local.client.post("/chat/completions", json=body)
        latency = time.perf_counter() - started
        response.raise_for_status()
        return response.json()["id"], latency, float(response.headers["x-supertiny-model-ms"]) / 1000

    latencies, elapsed, errors, results = run_clients(concurrency, total, one)
    done = [result for result in results if isinstance(result, tuple)]
    overhead = [latency - model_s for _, latency, model_s in done]
    out = summary(latencies, elapsed, errors)
    out.update({"overhead_p50_ms": round(percentile(overhead, 50) * 1000, 2),
                "overhead_p99_ms": round(percentile(overhead, 99) * 1000, 2),
                "overhead_mean_ms": round(statistics.fmean(overhead) * 1000, 2) if overhead else None,
                "ids": [request_id for request_id, _, _ in done],
                "error_samples": [str(result)[:200] for result in results if not isinstance(result, tuple)][:3]})
    return out


if __name__ == "__main__":
    main()
