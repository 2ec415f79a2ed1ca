"""Fault benchmark: ``supertiny serve`` under load while something goes wrong, and whether every request is still
logged exactly once.

    python -m bench.faults --model qwen2.5-coder-0.5b-instruct
    python -m bench.faults --parts database --load-s 60 --outage-s 30      # a tiny model, PostgreSQL only

Parts (``--parts``, side by side in one run):

- ``long-prompt``: ``--clients`` clients of short requests, alone and with one ``--long-tokens`` prompt sent
  among them; the others' p99 with it against without it (aim: at most 2x), and how the long request ended.
  Run on a route that caps prompts (``max_prompt_tokens``) and on one that takes the model's whole context.
- ``database``: 16 clients for ``--load-s`` seconds while PostgreSQL is unreachable (a TCP proxy in front of
  it is cut) for ``--outage-s`` of them: failed requests and log rows lost (aim: 0 and 0).
- ``llm-killed``: a cascade that sends every request to its LLM tier, a vLLM engine that is killed (SIGKILL)
  mid-load; with ``fallback`` the tiny model answers instead (aim: 0 failed requests, fallbacks logged).

The server runs in this process (its store on a scratch PostgreSQL database, through the proxy); the clients
run in another process so they do not share the server's GIL. Writes ``bench/results/faults-<timestamp>``
``.json``, ``.md`` and ``.png``.
"""

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.engines import engine_model, machine, model_dir
from bench.result_files import write_result_files
from bench.serving import QUESTION, WEATHER_TOOL, percentile
from bench.tcp_proxy import TcpProxy

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("long-prompt", "database", "llm-killed")
FILLER = "The weather service keeps hourly records of temperature, wind and rain for every city it covers. "


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Registered model name or HF directory (default: a tiny in-process model).")
    parser.add_argument("--engine", default="batched", choices=("batched", "vllm"),
                        help="What serves the route's model in the long-prompt and database parts.")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated: {', '.join(PARTS)}.")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="A PostgreSQL server (any database on it): the run creates and drops its own.")
    parser.add_argument("--clients", type=int, default=64, help="Clients of the long-prompt part.")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--long-tokens", type=int, default=30_000)
    parser.add_argument("--prompt-cap", type=int, default=8192, help="max_prompt_tokens of the capped route.")
    parser.add_argument("--load-s", type=float, default=60.0, help="Load duration of the database and llm parts.")
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="The routes' policy timeout.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with ScratchPostgres(args.postgres) as (settings, store, proxy):
        if args.model is None:
            from supertiny.testing import build_tiny_model

            directory = str(build_tiny_model(settings.home / "tiny-model", seed=0))
        else:
            directory = model_dir(args.model)
        results: dict[str, Any] = {}
        with engine_model(args.engine, store, settings, directory, label="faults") as name:
            if "long-prompt" in parts:
                results["long-prompt"] = long_prompt_part(args, settings, store, name, directory)
            if "database" in parts:
                results["database"] = database_part(args, settings, store, proxy, name)
            if "llm-killed" in parts:
                tiny = name if args.engine == "batched" else None
                with engine_model("vllm", store, settings, directory, label="faults-llm") as llm:
                    results["llm-killed"] = llm_killed_part(args, settings, store, tiny or name, llm)

    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
              "model": args.model or "tiny in-process test model", "engine": args.engine,
              "machine": machine(), "store": "postgresql (through a TCP proxy)", "parts": results}
    write_result_files(args.out, "faults", result, markdown(result), lambda path: plot(result, path))
    print(markdown(result))
    return result


# --- parts ----------------------------------------------------------------------------------------


def long_prompt_part(args: argparse.Namespace, settings: Any, store: Any, model: str, directory: str) -> dict[str, Any]:
    from supertiny.policy.policy_store import set_policy

    long_messages = _long_messages(directory, args.long_tokens)
    runs = []
    with BenchServer(settings, store) as server:
        for label, cap in (("capped", args.prompt_cap), ("uncapped", None)):
            route = f"faults-{label}"
            params = {"tiny": model, "timeout_s": args.timeout_s, **({"max_prompt_tokens": cap} if cap else {})}
            set_policy(store, route, "tiny", params, note="bench.faults")
            _warm(server, route, args.max_tokens)
            for with_long in (False, True):
                load = _Load(server.base_url, route, args.clients, args.max_tokens,
                             total=args.clients * args.requests_per_client)
                long_result = _send_later(server.base_url, route, long_messages, args.max_tokens, 2.0) \
                    if with_long else None
                records = load.run()
                extra = long_result.result() if long_result else None
                logged = _logged_once(server, store, [r["id"] for r in records if r["id"]] +
                                      ([extra["id"]] if extra and extra["id"] else []))
                others = [r["latency_s"] for r in records if r["status"] == 200]
                run = {"route": label, "max_prompt_tokens": cap, "long_prompt": with_long,
                       "requests": len(records), "failed": sum(r["status"] != 200 for r in records),
                       "p50_ms": _ms(percentile(others, 50)), "p99_ms": _ms(percentile(others, 99)),
                       "long": extra, "logged_exactly_once": logged, "records": records}
                runs.append(run)
                print(f"long-prompt {label:>8} {'with' if with_long else 'without'} the long prompt: p50 "
                      f"{run['p50_ms']} p99 {run['p99_ms']} ms, failed {run['failed']}, long: "
                      f"{extra and (extra['status'], extra['latency_s'])}, logged once {logged}", flush=True)
    for label in ("capped", "uncapped"):
        alone, mixed = (next(r for r in runs if r["route"] == label and r["long_prompt"] == flag) for flag in (0, 1))
        mixed["p99_ratio"] = round(mixed["p99_ms"] / alone["p99_ms"], 2) if alone["p99_ms"] else None
    return {"clients": args.clients, "long_tokens": args.long_tokens, "runs": runs}


