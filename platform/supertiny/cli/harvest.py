"""``supertiny harvest``: stage 1, the teacher's trajectories into the store."""

import click

from supertiny.cli.app import json_option, pass_settings, print_json, print_table, serving_line
from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.harvest import queries
from supertiny.harvest.agreement import LOGS_PREFIX
from supertiny.harvest.runner import HarvestConfig, run_harvest
from supertiny.store.session import open_store


@click.group()
def harvest() -> None:
    """Stage 1: run the teacher on a domain's tasks, verify each trajectory, store it."""


@harvest.command("run")
@click.option("--domain", help="Domain name (see `supertiny domains list`).")
@click.option("--logs", "logs_route", metavar="ROUTE", help="Harvest the requests ROUTE answered instead of a "
              "domain's tasks (no verifier: judge them with --agreement).")
@click.option("--teacher", required=True, help="Registered model name or HF directory of the teacher.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "dev", "test"]))
@click.option("--samples-per-task", default=1, show_default=True, type=int, help="Samples per task (k).")
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 is greedy.")
@click.option("--limit", type=int, help="Harvest only the first N distinct tasks of the split.")
@click.option("--concurrency", type=int, help="Tasks in flight at once (default: enough to keep the teacher's "
              "batch full: 64 sequences on an engine, the dynamic batch in-process).")
@click.option("--max-new-tokens", default=512, show_default=True, type=int)
@click.option("--timeout-s", default=3600.0, show_default=True, type=float, help="Seconds a task waits for its "
              "answers; the tasks in flight share the teacher, so each takes longer the more there are.")
@click.option("--no-prompt", is_flag=True, help="Do not steer the teacher with the domain's system prompt "
              "and few-shot examples (measure the raw model).")
@click.option("--examples-from", type=int, metavar="RUN", help="Show the teacher verified answers from harvest run "
              "RUN as few-shot examples, instead of the domain's own (never the task's own answer).")
@click.option("--examples", default=3, show_default=True, type=int, help="How many examples with --examples-from "
              "(round-robin over the categories, shortest answers first).")
@click.option("--agreement", type=float, metavar="SHARE", help="Where the verifier has no verdict (logged "
              "traffic), an answer given by at least SHARE of a task's samples passes, the others fail.")
@click.option("--guided", is_flag=True, help="Decode every answer under the task's tools' JSON Schemas (the "
              "engine's guided decoding): the teacher decides whether and which function to call, then fills the "
              "arguments under its schema. Needs the teacher on an engine (`supertiny engine start`).")
@pass_settings
def run_command(settings: Settings, domain: str | None, logs_route: str | None, teacher: str, split: str,
                samples_per_task: int, temperature: float, limit: int | None, concurrency: int | None,
                max_new_tokens: int, timeout_s: float, no_prompt: bool, examples_from: int | None, examples: int,
                agreement: float | None, guided: bool) -> None:
    """Harvest a domain with a teacher. Re-running the same command resumes the same run."""
    from tqdm import tqdm

    from supertiny.prototype.teacher import open_chat_model

    if bool(domain) == bool(logs_route):
        raise InvalidInputError("give either --domain or --logs ROUTE")
    store = open_store(settings)
    config = HarvestConfig(domain=domain or f"{LOGS_PREFIX}{logs_route}", teacher=teacher, split=split,
                           samples_per_task=samples_per_task,
                           temperature=temperature, limit=limit, max_new_tokens=max_new_tokens, timeout_s=timeout_s,
                           use_prompt=not no_prompt, concurrency=concurrency, examples_from=examples_from,
                           examples=examples, agreement=agreement, guided=guided)
    bars: list[tqdm] = []  # created on the first progress report, after the inputs are checked

    def progress(done: int, passed: int, planned: int) -> None:
        if not bars:
            bars.append(tqdm(desc=f"harvest {domain}", unit="sample", total=planned, dynamic_ncols=True))
        bar = bars[0]
        bar.n = done
        bar.set_postfix(pass_rate=f"{passed / done:.0%}" if done else "-", refresh=False)
        bar.refresh()

    def open_teacher():
        if bars:
            bars[0].set_description(f"loading {teacher}")
        model = open_chat_model(store, teacher)
        click.echo(f"teacher {teacher}: {serving_line(model)}", err=True)
        if bars:
            bars[0].set_description(f"harvest {domain}")
        return model

    try:
        result = run_harvest(store, config, open_teacher, progress)
    finally:
        for bar in bars:
            bar.close()
    rate = f"{result.passed / result.done:.1%}" if result.done else "-"
    click.echo(f"run {result.run_id}: {result.done}/{result.planned} samples, {result.passed} passed ({rate}); "
               f"{result.newly_done} new in {result.elapsed_s:.1f}s")


@harvest.command("status")
@click.argument("run_id", type=int)
@json_option
@pass_settings
def status_command(settings: Settings, run_id: int, as_json: bool) -> None:
    """Pass rate, tokens and latency per category of one run."""
    status = queries.run_status(open_store(settings), run_id)
    if as_json:
        print_json(status)
        return
    click.echo(f"run {status['id']}  domain {status['domain']}  teacher {status['teacher']}  "
               f"split {status['split']}  decoding {'guided' if status['params'].get('guided') else 'free'}  "
               f"status {status['status']}  {status['done']}/{status['planned']} samples  {status['elapsed_s']:.0f}s")
    samples_per_task = status["params"].get("samples_per_task", 1)
    total = {"category": "TOTAL", "samples": status["done"], "passed": status["passed"],
             "pass_rate": status["pass_rate"], "mean_latency_s": status["s_per_sample"], "tasks": status["tasks"],
             "pass_at_n": status["pass_at_n"], "pass_at_n_interval": status["pass_at_n_interval"],
             "kept": status["kept"]}
    # one sample a task: pass@1 is the share of tasks with a pass, shown with its interval
    pass_at_1 = _with_interval if samples_per_task == 1 else _percent
    rows = [{**row, "pass@1": pass_at_1(row), f"pass@{samples_per_task}": _with_interval(row)}
            for row in [*status["categories"], total]]
    pass_columns = ["pass@1"] if samples_per_task == 1 else ["pass@1", f"pass@{samples_per_task}"]
    print_table(rows, ["category", "tasks", "samples", *pass_columns, "kept",
                       "mean_latency_s", "mean_completion_tokens"],
                formatters={"mean_latency_s": lambda v: "-" if v is None else f"{v:.2f}",
                            "mean_completion_tokens": lambda v: "-" if v is None else f"{v:.0f}"})


def _percent(row: dict) -> str:
    return "-" if row.get("pass_rate") is None else f"{row['pass_rate']:.1%}"


def _with_interval(row: dict) -> str:
    if row.get("pass_at_n") is None:
        return "-"
    low, high = row["pass_at_n_interval"]
    return f"{row['pass_at_n']:.1%} [{low * 100:.1f}, {high * 100:.1f}]"


@harvest.command("list")
@json_option
@pass_settings
def list_command(settings: Settings, as_json: bool) -> None:
    """Every harvest run."""
    runs = queries.list_runs(open_store(settings))
    if as_json:
        print_json(runs)
        return
    print_table(runs, ["id", "domain", "teacher", "split", "status", "done", "planned", "pass_rate", "created_at"],
                formatters={"pass_rate": lambda v: "-" if v is None else f"{v:.1%}"})
