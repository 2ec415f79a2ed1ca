"""Training speed: optimizer steps of sft on one snapshot, per variant of the trainer's options, side by side,
alone on the machine and beside a resident engine.

    python -m bench.training --data demo-a06cc3-bfcl@1 --steps 3 --repeats 2 \\
        --variant trl-head:head=trl --variant default --variant no-dropout:lora_dropout=0 \\
        --beside-engine qwen2.5-coder-1.5b-instruct-w8a8

Each run trains the student (default: the demo's) for ``--steps`` optimizer steps on the snapshot's first records in
a process of its own, with ``supertiny train sft``'s options (``--grad-accum``; a variant overrides any option by
its field name; ``head=trl`` trains with TRL's own trainer and its fused output head instead of the labelled
positions' loss, as a baseline) and registers nothing: what it measures is the trainer's loop, not loading or
saving. Every run of a round sees the same records in the same order. Rounds alternate which block runs first
(alone, or beside the engine of ``--beside-engine``, started with the demo's options and stopped after its block),
so drift on a shared machine falls on both sides.

Per run: the seconds of each optimizer step, the median step after the first (which warms up oneDNN's kernels),
tokens per second, the loss after the last step and the peak RSS. Per variant and condition: the median over
rounds, and the change against the first variant alone.

Writes ``bench/results/training-<timestamp>.json``, ``.png`` and ``.md``.
"""

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from supertiny.errors import SupertinyError

from bench.engines import machine
from bench.result_files import write_result_files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
STUDENT = "qwen2.5-coder-0.5b-instruct"
ALONE = "alone"