def database_part(args: argparse.Namespace, settings: Any, store: Any, proxy: TcpProxy, model: str) -> dict[str, Any]:
    from supertiny.policy.policy_store import set_policy

    route = "faults-database"
    set_policy(store, route, "tiny", {"tiny": model, "timeout_s": args.timeout_s}, note="bench.faults")
    with BenchServer(settings, store, outage_grace_s=args.outage_s * 4) as server:
        _warm(server, route, args.max_tokens)
        load = _Load(server.base_url, route, 16, args.max_tokens, duration_s=args.load_s)
        outage_start = min(10.0, args.load_s / 4)

        def outage() -> None:
            time.sleep(outage_start)
            proxy.cut()
            time.sleep(args.outage_s)
            proxy.restore()

        cutter = threading.Thread(target=outage, daemon=True)
        cutter.start()
        records = load.run()
        cutter.join()
        logged = _logged_once(server, store, [r["id"] for r in records if r["id"]], timeout_s=120)
        stats = server.app.state.log_writer.stats
    during = [r for r in records if outage_start <= r["start_s"] <= outage_start + args.outage_s]
    result = {"clients": 16, "load_s": args.load_s, "outage_s": args.outage_s, "outage_start_s": outage_start,
              "requests": len(records), "during_outage": len(during),
              "failed": sum(r["status"] != 200 for r in records), "dropped_log_rows": stats.dropped,
              "logged_exactly_once": logged, "records": records}
    print(f"database: {result['requests']} requests ({len(during)} during the outage), failed {result['failed']}, "
          f"logged once {logged}", flush=True)
    return result


def llm_killed_part(args: argparse.Namespace, settings: Any, store: Any, tiny: str, llm: str) -> dict[str, Any]:
    import sqlalchemy as sa
    from supertiny.engine.manager import engine_statuses
    from supertiny.policy.policy_store import set_policy
    from supertiny.store.tables import RequestLog

    route = "faults-llm"
    set_policy(store, route, "cascade", {"tiny": tiny, "llm": llm, "threshold": 1.01, "fallback": True,
                                         "timeout_s": args.timeout_s}, note="bench.faults: every request escalates")
    pid = next(status.engine.pid for status in engine_statuses(store) if status.model == llm)
    kill_at = args.load_s / 2
    with BenchServer(settings, store) as server:
        _warm(server, route, args.max_tokens)
        load = _Load(server.base_url, route, 16, args.max_tokens, duration_s=args.load_s)

        def kill() -> None:
            time.sleep(kill_at)
            os.killpg(os.getpgid(pid), signal.SIGKILL)

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
        records = load.run()
        killer.join()
        ids = [r["id"] for r in records if r["id"]]
        logged = _logged_once(server, store, ids)
        with store.session() as session:
            rows = session.execute(sa.select(RequestLog.request_id, RequestLog.served_by, RequestLog.detail)
                                   .where(RequestLog.request_id.in_(ids))).all()
    fallbacks = sum(1 for row in rows if (row.detail or {}).get("fallback"))
    result = {"clients": 16, "load_s": args.load_s, "killed_at_s": kill_at, "requests": len(records),
              "failed": sum(r["status"] != 200 for r in records),
              "served_by_llm": sum(1 for row in rows if row.served_by == llm), "fallbacks": fallbacks,
              "logged_exactly_once": logged, "records": records}
    print(f"llm-killed: {result['requests']} requests, failed {result['failed']}, by the LLM before the kill "
          f"{result['served_by_llm']}, fallbacks {fallbacks}, logged once {logged}", flush=True)
    return result


# --- load -----------------------------------------------------------------------------------------


