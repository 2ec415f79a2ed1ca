"""Compression benchmark: what pruning and quantization buy on this machine, against the memory-bandwidth bound.

    python -m bench.compress --tiny                       # a tiny model, pruned and quantized on the fly (~20 s)
    python -m bench.compress --tiny --make gguf-q4_0      # ... and exported to GGUF q4_0 (needs llama-cpp-python)
    python -m bench.compress                              # the student and every pruned / healed / quantized model
    python -m bench.compress --models a,b --eval          # these models, with their stored BFCL test accuracy
    python -m bench.compress --make int8,int4 --new-tokens 24   # quantize the student into a scratch store first
    python -m bench.compress --make gguf-q8_0,gguf-q4_0,prune400M+gguf-q4_0 --threads 2   # torch vs llama.cpp
    python -m bench.compress --make gguf-q4_0,gguf-q4_0-max --eval-run 10   # q4_0 scales: searched vs llama.cpp's

It measures the machine's memory-read bandwidth (a sum over a 1 GiB buffer, best of 3), then, for each model in
a subprocess of its own (so peak RAM is that model's alone): parameters, bytes on disk, prefill and decode
tokens/s (greedy, one sequence, :func:`supertiny.artifacts.speed.measure_speed`; a llama.cpp (GGUF) model times
the same work itself, ``LlamaCppChatModel.measure_speed``), the bytes of weights one decode step reads (every
matrix once; the input embedding only when the output head is tied to it; for a GGUF, its tensors' bytes by the
same rule), decode speed as a fraction of the bound ``bandwidth / bytes per token``, decode tokens per
CPU-second (on a shared machine, with ``--threads 1``, the fairer comparison: see
:mod:`supertiny.artifacts.speed`) and peak RSS (VmHWM: load + measurement, with torch's own ~0.3 GiB). torch and
llama.cpp run on the same number of threads (``--threads``, else torch's default). With ``--eval``, accuracy
per category from the latest stored evaluation on ``--eval-domain`` / ``--eval-split`` (``--eval-run N``
evaluates N tasks a category where none is stored, or where the stored one has fewer): each accuracy with its
95% Wilson interval, the share of invalid answers, the tokens per answer (a model that does not stop writes up to
the budget) and, against the first evaluated model, an exact McNemar test on the tasks both answered.

Writes ``bench/results/compress/compress-<timestamp>.json``, ``.md`` (a table) and ``.png`` (accuracy, or
decode tokens/s without --eval, against bytes).
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from supertiny.eval.stats import format_p_value

from bench.result_files import write_result_files

RESULTS = Path(__file__).resolve().parent / "results" / "compress"
ROOT = Path(__file__).resolve().parents[1]
STUDENT = "qwen2.5-coder-0.5b-instruct"
COMPRESSED_STAGES = ("pruned", "healed", "quantized")  # a GGUF export (`compress gguf`) is "quantized"
# the backend options measure() keeps: transformers' GGUF file and dtype, llama.cpp's tokenizer and context
LOAD_KEYS = ("gguf_file", "dtype", "tokenizer", "n_ctx", "n_batch")


def memory_bandwidth(gib: float = 1.0, repeats: int = 3, threads: int = 0) -> float:
    """Read bandwidth in GB/s: the best of ``repeats`` sums over a ``gib`` GiB buffer with ``threads`` torch
    threads (0: torch's default), the threads the models decode with."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    buffer = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    buffer.sum()  # fault the pages in
    best = min(_timed(buffer.sum) for _ in range(repeats))
    return buffer.numel() * 4 / best / 1e9


def _timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every tensor once, except an input embedding that is not also
    the output head (decoding looks up one row of it)."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    skip = set()
    if head is None or head.weight is not embedding.weight:
        skip = {tensor.data_ptr() for tensor in [*embedding.parameters(), *embedding.buffers()]}
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        pointer = tensor.data_ptr()
        if pointer in seen or pointer in skip:
            continue
        seen.add(pointer)
        total += tensor.numel() * tensor.element_size()
    return total


def gguf_bytes_per_token(path: str | Path) -> int:
    """:func:`bytes_per_token` of a GGUF file: every tensor once, except ``token_embd`` when the file has an
    ``output`` head of its own (untied: decoding looks up one row of the embedding)."""
    import gguf

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in gguf.GGUFReader(str(path)).tensors}
    if "output.weight" in sizes:
        sizes.pop("token_embd.weight", None)
    return sum(sizes.values())


