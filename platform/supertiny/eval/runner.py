"""Run a model on a domain split and store the result as an Evaluation row.

Single-shot domains (tools that do not execute) are answered straight through the backend, which also
gives each answer's confidence from its token log-probabilities. Executable domains run the prototype
agent loop, with every call executed against the domain's tools. Either way many tasks are in flight at
once, as many as the model batches (an engine, or an in-process model's dynamic batch).
"""

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from supertiny.domain import Domain, DomainTask, Verdict
from supertiny.errors import ContextLengthError, InvalidInputError
from supertiny.models.backend import ChatModel, Generation, GenerationOptions, require_guided
from supertiny.store import Evaluation, Store
from supertiny.task_selection import select_tasks
from supertiny.workers import run_abandoning_on_interrupt

ProgressCallback = Callable[[int, int], None]  # (done, total)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model: str
    domain: str
    split: str = "test"
    per_category: int | None = None
    limit: int | None = None
    categories: tuple[str, ...] = ()
    max_new_tokens: int = 384
    # tasks in flight at once; None: as many as the model batches (capabilities.max_concurrency)
    concurrency: int | None = None
    # evaluate with the domain's system prompt and few-shot examples (the "prototype" setting)
    use_prompt: bool = False
    # seconds a task waits for its answer: the tasks in flight share the model (an engine decodes them together),
    # so one task's wall time grows with their number; a batch job waits for its own queue
    timeout_s: float = 3600.0
    # decode under the tools' JSON Schemas (models on an engine; see supertiny.models.guided_calls)
    guided: bool = False
    # answers sampled per task besides the greedy one; each record keeps the share that agrees with it (the
    # cascade gate's "agreement" confidence, calibrated from this evaluation)
    agreement_samples: int = 0
    agreement_temperature: float = 0.7


def _record(task: DomainTask, verdict: Verdict, valid: bool, confidence: float | None, latency_s: float,
            completion_tokens: int, answer: Any, token_logprobs: list[float] | None = None) -> dict[str, Any]:
    """One task's outcome; ``token_logprobs`` (single-shot answers) lets a routing gate other than the
    geometric mean be studied on the same answers."""
    record = {"task": task.external_id, "task_hash": task.content_hash(), "category": task.category,
              "correct": verdict.verdict == "pass", "verdict": verdict.verdict, "reason": verdict.reason[:300],
              "valid": valid, "confidence": confidence, "latency_s": latency_s,
              "completion_tokens": completion_tokens, "answer": answer}
    if token_logprobs:
        record["token_logprobs"] = [round(value, 4) if math.isfinite(value) else None for value in token_logprobs]
    return record


def judge(domain: Domain, task: DomainTask, tools: list[dict[str, Any]],
          generation: Generation) -> tuple[Verdict, bool]:
    """(the domain's verdict, whether the calls parse and fit the tools' schemas) of one single-shot answer."""
    from supertiny.models.tool_schemas import validate_calls

    calls = generation.parse.calls
    valid = generation.parse.ok and not validate_calls(calls, tools)
    try:
        verdict = domain.verify(task, calls, [*task.messages, generation.message.openai()])
    except Exception as exc:
        verdict = Verdict("unknown", f"verifier error: {type(exc).__name__}: {exc}")
    return verdict, valid


def _in_flight(tasks: list[DomainTask], answer: Callable[[DomainTask], dict[str, Any]], concurrency: int,
               progress: ProgressCallback | None) -> list[dict[str, Any]]:
    """``answer(task)`` for every task, ``concurrency`` at a time; records in the tasks' order."""
    records: list[dict[str, Any] | None] = [None] * len(tasks)
    done, lock = 0, threading.Lock()

    def work(index: int) -> None:
        nonlocal done
        records[index] = answer(tasks[index])
        with lock:
            done += 1
            if progress:
                progress(done, len(tasks))

    run_abandoning_on_interrupt(work, list(range(len(tasks))), max(1, min(concurrency, len(tasks))))
    return [record for record in records if record is not None]