class _Load:
    """``clients`` clients in another process, each sending requests one after another: ``total`` in all, or
    for ``duration_s``. ``run()`` returns one record per request: start offset, latency, status, id."""

    def __init__(self, base_url: str, route: str, clients: int, max_tokens: int, total: int | None = None,
                 duration_s: float | None = None):
        self.args = (base_url, route, clients, max_tokens, total, duration_s)

    def run(self) -> list[dict[str, Any]]:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(_client_load, *self.args).result()


def _client_load(base_url: str, route: str, clients: int, max_tokens: int, total: int | None,
                 duration_s: float | None) -> list[dict[str, Any]]:
    import httpx

    body = {"model": route, "messages": QUESTION, "max_tokens": max_tokens, "tools": [WEATHER_TOOL]}
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    remaining = iter(range(total)) if total is not None else None
    started = time.perf_counter()

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=900) as http:
            while True:
                with lock:
                    if remaining is not None and next(remaining, None) is None:
                        return
                if duration_s is not None and time.perf_counter() - started >= duration_s:
                    return
                sent = time.perf_counter()
                try:
                    response = http.post("/chat/completions", json=body)
                    status, request_id = response.status_code, response.headers.get("x-request-id") or \
                        (response.json().get("id") if response.status_code == 200 else None)
                except httpx.HTTPError as exc:
                    status, request_id = 599, None
                    print(f"client error: {type(exc).__name__}: {exc}", flush=True)
                with lock:
                    records.append({"start_s": round(sent - started, 3), "latency_s": time.perf_counter() - sent,
                                    "status": status, "id": request_id})

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return records


def _send_later(base_url: str, route: str, messages: list[dict[str, Any]], max_tokens: int,
                delay_s: float) -> concurrent.futures.Future:
    """One request with ``messages``, sent after ``delay_s`` from a thread of this process."""
    import httpx

    def send() -> dict[str, Any]:
        time.sleep(delay_s)
        sent = time.perf_counter()
        response = httpx.post(f"{base_url}/chat/completions", timeout=900,
                              json={"model": route, "messages": messages, "max_tokens": max_tokens})
        error = response.json().get("error") if response.status_code != 200 else None
        return {"status": response.status_code, "latency_s": round(time.perf_counter() - sent, 3),
                "id": response.headers.get("x-request-id"), "code": (error or {}).get("code")}

    return concurrent.futures.ThreadPoolExecutor(1).submit(send)


# --- helpers --------------------------------------------------------------------------------------


class ScratchPostgres:
    """A database of its own on the PostgreSQL server, reached through a TcpProxy; dropped afterwards."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.name = f"supertiny_bench_faults_{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> tuple[Any, Any, TcpProxy]:
        import tempfile

        import sqlalchemy as sa
        from supertiny.config import Settings, get_settings
        from supertiny.store.session import open_store

        self._admin(f'CREATE DATABASE "{self.name}"')
        url = sa.engine.make_url(self.admin_url)
        self.proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).__enter__()
        os.environ.setdefault("SUPERTINY_ENGINES_DIR", str(get_settings().engines_dir))
        home = Path(tempfile.mkdtemp(prefix="supertiny-bench-faults-"))
        proxied = url.set(database=self.name, port=self.proxy.port).render_as_string(hide_password=False)
        settings = Settings(home=home, database_url=proxied)
        return settings, open_store(settings), self.proxy

    def __exit__(self, *exc: object) -> None:
        from supertiny.store.engine import dispose_engines

        dispose_engines()
        self.proxy.__exit__()
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
        engine.dispose()


class BenchServer:
    """``supertiny serve``'s app on a background uvicorn, with its request log writer at hand."""

    def __init__(self, settings: Any, store: Any, outage_grace_s: float = 300.0):
        from supertiny.serve.app import ServeOptions, create_app
        from supertiny.serve.background import BackgroundServer

        options = ServeOptions(log_flush_interval_s=0.05, outage_grace_s=outage_grace_s)
        self.app = create_app(settings, options, store=store)
        self.background = BackgroundServer(self.app)

    def __enter__(self) -> "BenchServer":
        self.base_url = self.background.__enter__().base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self.background.__exit__(*exc)


def _warm(server: BenchServer, route: str, max_tokens: int) -> None:
    import httpx

    response = httpx.post(f"{server.base_url}/chat/completions", timeout=900,
                          json={"model": route, "messages": QUESTION, "max_tokens": max_tokens})
    if response.status_code != 200:
        raise SystemExit(f"the route {route}'s first request failed: HTTP {response.status_code} {response.text[:300]}")


