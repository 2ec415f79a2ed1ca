"""The harvest runner: every (task, sample index) of a run is run once, verified and written as it
finishes. A run is identified by the fingerprint of its parameters, so re-running the same command
after a crash or ``kill -9`` picks up exactly the samples that are missing.

A task's missing samples are asked for in one request (``n`` samples of one prompt: an engine computes the
prompt once), and many tasks are in flight at once, as many as the teacher batches. A teacher that stops
answering (its engine or endpoint went away) ends the run as ``failed`` with nothing written for the
samples in flight; running the same command again resumes it."""

import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from supertiny.domain import Domain, Verdict
from supertiny.errors import EngineUnavailableError, InvalidInputError
from supertiny.harvest.agreement import LOGS_PREFIX, judge_by_agreement, traffic_domain
from supertiny.harvest.tasks import domain_task, sync_tasks
from supertiny.models.backend import ChatModel, require_guided
from supertiny.models.guided_calls import GUIDED_INSTRUCTION, GUIDED_SCHEMA_VERSION
from supertiny.processes import this_host
from supertiny.prototype.agent import run_agent_samples
from supertiny.prototype.examples import Example, examples_digest, examples_for, verified_examples
from supertiny.store import HarvestRun, Sample, Store, Task
from supertiny.workers import run_abandoning_on_interrupt


