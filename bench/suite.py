"""The bench suite: every benchmark in one run and one combined report.

    python -m bench                                   # quality, routing, compress, serving (make bench)
    python -m bench --quick                           # small settings for each part (minutes)
    python -m bench --parts quality,serving --quick   # some parts only
    python -m bench --db postgresql+psycopg://... --domain bfcl --split test --threads 2

Parts:

- ``quality``: per-category accuracy of every model with a stored evaluation on ``--domain`` / ``--split``
  (the latest evaluation of each), a table model x category and a bar chart;
- ``routing``: :mod:`bench.routing` (tiny, LLM, cascade, hybrid-token); ``--quick``: 2 tasks a category,
  no hybrid decoding;
- ``compress``: :mod:`bench.compress` with ``--eval`` (accuracy from stored evaluations); ``--quick``: ``--tiny``;
- ``serving``: :mod:`bench.serving`; ``--quick``: fewer clients and requests.

routing, compress and serving run as subprocesses (each part's memory is its own and is given back) writing
into the report's folder; a part that fails is recorded in the report with its one-line error and the others
still run. ``--routing-args`` / ``--compress-args`` / ``--serving-args`` append options to a part's command
line (they override the suite's).

Writes ``bench/results/report-<timestamp>.md`` and ``.json``, and the parts' own files (JSON, markdown, PNG,
the log of each subprocess) under ``bench/results/report-<timestamp>/<part>/``.
"""

import argparse
import collections
import dataclasses
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PART_NAMES = ("quality", "routing", "compress", "serving")


@dataclasses.dataclass
class PartResult:
    """What one part left: its status (ok, failed, skipped), the one-line error or note, its files."""

    status: str = "ok"
    error: str | None = None
    seconds: float = 0.0
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # suffix (json, md, png, log) -> path
    result: dict[str, Any] | None = None  # the part's own JSON
    markdown: str = ""  # the part's own table


class PartFailed(Exception):
    """A part did not produce its result; the message is the one line the report shows, ``files`` what it
    left (its log)."""

    def __init__(self, message: str, files: dict[str, str] | None = None):
        super().__init__(message)
        self.files = files or {}


# --- the machine ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, torch version, OS, Python and the load average, without importing torch."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    system = platform.platform()
    try:
        release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', Path("/etc/os-release").read_text(), re.MULTILINE))
        system = f"{release.get('PRETTY_NAME', platform.system())} ({platform.system()} {platform.release()})"
    except OSError:
        pass
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "ram_bytes": ram, "torch": torch,
            "os": system, "python": platform.python_version(), "hostname": platform.node(),
            "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def machine_line(machine: dict[str, Any]) -> str:
    ram = f"{machine['ram_bytes'] / 2**30:.1f} GiB RAM" if machine.get("ram_bytes") else "RAM unknown"
    cores = f"{machine['cores']} cores"
    if machine.get("usable_cores") not in (None, machine["cores"]):
        cores += f" ({machine['usable_cores']} usable)"
    return (f"{machine['cpu']}, {cores}, {ram}, torch {machine['torch'] or 'not installed'}, {machine['os']}, "
            f"Python {machine['python']}")


# --- quality: stored evaluations ------------------------------------------------------------------


def latest_evaluations(store: Any, domain: str, split: str, models: list[str] | None = None) -> list[dict[str, Any]]:
    """The latest evaluation of each model on ``domain`` / ``split`` (of ``models`` only, when given), best
    accuracy first."""
    import sqlalchemy as sa
    from supertiny.eval.queries import latest_evaluation
    from supertiny.store import Evaluation, ModelVersion

    query = (sa.select(ModelVersion.name).join(Evaluation, Evaluation.model_version_id == ModelVersion.id)
             .where(Evaluation.domain == domain, Evaluation.split == split).distinct())
    if models:
        query = query.where(ModelVersion.name.in_(models))
    with store.session() as session:
        names = sorted(session.scalars(query))
    evaluations = [latest_evaluation(store, name, domain, split) for name in names]
    return sorted(evaluations, key=lambda evaluation: (-evaluation["accuracy"], evaluation["model"]))


def quality_result(evaluations: list[dict[str, Any]], domain: str, split: str) -> dict[str, Any]:
    categories = sorted({category for evaluation in evaluations for category in evaluation["per_category"] or {}})
    models = []
    for evaluation in evaluations:
        per_category = evaluation["per_category"] or {}
        models.append({
            "model": evaluation["model"], "evaluation_id": evaluation["id"], "n_tasks": evaluation["n_tasks"],
            "accuracy": evaluation["accuracy"], "invalid_rate": evaluation["invalid_rate"],
            "mean_latency_s": evaluation["mean_latency_s"], "created_at": str(evaluation["created_at"]),
            "per_category": {category: {"accuracy": stats.get("accuracy"), "n": stats.get("n")}
                             for category, stats in per_category.items()}})
    return {"domain": domain, "split": split, "categories": categories, "models": models}


