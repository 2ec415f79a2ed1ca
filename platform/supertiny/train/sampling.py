"""Fresh samples for rft and dpo: the harvest runner with a model under training as the sampler, the
domain's verifier judging each answer, the result kept as a snapshot.

The harvest run is identified by its parameters (the sampler's label included), so an interrupted
sampling resumes exactly; the snapshot made from it is remembered in the run directory, so a resumed
training run reuses it instead of making another version.
"""

import contextlib
import dataclasses
import gc
import hashlib
import json
from typing import Any

from supertiny.artifacts.hf import save_json
from supertiny.errors import InvalidInputError
from supertiny.store import Dataset
from supertiny.train.base import TrainContext


@dataclasses.dataclass
class SamplingResult:
    snapshot: Dataset | None  # None when no sample matched the verdict filter
    run_id: int
    samples: int
    passed: int

    def summary(self) -> dict[str, Any]:
        ref = f"{self.snapshot.name}@{self.snapshot.version}" if self.snapshot else None
        return {"harvest_run": self.run_id, "samples": self.samples, "passed": self.passed, "snapshot": ref}


def sampler_label(context: TrainContext, tag: str) -> str:
    """A harvest-run label unique to this run's identity: a model name alone could be reused by a
    different model after a run directory is deleted."""
    digest = hashlib.sha256(json.dumps([context.name, context.config.as_dict()], sort_keys=True,
                                       default=str).encode()).hexdigest()[:8]
    return f"{context.name[:150]}/{tag}#{digest}"


def sample_and_snapshot(context: TrainContext, *, tag: str, sampler: str, label: str, samples_per_task: int,
                        temperature: float, max_new_tokens: int, limit: int | None, use_prompt: bool,
                        verdict: str | None, description: str, engine: bool = False) -> SamplingResult:
    """Sample ``samples_per_task`` answers per task of the context's domain from ``sampler`` (a registered
    model name or an HF directory), verify them, and snapshot those with ``verdict`` (None: all). With
    ``engine``, the sampler answers through a vLLM engine: its running one, else one started for the sampling
    and stopped after."""
    from supertiny.data.snapshot import SnapshotSource, create_snapshot, get_snapshot
    from supertiny.harvest.runner import HarvestConfig, run_harvest

    state_file = context.run_dir / f"sampling-{tag}.json"
    state = _read(state_file)
    if state.get("done"):
        snapshot = get_snapshot(context.store, state["snapshot"]) if state.get("snapshot") else None
        return SamplingResult(snapshot, state["run_id"], state["samples"], state["passed"])
    if not context.domain:
        raise InvalidInputError("sampling needs the snapshot's domain")
    config = HarvestConfig(domain=context.domain, teacher=label, split=context.config.split,
                           samples_per_task=samples_per_task, temperature=temperature, limit=limit,
                           max_new_tokens=max_new_tokens, use_prompt=use_prompt)
    opened: list[Any] = []
    shown = {"phase": False}
    engines = contextlib.ExitStack()

    def open_sampler() -> Any:
        context.progress.phase(f"{'starting an engine for' if engine else 'loading'} {sampler}")
        shown["phase"] = False
        chat_model = _on_engine(context, sampler, engines) if engine else context.chat_model(sampler)
        opened.append(chat_model)
        return chat_model

    def progress(done: int, passed: int, planned: int) -> None:
        if not shown["phase"]:
            context.progress.phase(description, planned)
            shown["phase"] = True
        context.progress.update(done, pass_rate=f"{passed / done:.0%}" if done else "-")

    try:
        result = run_harvest(context.store, config, open_sampler, progress)
    finally:
        for chat_model in opened:
            _close(chat_model)
        opened.clear()
        engines.close()
        gc.collect()
    matching = result.passed if verdict == "pass" else result.done if verdict is None else None
    snapshot = None
    if matching != 0:  # an empty snapshot cannot exist: the caller decides what no sample means
        snapshot = create_snapshot(context.store, f"{context.name[:150]}-{tag}",
                                   SnapshotSource(runs=(result.run_id,), verdict=verdict),
                                   note=f"sampled from {sampler} for training {context.name}")
    save_json(state_file, {"done": True, "run_id": result.run_id, "samples": result.done, "passed": result.passed,
                           "snapshot": f"{snapshot.name}@{snapshot.version}" if snapshot else None})
    return SamplingResult(snapshot, result.run_id, result.done, result.passed)


def _on_engine(context: TrainContext, sampler: str, engines: contextlib.ExitStack) -> Any:
    """A LangChain chat model over ``sampler`` on a vLLM engine: the registered model's running engine, else a
    transient engine for its directory, entered into ``engines`` (closing it stops the engine)."""
    from supertiny.engine.launch import EngineOptions
    from supertiny.engine.manager import engine_location, engines_enabled, servable_reason, transient_engine
    from supertiny.models.langchain_adapter import SupertinyChatModel
    from supertiny.models.versions import find_model_version
    from supertiny.registry import lookup

    if not engines_enabled():
        raise InvalidInputError("sampling through an engine was asked for, but engines are off (SUPERTINY_ENGINE)")
    row = find_model_version(context.store, sampler)
    if row is not None:
        reason = servable_reason(row)
        if reason:
            raise InvalidInputError(f"no engine can sample {reason}")
        if engine_location(context.store, row) is not None:
            return context.chat_model(sampler)
    directory = row.path if row is not None else sampler
    served = f"{context.name[:80]}-sampler"
    url, config = engines.enter_context(transient_engine(context.settings, directory, served,
                                                         EngineOptions(eager=True)))
    return SupertinyChatModel(model=lookup("backend", "vllm").open(url, config))


def _close(chat_model: Any) -> None:
    """Release a LangChain wrapper's underlying supertiny model, when it has one."""
    inner = getattr(chat_model, "model", None)
    close = getattr(inner, "close", None)
    if callable(close):
        close()


def _read(path: Any) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