def _logged_once(server: BenchServer, store: Any, ids: list[str], timeout_s: float = 60) -> bool:
    import sqlalchemy as sa
    from supertiny.store.tables import RequestLog

    if not server.app.state.log_writer.flush(timeout_s):
        return False
    with store.session() as session:
        logged = list(session.scalars(sa.select(RequestLog.request_id).where(RequestLog.request_id.in_(ids))))
    return len(logged) == len(set(logged)) == len(set(ids)) == len(ids)


def _long_messages(directory: str, tokens: int) -> list[dict[str, Any]]:
    """A user message of about ``tokens`` tokens of the model's tokenizer."""
    from transformers import AutoTokenizer

    per_copy = len(AutoTokenizer.from_pretrained(directory)(FILLER, add_special_tokens=False)["input_ids"])
    return [{"role": "user", "content": FILLER * max(1, tokens // per_copy) + "What is the weather in Paris?"}]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- report ---------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    parts = result["parts"]
    lines = [f"# Fault benchmark ({result['created']})", "",
             f"model `{result['model']}` on `{result['engine']}`, store {result['store']}, {result['machine']}", ""]
    if "long-prompt" in parts:
        part = parts["long-prompt"]
        lines += [f"## One {part['long_tokens']:,}-token prompt among {part['clients']} clients of short requests",
                  "", "| route | long prompt | requests | failed | p50 ms | p99 ms | p99 vs alone | the long request "
                  "| logged once |", "|---|---|---|---|---|---|---|---|---|"]
        for run in part["runs"]:
            cap = f"max_prompt_tokens {run['max_prompt_tokens']}" if run["max_prompt_tokens"] else "model context"
            long = run["long"]
            long_text = f"HTTP {long['status']} {long['code'] or ''} in {long['latency_s']} s".replace("  ", " ") \
                if long else "-"
            ratio = f"{run['p99_ratio']}x" if run.get("p99_ratio") else "-"
            lines.append(f"| {cap} | {'yes' if run['long_prompt'] else 'no'} | {run['requests']} | {run['failed']} "
                         f"| {run['p50_ms']} | {run['p99_ms']} | {ratio} | {long_text} "
                         f"| {run['logged_exactly_once']} |")
        lines += ["", "Aim: the other requests' p99 within 2x of the run without the long prompt.", ""]
    if "database" in parts:
        part = parts["database"]
        lines += [f"## PostgreSQL unreachable for {part['outage_s']:g} s of a {part['load_s']:g} s load, "
                  f"{part['clients']} clients", "",
                  "| requests | during the outage | failed | log rows dropped | logged exactly once |",
                  "|---|---|---|---|---|",
                  f"| {part['requests']} | {part['during_outage']} | {part['failed']} | {part['dropped_log_rows']} "
                  f"| {part['logged_exactly_once']} |", "", "Aim: 0 failed, 0 lost.", ""]
    if "llm-killed" in parts:
        part = parts["llm-killed"]
        lines += [f"## The LLM tier's vLLM engine killed (SIGKILL) {part['killed_at_s']:g} s into a "
                  f"{part['load_s']:g} s load, {part['clients']} clients, cascade with fallback", "",
                  "| requests | failed | served by the LLM | fallbacks to the tiny answer | logged exactly once |",
                  "|---|---|---|---|---|",
                  f"| {part['requests']} | {part['failed']} | {part['served_by_llm']} | {part['fallbacks']} "
                  f"| {part['logged_exactly_once']} |", "", "Aim: 0 failed, every later request a logged fallback.",
                  ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["parts"]
    figure, axes = plt.subplots(1, max(1, len(parts)), figsize=(5.5 * max(1, len(parts)), 4.2), squeeze=False)
    for axis, (name, part) in zip(axes[0], parts.items(), strict=False):
        runs = part["runs"] if name == "long-prompt" else [part]
        for run in runs:
            records = run["records"]
            label = f"{run.get('route', name)} {'with' if run.get('long_prompt') else 'without'} long" \
                if name == "long-prompt" else name
            ok = [r for r in records if r["status"] == 200]
            bad = [r for r in records if r["status"] != 200]
            axis.scatter([r["start_s"] for r in ok], [r["latency_s"] for r in ok], s=8, label=f"{label} (200)")
            if bad:
                axis.scatter([r["start_s"] for r in bad], [r["latency_s"] for r in bad], s=14, marker="x",
                             label=f"{label} (failed)")
        if name == "database":
            axis.axvspan(part["outage_start_s"], part["outage_start_s"] + part["outage_s"], alpha=0.15, color="red",
                         label="database unreachable")
        if name == "llm-killed":
            axis.axvline(part["killed_at_s"], color="red", label="LLM engine killed")
        axis.set(title=name, xlabel="request sent at (s)", ylabel="latency (s)")
        axis.legend(fontsize=6)
    figure.suptitle(f"supertiny under faults ({result['model']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