@dataclasses.dataclass
class Variant:
    """A name and the SFTConfig fields it sets."""

    name: str
    options: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``NAME`` or ``NAME:field=value,field=value`` (values as JSON where they parse, else strings)."""
        name, _, fields = text.partition(":")
        options: dict[str, Any] = {}
        for pair in filter(None, (part.strip() for part in fields.split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"variant {text!r}: {pair!r} is not field=value")
            try:
                options[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                options[key.strip()] = value
        return cls(name.strip(), options)


class StepClock:
    """A :class:`~supertiny.progress.Progress` that records when each optimizer step ends."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.step_ends: dict[int, float] = {}

    def phase(self, description: str, total: int | None = None) -> None:
        self.started = time.perf_counter()

    def update(self, done: int, **info: Any) -> None:
        if done and done not in self.step_ends:
            self.step_ends[done] = time.perf_counter()

    def step_seconds(self) -> list[float]:
        ends = [self.step_ends[step] for step in sorted(self.step_ends)]
        return [round(end - start, 3) for start, end in zip([self.started, *ends], ends, strict=False)]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a subprocess: train ``spec["steps"]`` steps of sft on the snapshot's first records; the timings."""
    import resource

    from supertiny.artifacts.facts import model_ref
    from supertiny.config import get_settings
    from supertiny.data.snapshot import get_snapshot, snapshot_items
    from supertiny.models.versions import get_model_version
    from supertiny.store.session import open_store
    from supertiny.train.sft_config import SFTConfig
    from supertiny.train.sft_trainer import fine_tune, training_records

    options = dict(spec["options"])
    if options.pop("head", "labelled") == "trl":  # the baseline: TRL's own trainer, with its fused output head
        import supertiny.train.sft_trainer as sft_trainer
        import trl

        sft_trainer._labelled_loss_trainer = lambda: trl.SFTTrainer
    store = open_store(get_settings(database_url=spec["db"]))
    config = SFTConfig(**{"grad_accum": spec["grad_accum"], **options, "max_steps": spec["steps"],
                          "save_steps": 10**6, "logging_steps": 1})  # the last loss is the last step's
    config.validate()
    dataset = get_snapshot(store, spec["data"])
    records = training_records(snapshot_items(store, dataset, config.split), config.verdict, config.call_prose)
    records = records[: spec["steps"] * config.grad_accum * config.batch_size]
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="supertiny-bench-training-") as output:
        _, _, metrics = fine_tune(model_ref(get_model_version(store, spec["student"])), records, config,
                                  Path(output), clock)
    steps = clock.step_seconds()
    # the first step also warms up the kernels (oneDNN primitives are made at first use of each shape)
    steady = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    tokens, wall = metrics["tokens_seen"], metrics["train_wall_s"]
    return {"step_s": steps, "median_step_s": round(steady, 3), "train_wall_s": wall, "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1),
            "loss_last": metrics.get("loss_last"), "records": len(records),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    process = subprocess.run([sys.executable, "-m", "bench.training", "--worker", json.dumps(spec)], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"error": (process.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def engine_block(args: argparse.Namespace, start: bool) -> float:
    """Start (or stop) the engine of ``--beside-engine`` with the demo's options; seconds it took."""
    from supertiny.config import get_settings
    from supertiny.demo.engines import LLM_KV_CACHE_GIB
    from supertiny.engine.launch import EngineOptions
    from supertiny.engine.manager import start_engine, stop_engine
    from supertiny.store.session import open_store

    settings = get_settings(database_url=args.db)
    store = open_store(settings)
    started = time.perf_counter()
    if start:
        start_engine(store, settings, args.beside_engine, EngineOptions(eager=True, kv_cache_gib=LLM_KV_CACHE_GIB),
                     say=lambda line: print(f"  {line}", flush=True))
    else:
        stop_engine(store, args.beside_engine)
    return round(time.perf_counter() - started, 1)


def check_inputs(args: argparse.Namespace) -> None:
    """The snapshot and the models exist, before anything runs (a SupertinyError naming what is missing)."""
    from supertiny.config import get_settings
    from supertiny.data.snapshot import get_snapshot
    from supertiny.models.versions import get_model_version
    from supertiny.store.session import open_store

    store = open_store(get_settings(database_url=args.db))
    get_snapshot(store, args.data)
    for name in filter(None, (args.student, args.beside_engine)):
        get_model_version(store, name)


def summarize(runs: list[dict[str, Any]], variants: list[str], conditions: list[str]) -> list[dict[str, Any]]:
    rows = []
    for condition in conditions:
        for variant in variants:
            done = [run for run in runs if run["variant"] == variant and run["condition"] == condition
                    and "error" not in run]
            if not done:
                continue
            rows.append({"variant": variant, "condition": condition, "runs": len(done),
                         "median_step_s": round(statistics.median(run["median_step_s"] for run in done), 3),
                         "tokens_per_s": round(statistics.median(run["tokens_per_s"] for run in done), 1),
                         "loss_last": [run["loss_last"] for run in done],
                         "peak_rss_gib": round(max(run["peak_rss_bytes"] for run in done) / 2**30, 2)})
    if rows:
        base = rows[0]["median_step_s"]
        for row in rows:
            row["vs_first"] = round(row["median_step_s"] / base - 1, 3)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Training speed: sft, {result['steps']} steps of {result['grad_accum']} records",
             "", f"{result['created']}, {result['machine']}; student {result['student']}, snapshot {result['data']}, "
             f"{result['repeats']} round(s); every run in its own process, the same records in the same order.", "",
             "| variant | condition | runs | median step (s) | tokens/s | vs first | last loss | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        losses = ", ".join(f"{loss:.4f}" for loss in row["loss_last"] if loss is not None)
        lines.append(f"| {row['variant']} | {row['condition']} | {row['runs']} | {row['median_step_s']:.2f} | "
                     f"{row['tokens_per_s']:.1f} | {row['vs_first']:+.1%} | {losses} | {row['peak_rss_gib']:.2f} |")
    lines += ["", "Variants: " + "; ".join(f"{name}: {options or 'the defaults'}"
                                            for name, options in result["variants"].items())]
    if result["engine_s"]:
        lines.append(f"Engine of {result['beside_engine']}: start/stop seconds {result['engine_s']}.")
    errors = [run for run in result["runs"] if "error" in run]
    lines += [f"- failed: {run['variant']} ({run['condition']}): {run['error']}" for run in errors]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    labels = [f"{row['variant']} ({row['condition']})" for row in rows]
    axis.barh(labels, [row["median_step_s"] for row in rows], color="tab:blue")
    for index, row in enumerate(rows):
        axis.text(row["median_step_s"], index, f" {row['median_step_s']:.1f} s", va="center")
    axis.invert_yaxis()
    axis.set_xlabel(f"median seconds per optimizer step ({result['grad_accum']} records)")
    axis.set_title("sft step time")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help="Snapshot NAME@VERSION to train on.")
    parser.add_argument("--student", default=STUDENT)
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per run.")
    parser.add_argument("--grad-accum", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="Rounds: each runs every variant once per condition.")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME[:field=value,...] of SFTConfig (repeatable; default: the defaults only).")
    parser.add_argument("--beside-engine", help="Also run every variant beside this model's engine.")
    parser.add_argument("--db", help="Database URL of the store (default: the settings' store).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return {}
    if not args.data:
        parser.error("--data is required")
    try:
        variants = [Variant.parse(text) for text in args.variant or ["default"]]
    except ValueError as exc:
        parser.error(str(exc))
    from supertiny.train.sft_config import SFTConfig

    known = {field.name for field in dataclasses.fields(SFTConfig)} | {"head"}
    for variant in variants:
        unknown = sorted(set(variant.options) - known)
        if unknown:
            parser.error(f"variant {variant.name!r}: no sft option {', '.join(unknown)} (the fields of SFTConfig)")
    try:
        check_inputs(args)
    except SupertinyError as exc:
        parser.error(exc.message)
    conditions = [ALONE] + ([f"beside {args.beside_engine}"] if args.beside_engine else [])
    runs: list[dict[str, Any]] = []
    engine_s: list[float] = []
    for round_index in range(args.repeats):
        order = conditions if round_index % 2 == 0 else conditions[::-1]
        for condition in order:
            if condition != ALONE:
                engine_s.append(engine_block(args, start=True))
            try:
                for variant in variants:
                    spec = {"db": args.db, "data": args.data, "student": args.student, "steps": args.steps,
                            "grad_accum": args.grad_accum, "options": variant.options}
                    run = {"round": round_index, "variant": variant.name, "condition": condition, **run_worker(spec)}
                    runs.append(run)
                    shown = run.get("error") or f"median step {run['median_step_s']:.2f} s, {run['tokens_per_s']} tok/s"
                    print(f"round {round_index + 1} {condition} {variant.name}: {shown}", flush=True)
            finally:
                if condition != ALONE:
                    engine_s.append(engine_block(args, start=False))
    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
              "student": args.student, "data": args.data, "steps": args.steps, "grad_accum": args.grad_accum,
              "repeats": args.repeats, "beside_engine": args.beside_engine, "engine_s": engine_s,
              "variants": {variant.name: variant.options for variant in variants},
              "summary": summarize(runs, [variant.name for variant in variants], conditions), "runs": runs}
    write_result_files(args.out, "training", result, markdown(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