def _single_shot(model: ChatModel, domain: Domain, tasks: list[DomainTask], config: EvalConfig, concurrency: int,
                 progress: ProgressCallback | None) -> list[dict[str, Any]]:
    from supertiny.models.answer_agreement import sample_agreement
    from supertiny.models.answer_features import answer_features
    from supertiny.models.guided_calls import with_guided_instruction
    from supertiny.prototype.agent import prompt_messages, task_tools

    options = GenerationOptions(max_new_tokens=config.max_new_tokens, temperature=0.0, logprobs=True,
                                timeout_s=config.timeout_s, guided=config.guided)

    def answer(task: DomainTask) -> dict[str, Any]:
        messages = (prompt_messages(domain, task) if config.use_prompt else []) + task.messages
        tools = task_tools(domain, task)
        if config.guided and tools:
            messages = with_guided_instruction(messages)
        try:
            generation = model.generate(messages, tools, options)
        except InvalidInputError as exc:
            if not config.guided or isinstance(exc, ContextLengthError):
                raise
            # the engine could not build a grammar from this task's tools: this task fails, the others go on
            record = _record(task, Verdict.failed(f"no guided answer: {exc.message}"), False, None, 0.0, 0, "")
            return {**record, "agreement": None} if config.agreement_samples else record
        verdict, valid = judge(domain, task, tools, generation)
        record = _record(task, verdict, valid, generation.confidence, generation.latency_s,
                         generation.completion_tokens, generation.text, generation.token_logprobs)
        record["features"] = answer_features(task.messages, tools, generation)
        if config.agreement_samples:
            samples = model.generate_samples(messages, tools, dataclasses.replace(
                options, temperature=config.agreement_temperature, logprobs=False), n=config.agreement_samples)
            record["agreement"] = sample_agreement(generation, samples)
        return record

    return _in_flight(tasks, answer, concurrency, progress)


def _agentic(chat_model: Any, domain: Domain, tasks: list[DomainTask], config: EvalConfig, concurrency: int,
             progress: ProgressCallback | None) -> list[dict[str, Any]]:
    from supertiny.prototype.agent import run_agent

    def answer(task: DomainTask) -> dict[str, Any]:
        run = run_agent(chat_model, domain, task, use_prompt=config.use_prompt, guided=config.guided,
                        temperature=0.0, max_tokens=config.max_new_tokens)
        if run.finished:
            try:
                verdict = domain.verify(task, run.calls, run.trajectory, run.environment)
            except Exception as exc:
                verdict = Verdict("unknown", f"verifier error: {type(exc).__name__}: {exc}")
        else:
            verdict = Verdict.failed(f"still calling tools after {run.steps} steps")
        return _record(task, verdict, True, None, run.latency_s, run.completion_tokens,
                       run.trajectory[len(task.messages):])

    return _in_flight(tasks, answer, concurrency, progress)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, invalid-call rate, latency and tokens, overall and per category."""
    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rows)
        return {"n": n, "accuracy": sum(r["correct"] for r in rows) / n,
                "invalid_rate": sum(not r["valid"] for r in rows) / n,
                "mean_latency_s": sum(r["latency_s"] for r in rows) / n,
                "tokens_per_request": sum(r["completion_tokens"] for r in rows) / n}

    categories = sorted({r["category"] for r in records})
    return {"overall": stats(records),
            "per_category": {c: stats([r for r in records if r["category"] == c]) for c in categories}}


def evaluate(store: Store, config: EvalConfig, progress: ProgressCallback | None = None) -> Evaluation:
    """Evaluate ``config.model`` on ``config.domain`` and store the result; the model is leased from the model
    cache while it answers."""
    from supertiny.models.versions import get_model_version
    from supertiny.registry import lookup
    from supertiny.runtime.loading import lease_model

    domain: Domain = lookup("domain", config.domain)
    version = get_model_version(store, config.model)
    tasks = select_tasks(domain, config.split, config.per_category, config.limit, config.categories)
    if not tasks:
        raise InvalidInputError(f"domain {domain.name!r} has no tasks in split {config.split!r} for these filters")
    if config.agreement_samples and domain.environment(tasks[0]) is not None:
        raise InvalidInputError(f"domain {domain.name!r} runs every task as a multi-step agent, whose answers have "
                                "no single set of calls to agree on", hint="drop --agreement-samples")
    with lease_model(store, config.model) as model:
        if config.guided:
            require_guided(model, config.model)
        if progress:
            progress(0, len(tasks))
        started = time.perf_counter()
        concurrency = config.concurrency or model.capabilities.max_concurrency
        if domain.environment(tasks[0]) is None:
            records = _single_shot(model, domain, tasks, config, concurrency, progress)
        else:
            from supertiny.models.langchain_adapter import SupertinyChatModel

            records = _agentic(SupertinyChatModel(model=model), domain, tasks, config, concurrency, progress)
        wall_s, engine = time.perf_counter() - started, model.capabilities.engine
    summary = summarize(records)
    overall = summary["overall"]
    with store.session() as session:
        evaluation = Evaluation(
            model_version_id=version.id, domain=domain.name, split=config.split, n_tasks=len(records),
            accuracy=overall["accuracy"], per_category=summary["per_category"],
            invalid_rate=overall["invalid_rate"], mean_latency_s=overall["mean_latency_s"],
            tokens_per_request=overall["tokens_per_request"], size_bytes=version.size_bytes,
            details={"config": {**dataclasses.asdict(config), "categories": list(config.categories)},
                     "wall_s": wall_s, "engine": engine, "concurrency": concurrency, "records": records})
        session.add(evaluation)
    return evaluation