def best_speed(speeds: list[Any]) -> Any:
    """One :class:`~supertiny.artifacts.speed.Speed` of several timings, the best prefill and the best
    whole generation (prefill + decode), as :func:`~supertiny.artifacts.speed.measure_speed` takes them."""
    from supertiny.artifacts.speed import Speed

    prefill, prefill_cpu = min(s.prefill_s for s in speeds), min(s.prefill_cpu_s for s in speeds)
    total = min(s.prefill_s + s.decode_s for s in speeds)
    total_cpu = min(s.prefill_cpu_s + s.decode_cpu_s for s in speeds)
    return Speed(prompt_tokens=speeds[0].prompt_tokens, new_tokens=speeds[0].new_tokens, prefill_s=prefill,
                 decode_s=max(total - prefill, 1e-9), prefill_cpu_s=prefill_cpu,
                 decode_cpu_s=max(total_cpu - prefill_cpu, 1e-9))


def peak_rss() -> int:
    """This process's peak resident set: VmHWM (not ru_maxrss, which a child inherits from the process that
    forked it), else ru_maxrss where there is no /proc."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a subprocess: open one model through its backend, time it, report peak RSS. A model that times
    itself (llama.cpp's) does; a torch model is timed by :func:`supertiny.artifacts.speed.measure_speed`."""
    import torch
    from supertiny.artifacts.speed import measure_speed
    from supertiny.registry import lookup

    threads = spec["threads"] or torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    # every local backend takes a thread count: llama.cpp's own default would be every CPU, not torch's
    chat = lookup("backend", spec["backend"]).open(spec["path"], {**spec["config"], "threads": threads})
    load_s = time.perf_counter() - started
    own_speed = getattr(chat, "measure_speed", None)
    if own_speed is not None:
        from supertiny.models.llamacpp_backend import find_gguf

        speed = best_speed([own_speed(spec["prompt_tokens"], spec["new_tokens"])
                            for _ in range(max(spec["repeats"], 1))])
        read = gguf_bytes_per_token(find_gguf(spec["path"]))
    else:
        speed = measure_speed(chat.model, chat.tokenizer, spec["prompt_tokens"], spec["new_tokens"],
                              spec["repeats"])
        read = bytes_per_token(chat.model)
    return {"load_s": round(load_s, 2), **speed.as_dict(), "bytes_per_token": read, "peak_rss_bytes": peak_rss(),
            "threads": threads}