def quality_markdown(result: dict[str, Any]) -> str:
    categories = result["categories"]
    lines = [f"Latest stored evaluation of each model on {result['domain']} / {result['split']} (accuracy; "
             "tasks in parentheses).", ""]
    header = ["model", "overall", *categories, "invalid", "latency s", "evaluation"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["models"]:
        cells = [row["model"], f"{row['accuracy']:.1%} ({row['n_tasks']})"]
        for category in categories:
            stats = row["per_category"].get(category)
            cells.append("-" if not stats or stats["accuracy"] is None else f"{stats['accuracy']:.1%} ({stats['n']})")
        cells += [f"{row['invalid_rate']:.1%}", f"{row['mean_latency_s']:.2f}",
                  f"#{row['evaluation_id']} {row['created_at'][:16]}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def quality_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*result["categories"], "overall"]
    models = result["models"]
    width = 0.8 / max(1, len(models))
    figure, axis = plt.subplots(figsize=(max(7.0, 1.0 + len(groups) * (0.5 + 0.25 * len(models))), 4.5))
    for index, row in enumerate(models):
        values = [(row["per_category"].get(group) or {}).get("accuracy") or 0.0 for group in groups[:-1]]
        positions = [position - 0.4 + width * (index + 0.5) for position in range(len(groups))]
        axis.bar(positions, [*values, row["accuracy"]], width, label=row["model"])
    axis.set(xticks=list(range(len(groups))), ylabel="accuracy", ylim=(0, 1),
             title=f"accuracy per category ({result['domain']} {result['split']})")
    axis.set_xticklabels(groups, rotation=20, ha="right")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_quality(args: argparse.Namespace, folder: Path) -> PartResult:
    from supertiny.config import get_settings
    from supertiny.store.session import open_store

    store = open_store(get_settings(database_url=args.db))
    models = [name.strip() for name in (args.models or "").split(",") if name.strip()] or None
    evaluations = latest_evaluations(store, args.domain, args.split, models)
    if not evaluations:
        return PartResult(status="skipped", error=f"no model has a stored evaluation on {args.domain} / {args.split}"
                          " (`supertiny eval run`)")
    result = quality_result(evaluations, args.domain, args.split)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / "quality"
    table = quality_markdown(result)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(table)
    quality_plot(result, stem.with_suffix(".png"))
    return PartResult(result=result, markdown=table,
                      files={suffix: str(stem.with_suffix(f".{suffix}")) for suffix in ("json", "md", "png")})


# --- the benchmarks that run as subprocesses ------------------------------------------------------


def routing_command(args: argparse.Namespace) -> list[str]:
    command = ["--domain", args.domain, "--split", args.split]
    if args.quick:
        command += ["--per-category", "2", "--hybrid-thresholds", ""]
    return command + _common(args, db=True)


def compress_command(args: argparse.Namespace) -> list[str]:
    if args.quick:
        command = ["--tiny"]
    else:
        command = ["--eval", "--eval-domain", args.domain, "--eval-split", args.split]
        if args.models:
            command += ["--models", args.models]
    return command + _common(args, db=not args.quick)


def serving_command(args: argparse.Namespace) -> list[str]:
    command = ["--model", args.serving_model] if args.serving_model else []
    if args.serving_engines:
        command += ["--engines", args.serving_engines]
    if args.quick:
        command += ["--concurrency", "1,4", "--min-requests", "8", "--requests-per-client", "2", "--max-tokens", "8"]
    return command + _common(args, db=False)  # serving writes a policy and request logs: a scratch store


def _common(args: argparse.Namespace, db: bool) -> list[str]:
    return (["--threads", str(args.threads)] if args.threads else []) + (["--db", args.db] if db and args.db else [])


def run_module(part: str, arguments: list[str], folder: Path, timeout_s: float | None) -> PartResult:
    """``python -m bench.<part> ARGUMENTS --out FOLDER``, its output shown (prefixed) and kept in
    ``<part>.log``; its result is the newest JSON in FOLDER and the files of the same stem."""
    module = f"bench.{part}"
    if importlib.util.find_spec(module) is None:
        raise PartFailed(f"{module} does not exist")
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{part}.log"
    command = [sys.executable, "-m", module, *arguments, "--out", str(folder)]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    timed_out = threading.Event()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    print(f"[{part}] {shlex.join(command[1:])}", file=sys.stderr, flush=True)
    with log_path.open("w") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, errors="replace") as process:
        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout_s, kill) if timeout_s else None
        if timer:
            timer.start()
        try:
            for line in process.stdout or []:
                log.write(line)
                print(f"[{part}] {line}", end="", file=sys.stderr, flush=True)
                if line.strip():
                    tail.append(line.rstrip())
            returncode = process.wait()
        finally:
            if timer:
                timer.cancel()
    files = {"log": str(log_path)}
    if timed_out.is_set():
        raise PartFailed(f"timed out after {timeout_s:g} s", files)
    if returncode != 0:
        raise PartFailed(f"exit status {returncode}: {(tail[-1] if tail else 'no output')[:300]}", files)
    written = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime)
    if not written:
        raise PartFailed(f"{module} wrote no JSON into {folder}", files)
    stem = written[-1].with_suffix("")
    for suffix in ("json", "md", "png"):
        if stem.with_suffix(f".{suffix}").exists():
            files[suffix] = str(stem.with_suffix(f".{suffix}"))
    markdown = Path(files["md"]).read_text() if "md" in files else ""
    return PartResult(result=json.loads(written[-1].read_text()), markdown=markdown, files=files)