@dataclasses.dataclass(frozen=True)
class HarvestConfig:
    domain: str
    teacher: str
    split: str = "train"
    samples_per_task: int = 1
    temperature: float = 0.0
    limit: int | None = None
    max_new_tokens: int = 512
    # steer the teacher with the domain's system prompt and few-shot examples
    use_prompt: bool = True
    # tasks in flight at once; None: as many as keep the teacher's batch full (its max_concurrency / samples)
    concurrency: int | None = None
    # seconds a task waits for its answers: the tasks in flight share the teacher, so on a slow CPU each waits for
    # the prefill of the others (a batch job's queue, not a stalled teacher: its answer would be lost to the run)
    timeout_s: float = 3600.0
    # digest of the domain's system prompt and few-shot turns: new steering means a new run
    prompt_digest: str = ""
    # how --limit picks tasks; part of the fingerprint so a run never mixes two selections
    task_order: str = "round-robin-categories"
    # few-shot examples from the passing samples of this earlier run, instead of the domain's own
    examples_from: int | None = None
    examples: int = 3
    # where the verifier has no verdict: an answer given by at least this share of a task's samples passes
    agreement: float | None = None
    # decode every answer under the task's tools' JSON Schemas (the teacher must be on an engine)
    guided: bool = False

    def validate(self) -> None:
        if self.samples_per_task < 1:
            raise InvalidInputError("--samples-per-task must be at least 1")
        if self.samples_per_task > 1 and self.temperature <= 0:
            raise InvalidInputError("several samples per task need --temperature above 0 (greedy repeats itself)")
        if self.limit is not None and self.limit < 1:
            raise InvalidInputError("--limit must be at least 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise InvalidInputError("--concurrency must be at least 1")
        if self.timeout_s <= 0:
            raise InvalidInputError("--timeout-s must be above 0")
        if self.examples_from is not None and not self.use_prompt:
            raise InvalidInputError("--examples-from replaces the prompt's examples: it cannot go with --no-prompt")
        if self.examples < 1:
            raise InvalidInputError("--examples must be at least 1")
        if self.agreement is not None:
            if not 0 < self.agreement <= 1:
                raise InvalidInputError("--agreement is a share of the samples: above 0, at most 1")
            if self.samples_per_task < 2:
                raise InvalidInputError("--agreement needs --samples-per-task of at least 2")

    def fingerprint(self) -> str:
        """Identity of the run: every parameter that changes which samples it holds (not concurrency or the
        timeout)."""
        fields = dataclasses.asdict(self)
        fields.pop("concurrency")
        fields.pop("timeout_s")
        if self.guided:  # the instruction that asks for the guided shape steers the teacher too
            steering = f"{GUIDED_SCHEMA_VERSION}:{GUIDED_INSTRUCTION}"
            fields["guided"] = hashlib.sha256(steering.encode()).hexdigest()[:16]
        else:  # runs from before the option keep their identity
            fields.pop("guided")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class HarvestResult:
    run_id: int
    planned: int
    done: int
    passed: int
    newly_done: int
    elapsed_s: float


ProgressCallback = Callable[[int, int, int], None]  # (done, passed, planned)


def _prompt_digest(domain: Domain) -> str:
    payload = json.dumps([domain.system_prompt, list(domain.few_shot)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sample_seed(task_id: int, sample_index: int) -> int:
    return int(hashlib.sha256(f"{task_id}:{sample_index}".encode()).hexdigest()[:8], 16)


def _get_or_create_run(store: Store, config: HarvestConfig, planned: int) -> HarvestRun:
    fingerprint = config.fingerprint()
    params = dataclasses.asdict(config)
    try:
        with store.session() as session:
            run = HarvestRun(fingerprint=fingerprint, domain=config.domain, teacher=config.teacher,
                             params=params, status="running", n_planned=planned, started_at=dt.datetime.now(dt.UTC),
                             host=this_host(), pid=os.getpid())
            session.add(run)
        return run
    except IntegrityError:
        with store.session() as session:
            run = session.scalars(sa.select(HarvestRun).where(HarvestRun.fingerprint == fingerprint)).one()
            run.status, run.n_planned, run.error = "running", planned, None
            run.host, run.pid = this_host(), os.getpid()
        return run


def _done_pairs(store: Store, run_id: int) -> tuple[set[tuple[int, int]], int]:
    with store.session() as session:
        rows = session.execute(sa.select(Sample.task_id, Sample.sample_index, Sample.verdict)
                               .where(Sample.run_id == run_id)).all()
    return {(task_id, index) for task_id, index, _ in rows}, sum(verdict == "pass" for *_, verdict in rows)


def _write_sample(store: Store, sample: Sample) -> bool:
    """Insert one sample; False if another process already wrote the same (run, task, index)."""
    try:
        with store.session() as session:
            session.add(sample)
        return True
    except IntegrityError:
        return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the teacher is unreachable (not that it answered badly): such a failure must not
    be recorded as the teacher's answer."""
    if isinstance(exc, EngineUnavailableError):
        return True
    try:
        import openai
    except ImportError:
        return False
    return isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)


def harvest_task(chat_model: Any, domain: Domain, task_row: Task, run_id: int, sample_indices: list[int],
                 config: HarvestConfig, examples: list[Example] | None = None) -> list[Sample]:
    """Run the agent for the missing samples of one task (their first answers in one request) and verify
    each; a failure of the teacher becomes failed samples with its reason, except an outage, which raises.
    ``examples`` (verified answers to other tasks) replace the domain's few-shot turns."""
    task = domain_task(task_row)
    generation = {"temperature": config.temperature, "max_tokens": config.max_new_tokens,
                  "seed": _sample_seed(task_row.id, sample_indices[0])}
    if _supertiny_model(chat_model) is not None:  # another LangChain model takes no such argument
        generation["timeout_s"] = config.timeout_s
    few_shot = examples_for(examples, task_row.id, config.examples) if examples is not None else None
    started = time.perf_counter()
    try:
        runs = run_agent_samples(chat_model, domain, task, len(sample_indices), use_prompt=config.use_prompt,
                                 few_shot=few_shot, guided=config.guided, **generation)
    except Exception as exc:
        if is_outage(exc):
            raise
        return [Sample(run_id=run_id, task_id=task_row.id, sample_index=index, model=config.teacher,
                       trajectory=list(task.messages), tool_calls=[], verdict="fail",
                       verdict_detail=f"teacher failed: {type(exc).__name__}: {exc}"[:2000],
                       latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}"[:2000])
                for index in sample_indices]
    samples = [_verified(domain, task, task_row, run_id, index, run, config)
               for index, run in zip(sample_indices, runs, strict=True)]
    if config.agreement is not None:
        judge_by_agreement(samples, config.agreement)
    return samples


def _verified(domain: Domain, task: Any, task_row: Task, run_id: int, sample_index: int, run: Any,
              config: HarvestConfig) -> Sample:
    if not run.finished:
        verdict = Verdict.failed(f"still calling tools after {run.steps} steps")
    else:
        try:
            verdict = domain.verify(task, run.calls, run.trajectory, run.environment)
        except Exception as exc:
            verdict = Verdict("unknown", f"verifier error: {type(exc).__name__}: {exc}")
    return Sample(run_id=run_id, task_id=task_row.id, sample_index=sample_index, model=config.teacher,
                  trajectory=run.trajectory, tool_calls=[call.model_dump() for call in run.calls],
                  verdict=verdict.verdict, verdict_detail=verdict.reason[:2000],
                  prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                  latency_s=run.latency_s)


def tasks_in_flight(chat_model: Any, config: HarvestConfig) -> int:
    """``config.concurrency``, or enough tasks to keep the teacher's batch full."""
    if config.concurrency is not None:
        return config.concurrency
    inner = _supertiny_model(chat_model)
    capacity = inner.capabilities.max_concurrency if inner is not None else 4
    return max(1, capacity // config.samples_per_task)


def decodes_guided(chat_model: Any) -> bool:
    """Whether ``chat_model`` (a LangChain chat model) is a supertiny model that decodes under JSON Schemas."""
    inner = _supertiny_model(chat_model)
    return inner is not None and inner.capabilities.guided


def _supertiny_model(chat_model: Any) -> ChatModel | None:
    """The supertiny model behind the LangChain adapter, or None for any other LangChain chat model."""
    inner = getattr(chat_model, "model", None)
    return inner if isinstance(inner, ChatModel) else None


_COUNTS_EVERY_S = 5.0


def _record_counts(store: Store, run_id: int, counts: dict[str, Any], lock: threading.Lock) -> None:
    """Keep the run's n_done / n_passed current while it runs (at most every few seconds)."""
    now = time.monotonic()
    with lock:
        if now - counts.get("recorded_at", 0.0) < _COUNTS_EVERY_S:
            return
        counts["recorded_at"] = now
        done, passed = counts["done"], counts["passed"]
    with store.session() as session:
        row = session.get(HarvestRun, run_id)
        row.n_done, row.n_passed = max(row.n_done, done), max(row.n_passed, passed)


def run_harvest(store: Store, config: HarvestConfig, open_teacher: Callable[[], Any],
                progress: ProgressCallback | None = None) -> HarvestResult:
    """Harvest ``config`` into ``store``; ``open_teacher()`` returns the LangChain chat model."""
    config.validate()
    domain = _harvest_domain(store, config)
    examples = verified_examples(store, config.examples_from, config.examples) if config.examples_from else None
    if config.use_prompt and not config.prompt_digest:
        digest = _prompt_digest(domain) + (examples_digest(examples) if examples else "")
        config = dataclasses.replace(config, prompt_digest=digest)
    task_ids = sync_tasks(store, domain, config.split, config.limit)
    planned = len(task_ids) * config.samples_per_task
    opened: list[Any] = []
    if config.guided:  # a teacher that cannot decode guided is refused before the run is recorded
        opened.append(open_teacher())
        require_guided(getattr(opened[0], "model", opened[0]), config.teacher, "a teacher")
    run = _get_or_create_run(store, config, planned)
    done, passed = _done_pairs(store, run.id)
    todo = _missing_samples(task_ids, done, config.samples_per_task)
    started = time.perf_counter()
    tally = _Tally({"done": len(done), "passed": passed, "new": 0}, planned, progress)
    tally.report()
    status, error = "completed", None
    try:
        if todo:
            _harvest_missing(store, config, domain, examples, run.id, todo, opened[0] if opened else open_teacher(),
                             tally)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        tally.close()
        elapsed = time.perf_counter() - started
        done_now, passed_now = _close_run(store, run.id, status, error, elapsed)
    return HarvestResult(run_id=run.id, planned=planned, done=done_now, passed=passed_now,
                         newly_done=tally.counts["new"], elapsed_s=elapsed)


def _harvest_domain(store: Store, config: HarvestConfig) -> Domain:
    """The registered domain ``config.domain`` names, or one over logged traffic (``logs:`` prefix)."""
    from supertiny.registry import lookup

    if config.domain.startswith(LOGS_PREFIX):
        return traffic_domain(store, config.domain.removeprefix(LOGS_PREFIX))
    return lookup("domain", config.domain)


def _missing_samples(task_ids: list[int], done: set[tuple[int, int]],
                     samples_per_task: int) -> list[tuple[int, list[int]]]:
    """(task id, sample indices not written yet) for each task that misses any, in task order."""
    return [(task_id, missing) for task_id in task_ids
            if (missing := [index for index in range(samples_per_task) if (task_id, index) not in done])]


@dataclasses.dataclass
class _Tally:
    """The run's done / passed / newly written counts, shared by the worker threads, and its progress."""

    counts: dict[str, Any]
    planned: int
    progress: ProgressCallback | None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # set once the run ends: a worker an interrupt abandoned must not write after the run's counts are final
    closed: bool = False

    def report(self) -> None:
        if self.progress:
            self.progress(self.counts["done"], self.counts["passed"], self.planned)

    def write(self, store: Store, sample: Sample) -> None:
        """Write ``sample`` and count it, unless the run has ended."""
        with self.lock:
            if self.closed:
                return
            if _write_sample(store, sample):
                self.counts["done"] += 1
                self.counts["new"] += 1
                self.counts["passed"] += sample.verdict == "pass"
            self.report()

    def close(self) -> None:
        with self.lock:
            self.closed = True


def _harvest_missing(store: Store, config: HarvestConfig, domain: Domain, examples: list[Example] | None,
                     run_id: int, todo: list[tuple[int, list[int]]], chat_model: Any, tally: _Tally) -> None:
    """Harvest and write the missing samples of ``todo``, many tasks in flight at once; the first failure
    cancels the tasks not started and is raised."""
    with store.session() as session:
        task_ids = [task_id for task_id, _ in todo]
        rows = {row.id: row for row in session.scalars(sa.select(Task).where(Task.id.in_(task_ids)))}

    def work(unit: tuple[int, list[int]]) -> None:
        task_id, indices = unit
        for sample in harvest_task(chat_model, domain, rows[task_id], run_id, indices, config, examples):
            tally.write(store, sample)
        _record_counts(store, run_id, tally.counts, tally.lock)

    run_abandoning_on_interrupt(work, todo, min(len(todo), tasks_in_flight(chat_model, config)))


def _close_run(store: Store, run_id: int, status: str, error: str | None, elapsed: float) -> tuple[int, int]:
    """Record how the run ended and its counts; returns (samples done, samples passed)."""
    done, passed = _done_pairs(store, run_id)
    with store.session() as session:
        row = session.get(HarvestRun, run_id)
        row.status, row.error = status, error
        row.n_done, row.n_passed = len(done), passed
        row.elapsed_s = (row.elapsed_s or 0.0) + elapsed
        if status == "completed":
            row.finished_at = dt.datetime.now(dt.UTC)
    return len(done), passed