def measure(row: Any, args: argparse.Namespace) -> dict[str, Any]:
    from supertiny.models.versions import backend_options

    spec = {"backend": row.backend, "path": row.path, "config": backend_options(row.config),
            "threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
            "repeats": args.repeats}
    # only what decides how the weights load and run: a trained row's config also holds its training options
    spec["config"] = {key: value for key, value in spec["config"].items() if key in LOAD_KEYS}
    process = subprocess.run([sys.executable, "-m", "bench.compress", "--worker", json.dumps(spec)], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"error": (process.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def accuracy(store: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from supertiny.errors import SupertinyError
    from supertiny.eval.queries import latest_evaluation

    try:
        stored = latest_evaluation(store, name, args.eval_domain, args.eval_split, with_records=True)
    except SupertinyError:
        if not args.eval_run:
            return {}
        stored = None
    # a smaller stored evaluation (e.g. the demo's 3 a category) would mix sample sizes in one table
    if stored is None or (args.eval_run and stored["n_tasks"] < args.eval_run * len(stored["per_category"])):
        from supertiny.eval.runner import EvalConfig, evaluate
        from supertiny.runtime.loading import close_models

        try:
            evaluate(store, EvalConfig(model=name, domain=args.eval_domain, split=args.eval_split,
                                       per_category=args.eval_run))
        except SupertinyError as exc:
            return {"eval_error": str(exc)}
        finally:
            close_models()
        stored = latest_evaluation(store, name, args.eval_domain, args.eval_split, with_records=True)
    return {"accuracy": stored["accuracy"], "eval_tasks": stored["n_tasks"], "evaluation_id": stored["id"],
            "correct": round(stored["accuracy"] * stored["n_tasks"]), "invalid_rate": stored.get("invalid_rate"),
            "tokens_per_request": stored.get("tokens_per_request"), "at_budget": _answers_at_budget(stored),
            "per_category": {category: stats["accuracy"] for category, stats in stored["per_category"].items()},
            "evaluation": stored}


def _answers_at_budget(stored: dict[str, Any]) -> int | None:
    """How many answers used the whole token budget: a model that does not stop after its calls does."""
    budget = (stored.get("config") or {}).get("max_new_tokens")
    if not budget:
        return None
    return sum((record.get("completion_tokens") or 0) >= budget for record in stored.get("records", []))


def paired_tests(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluated model against the first evaluated one, on the tasks both answered (exact McNemar)."""
    from supertiny.eval.queries import paired_test

    evaluated = [row["evaluation"] for row in models if row.get("evaluation")]
    return [paired_test(evaluated[0], other) for other in evaluated[1:]]


def make_tiny(store: Any, settings: Any) -> list[str]:
    """A tiny student, pruned by a fifth, and quantized to int8."""
    from supertiny.compress.prune_config import PruneConfig
    from supertiny.models.versions import register_external
    from supertiny.runs.pipeline import compress_model
    from supertiny.testing import build_tiny_model

    register_external(store, build_tiny_model(settings.home / "tiny-student", hidden_size=128, intermediate_size=384),
                      name="tiny")
    pruned = compress_model(store, settings, "prune", model="tiny",
                            config=PruneConfig(ratio=0.2, importance="magnitude"))
    return ["tiny", pruned.name, compress_model(store, settings, "quantize", model="tiny").name]


def make_variants(store: Any, settings: Any, student: str, recipes: list[str]) -> list[str]:
    """Compress ``student`` (registered in the real store) into this scratch store. A recipe is int8, int4,
    pruneN (magnitude pruning to N parameters, e.g. prune400M: for speed only, no calibration, no healing) or
    gguf-TYPE (a GGUF export for llama.cpp: gguf-q8_0, gguf-q4_0, gguf-f16; gguf-q4_0-max with llama.cpp's
    reference q4_0 scales), or several joined by ``+``
    (prune400M+int8 quantizes the pruned model, prune400M+gguf-q4_0 exports it)."""
    from supertiny.compress.gguf_config import GGUFConfig
    from supertiny.compress.prune_config import PruneConfig
    from supertiny.compress.quantize_config import QuantizeConfig
    from supertiny.models.versions import find_model_version
    from supertiny.registry import get_compressors
    from supertiny.runs.pipeline import compress_model

    names = [student]
    for recipe in recipes:
        source = student
        for step in recipe.split("+"):
            if step.startswith("prune"):
                algorithm, config = "prune", PruneConfig(target_params=step[len("prune"):] or "0.4B",
                                                         importance="magnitude")
            elif step.startswith("gguf-"):
                out_type, _, scales = step[len("gguf-"):].partition("-")
                algorithm, config = "gguf", GGUFConfig(type=out_type, q4_scales=scales or "search")
            else:
                algorithm, config = "quantize", QuantizeConfig(scheme=step)
            name = f"{source}-{get_compressors()[algorithm].name_suffix(config)}"
            if find_model_version(store, name) is None:  # made by an earlier recipe or run (--scratch)
                compress_model(store, settings, algorithm, model=source, config=config, name=name)
            source = name
            if source not in names:
                names.append(source)
    return names


def choose_models(args: argparse.Namespace, scratch: Path | None) -> tuple[Any, list[str]]:
    """The store to read the models from and their names: a scratch store with what --tiny / --make made,
    else the settings' store (--models, or the student and every compressed model)."""
    from supertiny.config import Settings, get_settings
    from supertiny.models.versions import find_model_version, get_model_version, list_model_versions
    from supertiny.store.session import open_store

    store = None if args.tiny else open_store(get_settings(database_url=args.db))  # --tiny reads no store
    if scratch is None:
        if args.models:
            return store, [name.strip() for name in args.models.split(",") if name.strip()]
        return store, ([args.student] if find_model_version(store, args.student) else []) + [
            row.name for row in list_model_versions(store) if row.stage in COMPRESSED_STAGES]
    scratch_settings = Settings(home=scratch, database_url=f"sqlite:///{scratch / 'bench.db'}")
    scratch_store = open_store(scratch_settings)
    if args.tiny:
        args.bandwidth_gib = min(args.bandwidth_gib, 0.25)
        args.threads = args.threads or 1
        names = make_tiny(scratch_store, scratch_settings)
        recipes = [recipe.strip() for recipe in args.make.split(",") if recipe.strip()]
        made = make_variants(scratch_store, scratch_settings, names[0], recipes) if recipes else []
        return scratch_store, names + [name for name in made if name not in names]
    from supertiny.models.versions import register_model_version

    base = get_model_version(store, args.student)
    register_model_version(scratch_store, name=base.name, stage=base.stage, format=base.format, backend=base.backend,
                           path=base.path, config=base.config, param_count=base.param_count,
                           size_bytes=base.size_bytes, replace=True)
    return scratch_store, make_variants(scratch_store, scratch_settings, base.name,
                                        [recipe.strip() for recipe in args.make.split(",") if recipe.strip()])


def summary_line(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return entry["error"]
    return (f"{entry['decode_tok_s']:.1f} decode tok/s ({entry['fraction_of_bound']:.0%} of {entry['bound_tok_s']:.1f};"
            f" {entry['decode_cpu_tok_s']:.1f} a CPU-second), prefill {entry['prefill_tok_s']:.1f} tok/s, "
            f"{entry['bytes_per_token'] / 1e6:.0f} MB/token, peak {entry['peak_rss_bytes'] / 2**30:.2f} GiB")


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Compression benchmark ({result['created']})", "",
             f"{result['machine']}; memory read bandwidth {result['bandwidth_gb_s']:.1f} GB/s; prompt "
             f"{result['prompt_tokens']} tokens, {result['new_tokens']} new tokens, greedy, best of "
             f"{result['repeats']}.", ""]
    categories = sorted({category for row in result["models"] for category in row.get("per_category", {})})
    header = ["model", "stage", "params", "MB on disk", "MB read/token", "prefill tok/s", "decode tok/s",
              "decode tok/CPU-s", "bound tok/s", "of bound", "peak RSS GiB",
              *(["accuracy [95% interval]", "invalid", "tokens / answer", "at the token budget", *categories]
                if categories else [])]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["models"]:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['stage']} | error: {row['error']} |")
            continue
        cells = [row["name"], row["stage"], f"{(row['params'] or 0) / 1e6:.1f}M", f"{row['size_bytes'] / 1e6:.0f}",
                 f"{row['bytes_per_token'] / 1e6:.0f}", f"{row['prefill_tok_s']:.1f}", f"{row['decode_tok_s']:.1f}",
                 f"{row['decode_cpu_tok_s']:.1f}", f"{row['bound_tok_s']:.1f}", f"{row['fraction_of_bound']:.0%}",
                 f"{row['peak_rss_bytes'] / 2**30:.2f}"]
        if categories:
            cells += [_accuracy(row), _percent(row.get("invalid_rate")),
                      "-" if row.get("tokens_per_request") is None else f"{row['tokens_per_request']:.0f}",
                      "-" if row.get("at_budget") is None else f"{row['at_budget']} of {row['eval_tasks']}"]
            cells += [_percent(row.get("per_category", {}).get(c)) for c in categories]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "bound = bandwidth / bytes read per decode step; tok/CPU-s = tokens per second of this process's "
              "CPU time (with one thread: the speed on an idle core, when the machine is shared); peak RSS (VmHWM) "
              "includes the Python process and torch."]
    if result.get("paired"):
        baseline = result["paired"][0]["baseline"]
        lines += ["", f"Paired against {baseline} on the tasks both answered (exact McNemar):", ""]
        lines += [f"- {test['model']}: {test['difference'] * 100:+.1f} points on {test['shared_tasks']} tasks "
                  f"({test['only_model']} right only for it, {test['only_baseline']} only for the baseline), "
                  f"{format_p_value(test['p_value'])}" for test in result["paired"] if test["difference"] is not None]
    return "\n".join(lines) + "\n"


def _accuracy(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        return "-"
    from supertiny.eval.stats import format_accuracy

    return format_accuracy(row["correct"], row["eval_tasks"])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["models"] if "error" not in row]
    with_accuracy = any(row.get("accuracy") is not None for row in rows)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        value = row.get("accuracy") if with_accuracy else row["decode_tok_s"]
        if value is None:
            continue
        if with_accuracy:
            from supertiny.eval.stats import wilson_interval

            low, high = wilson_interval(row["correct"], row["eval_tasks"])
            axis.errorbar(row["size_bytes"] / 1e6, value, yerr=[[value - low], [high - value]], fmt="o", capsize=4)
        else:
            axis.scatter(row["size_bytes"] / 1e6, value, s=40)
        axis.annotate(row["name"], (row["size_bytes"] / 1e6, value), fontsize=7, xytext=(4, 4),
                      textcoords="offset points")
    axis.set(xlabel="MB on disk",
             ylabel=f"{result['eval']} accuracy (95% interval)" if with_accuracy else "decode tokens / s",
             title=f"compression: {'accuracy' if with_accuracy else 'decode speed'} vs size")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="A tiny model and its compressed versions, made in a "
                        "scratch store (seconds; for tests); with --make, its variants too.")
    parser.add_argument("--models", help="Comma-separated registered models (default: the student and every "
                        "pruned / healed / quantized model).")
    parser.add_argument("--student", default=STUDENT, help="The base student.")
    parser.add_argument("--make", default="", help="Comma-separated variants of --student to make first in a "
                        "scratch store: int8, int4, prune400M, gguf-q8_0, gguf-q4_0, gguf-f16, joined by + to "
                        "chain (prune400M+gguf-q4_0) ... (the real store is only read).")
    parser.add_argument("--scratch", type=Path, help="Keep (and reuse) the models --tiny / --make make in this "
                        "directory (default: a temporary one, removed at the end).")
    parser.add_argument("--db", help="Database URL of the store (default: the settings' store).")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="Timings per model (the best counts).")
    parser.add_argument("--threads", type=int, default=0, help="torch and llama.cpp threads (0: torch's "
                        "default, for both).")
    parser.add_argument("--bandwidth-gib", type=float, default=1.0, help="Buffer size of the bandwidth test.")
    parser.add_argument("--eval", action="store_true", help="Add accuracy per category from stored evaluations.")
    parser.add_argument("--eval-domain", default="bfcl")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--eval-run", type=int, default=0, help="Evaluate N tasks a category where no evaluation "
                        "with as many is stored.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return {}
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from supertiny.models.versions import get_model_version

    scratch, temporary = args.scratch, None
    if scratch is None and (args.tiny or args.make):
        temporary = tempfile.TemporaryDirectory(prefix="supertiny-bench-compress-")  # removed when main returns
        scratch = Path(temporary.name)
    rows_store, names = choose_models(args, scratch)
    if not names:
        parser.error("no model to measure: give --models, --tiny or --make")
    bandwidth = memory_bandwidth(args.bandwidth_gib, threads=args.threads)
    print(f"memory read bandwidth: {bandwidth:.1f} GB/s", flush=True)
    models = []
    for name in names:
        row = get_model_version(rows_store, name)
        entry: dict[str, Any] = {"name": row.name, "stage": row.stage, "format": row.format, "params": row.param_count,
                                 "size_bytes": row.size_bytes}
        entry.update(measure(row, args))
        if "error" not in entry:
            entry["bound_tok_s"] = bandwidth * 1e9 / entry["bytes_per_token"]
            entry["fraction_of_bound"] = entry["decode_tok_s"] / entry["bound_tok_s"]
        if args.eval:
            entry.update(accuracy(rows_store, name, args))
        models.append(entry)
        print(f"{name}: {summary_line(entry)}", flush=True)

    result = {"created": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
              "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average "
                         f"{', '.join(f'{value:.1f}' for value in os.getloadavg())}",
              "bandwidth_gb_s": round(bandwidth, 2), "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads,
              "eval": f"{args.eval_domain} {args.eval_split}" if args.eval else None, "models": models,
              "paired": paired_tests(models) if args.eval else []}
    for row in models:
        row.pop("evaluation", None)
    write_result_files(args.out, "compress", result, markdown(result), lambda path: plot(result, path))
    return result


if __name__ == "__main__":
    main()