def _subprocess_part(part: str, command: Callable[[argparse.Namespace], list[str]]) -> Callable[..., PartResult]:
    def run(args: argparse.Namespace, folder: Path) -> PartResult:
        extra = shlex.split(getattr(args, f"{part}_args") or "")
        return run_module(part, [*command(args), *extra], folder, args.part_timeout)

    return run


PARTS: dict[str, Callable[[argparse.Namespace, Path], PartResult]] = {
    "quality": run_quality,
    "routing": _subprocess_part("routing", routing_command),
    "compress": _subprocess_part("compress", compress_command),
    "serving": _subprocess_part("serving", serving_command),
}


# --- the report -----------------------------------------------------------------------------------


def run_part(name: str, args: argparse.Namespace, folder: Path) -> PartResult:
    """One part; whatever it raises becomes its failure, in one line."""
    started = time.perf_counter()
    try:
        part = PARTS[name](args, folder / name)
    except PartFailed as exc:
        part = PartResult(status="failed", error=str(exc), files=exc.files)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        part = PartResult(status="failed", error=f"{type(exc).__name__}: {message}"[:300])
    part.seconds = round(time.perf_counter() - started, 1)
    print(f"[{name}] {part.status} in {part.seconds:.0f} s{': ' + part.error if part.error else ''}",
          file=sys.stderr, flush=True)
    return part


def report_markdown(report: dict[str, Any], root: Path) -> str:
    lines = [f"# supertiny bench report ({report['created']})", "",
             f"**Machine:** {machine_line(report['machine'])}; load average at start "
             f"{', '.join(str(value) for value in report['machine'].get('load_average') or [])}", "",
             f"**Date:** {report['created']}  ", f"**Command:** `{report['command']}`", "",
             "| part | status | time | note |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        lines.append(f"| {name} | {part['status']} | {part['seconds']:.0f} s | {part['error'] or ''} |")
    for name, part in report["parts"].items():
        lines += ["", f"## {name}", ""]
        if part["status"] != "ok":
            lines += [f"**{part['status']}:** {part['error']}", ""]
        body = _demote(part["markdown"]).strip()
        if body:
            lines += [body, ""]
        if "png" in part["files"]:
            lines += [f"![{name}]({_relative(part['files']['png'], root)})", ""]
        others = [f"[{suffix}]({_relative(path, root)})" for suffix, path in part["files"].items() if suffix != "png"]
        if others:
            lines += ["files: " + ", ".join(others), ""]
    return "\n".join(lines).rstrip() + "\n"


def _demote(markdown: str) -> str:
    """A part's own headings, below the report's ``## part``."""
    return re.sub(r"^(#+) ", lambda match: "#" * min(6, len(match.group(1)) + 2) + " ", markdown, flags=re.MULTILINE)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def parse_parts(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PART_NAMES]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are among {', '.join(PART_NAMES)}; got {text!r}")
    return list(dict.fromkeys(parts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=parse_parts, default=list(PART_NAMES),
                        help=f"Comma-separated parts to run (default: {','.join(PART_NAMES)}).")
    parser.add_argument("--quick", action="store_true", help="Small settings for each part.")
    parser.add_argument("--db", help="Database URL of the store (default: the settings' store).")
    parser.add_argument("--domain", default="bfcl", help="Domain of the evaluations (quality, routing, compress).")
    parser.add_argument("--split", default="test")
    parser.add_argument("--models", help="Comma-separated models for quality and compress (default: all).")
    parser.add_argument("--serving-model", help="Model of the serving part (default: a tiny in-process model).")
    parser.add_argument("--serving-engines", help="Engines of the serving part, side by side (default: in-process,"
                        "batched; add vllm for the model's vLLM engine).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of each part (0: torch's default).")
    parser.add_argument("--part-timeout", type=float, help="Seconds a subprocess part may run.")
    for part in ("routing", "compress", "serving"):
        parser.add_argument(f"--{part}-args", default="", help=f"More options for bench.{part}, one string "
                            f"(--{part}-args='--threads 1'; with '=' when it is a single option).")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder of the report.")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts, write the combined report, return it."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = dt.datetime.now()
    stem = args.out / f"report-{started:%Y%m%d-%H%M%S}"  # stem.md, stem.json and the parts' files in stem/
    stem.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "created": started.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
        "command": shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "parts": {}}
    print(f"bench suite: {', '.join(args.parts)}{' (quick)' if args.quick else ''}; {machine_line(report['machine'])}",
          file=sys.stderr, flush=True)
    for name in args.parts:
        report["parts"][name] = dataclasses.asdict(run_part(name, args, stem))
    report["finished"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    stem.with_suffix(".md").write_text(report_markdown(report, args.out))
    print(f"wrote {stem}.md and .json", flush=True)
    return report
