"""Run a registered algorithm (a trainer or a compressor) end to end into a new model version.

prepare -> run -> register. Every check that can fail on bad input runs before any weight loads: the
input model (registered, local weights), the snapshot (known, not empty, of the asked domain) when the
algorithm takes one, the teacher, the new name (free), the run's identity (re-running resumes only the
same command), the algorithm's own checks and its memory estimate. The new model lives under
``settings.models_dir/<name>`` and is registered with parent = the input model, dataset = the snapshot,
stage = the algorithm's, the options under the row config's ``source`` key (provenance, never passed to
the backend) and the run's metrics. Intermediate files live under ``settings.artifacts_dir/runs/<name>/``.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.progress import NullProgress, Progress
from supertiny.runs.algorithm import Algorithm, Produced, RunContext, Use
from supertiny.store import Dataset, ModelVersion, Store
from supertiny.store.tables import MODEL_STAGES

MAX_NAME = 200


@dataclasses.dataclass
class NewModel:
    """The registered result of one run."""

    name: str
    model_version_id: int
    path: str
    algorithm: str
    stage: str
    parent: str
    dataset: str | None
    param_count: int | None
    size_bytes: int | None
    format: str
    backend: str
    metrics: dict[str, Any]


@dataclasses.dataclass
class PreparedRun:
    """A checked run, ready to start."""

    algorithm: Algorithm
    context: RunContext
    identity: dict[str, Any]  # what makes re-running the same command resume this run


def run_dir(settings: Settings, name: str) -> Path:
    return settings.artifacts_dir / "runs" / name


def train_model(store: Store, settings: Settings, algorithm: str, *, student: str, **options: Any) -> NewModel:
    """Train ``student`` with the trainer called ``algorithm``; options as :func:`prepare_run`."""
    return run_algorithm(store, settings, "trainer", algorithm, model=student, **options)


def compress_model(store: Store, settings: Settings, algorithm: str, *, model: str, **options: Any) -> NewModel:
    """Compress ``model`` with the compressor called ``algorithm``; options as :func:`prepare_run`."""
    return run_algorithm(store, settings, "compressor", algorithm, model=model, **options)


def run_algorithm(store: Store, settings: Settings, kind: str, algorithm: str, *, model: str,
                  keep_checkpoints: bool = False, **options: Any) -> NewModel:
    """Prepare, run and register one run of the ``kind`` plugin called ``algorithm``."""
    prepared = prepare_run(store, settings, kind, algorithm, model=model, **options)
    return execute_run(prepared, keep_checkpoints=keep_checkpoints)


def prepare_run(
    store: Store,
    settings: Settings,
    kind: str,
    algorithm: str,
    *,
    model: str,
    data: str | None = None,
    config: Any = None,
    teacher: str | None = None,
    name: str | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
    check_memory: bool = True,
    open_chat_model: Callable[[str], Any] | None = None,
) -> PreparedRun:
    """Resolve and check everything a run needs; nothing is loaded or run yet."""
    from supertiny.artifacts.facts import model_ref
    from supertiny.models.versions import find_model_version, get_model_version, require_hf_weights
    from supertiny.registry import lookup

    plugin: Algorithm = lookup(kind, algorithm)
    config = _checked_config(plugin, config)
    stage = _checked_stage(plugin)
    source = get_model_version(store, model)
    plugin.check_model(source)
    require_hf_weights(source, plugin.purpose)
    dataset = _resolve_dataset(store, plugin, data, domain)
    domain = domain or (dataset.domain if dataset else None)
    if plugin.needs_domain:
        if not domain:
            raise InvalidInputError(f"{algorithm} samples a domain's tasks, but snapshot {_ref(dataset)} has no "
                                    "domain", hint="use a snapshot made from harvest runs")
        lookup("domain", domain)
    teacher_row = _resolve_teacher(store, plugin, source, teacher)
    name = name or plugin.default_name(source, dataset, config)[:MAX_NAME]
    if find_model_version(store, name) is not None:
        raise InvalidInputError(f"a model named {name!r} is already registered",
                                hint="choose another --name (or `supertiny models show` it)")
    context = plugin.context_class(
        store=store, settings=settings, config=config, model=source, model_ref=model_ref(source), name=name,
        run_dir=run_dir(settings, name), output_dir=settings.models_dir / name, dataset=dataset,
        teacher=teacher_row, domain=domain, progress=progress or NullProgress(), open_chat_model=open_chat_model)
    plugin.check_inputs(context)
    identity = {"algorithm": algorithm, "stage": stage, "model": source.name,
                "teacher": teacher_row.name if teacher_row else None, "data": _ref(dataset), "domain": domain,
                "config": _config_identity(config)}
    _check_identity(context.run_dir, identity)
    plugin.check(context)
    if check_memory:
        plugin.check_resources(context)
    return PreparedRun(algorithm=plugin, context=context, identity=identity)


def execute_run(prepared: PreparedRun, keep_checkpoints: bool = False) -> NewModel:
    """Run (resuming where the algorithm can), then register what it wrote."""
    from supertiny.artifacts.hf import save_json

    plugin, context = prepared.algorithm, prepared.context
    state_file = context.run_dir / "run.json"
    state = _read_json(state_file) or {"identity": prepared.identity, "status": "running", "elapsed_s": 0.0}
    save_json(state_file, state)
    started = time.perf_counter()
    try:
        produced = plugin.run(context)
    finally:
        state["elapsed_s"] = round(state.get("elapsed_s", 0.0) + time.perf_counter() - started, 2)
        save_json(state_file, state)
    result = _register(plugin, context, produced, {**produced.metrics, "wall_time_s": state["elapsed_s"]})
    state["status"] = "completed"
    save_json(state_file, state)
    if not keep_checkpoints:
        plugin.clean_up(context)
    return result


def _register(plugin: Algorithm, context: RunContext, produced: Produced, metrics: dict[str, Any]) -> NewModel:
    from supertiny.artifacts import weights
    from supertiny.models.versions import PROVENANCE_KEY, register_model_version

    dataset = _ref(context.dataset)
    provenance = {"algorithm": plugin.name, "parent": context.model.name, "data": dataset,
                  "teacher": context.teacher.name if context.teacher else None, "domain": context.domain,
                  "options": context.config.as_dict()}
    location = produced.location or context.output_dir
    size_bytes = location.stat().st_size if location.is_file() else weights.weights_size(context.output_dir)
    row = register_model_version(
        context.store, name=context.name, stage=plugin.registry_stage(), format=produced.format,
        backend=produced.backend, path=str(location), parent=context.model.name,
        dataset_id=context.dataset.id if context.dataset else None, algorithm=plugin.name,
        config={**produced.backend_config, PROVENANCE_KEY: provenance}, metrics=metrics,
        param_count=produced.param_count, size_bytes=size_bytes)
    return NewModel(name=row.name, model_version_id=row.id, path=str(location), algorithm=plugin.name,
                    stage=row.stage, parent=context.model.name, dataset=dataset, param_count=produced.param_count,
                    size_bytes=size_bytes, format=produced.format, backend=produced.backend, metrics=metrics)


def _checked_config(plugin: Algorithm, config: Any) -> Any:
    config = config if config is not None else plugin.config_class()
    if not isinstance(config, plugin.config_class):
        raise InvalidInputError(f"{plugin.name} takes a {plugin.config_class.__name__}, "
                                f"not a {type(config).__name__}")
    config.validate()
    return config


def _checked_stage(plugin: Algorithm) -> str:
    stage = plugin.registry_stage()
    if stage not in MODEL_STAGES:
        raise InvalidInputError(f"{plugin.kind} {plugin.name!r} makes models of stage {stage!r}, which the "
                                f"registry does not know", hint=f"one of {', '.join(MODEL_STAGES)}")
    return stage


def _resolve_dataset(store: Store, plugin: Algorithm, data: str | None, domain: str | None) -> Dataset | None:
    from supertiny.data.snapshot import get_snapshot

    if not data:
        if plugin.data == "required":
            raise InvalidInputError(f"{plugin.name} needs --data SNAPSHOT")
        return None
    if plugin.data == "none":
        raise InvalidInputError(f"{plugin.name} takes no --data")
    dataset = get_snapshot(store, data)
    if dataset.n_items == 0:
        raise InvalidInputError(f"snapshot {_ref(dataset)} is empty")
    if domain and dataset.domain != domain:
        raise InvalidInputError(f"snapshot {_ref(dataset)} holds {dataset.domain or 'request-log'} records, "
                                f"not domain {domain!r}")
    return dataset


def _resolve_teacher(store: Store, plugin: Algorithm, model: ModelVersion, teacher: str | None) -> ModelVersion | None:
    from supertiny.models.versions import get_model_version

    use: Use = plugin.teacher
    if use == "none":
        if teacher:
            raise InvalidInputError(f"{plugin.name} takes no --teacher")
        return None
    teacher = teacher or plugin.default_teacher(store, model)
    if use == "required" and not teacher:
        raise InvalidInputError(f"{plugin.name} needs a --teacher")
    return get_model_version(store, teacher) if teacher else None


def _ref(dataset: Dataset | None) -> str | None:
    return f"{dataset.name}@{dataset.version}" if dataset is not None else None


def _config_identity(config: Any) -> dict[str, Any]:
    identity = getattr(config, "identity", None)
    return identity() if callable(identity) else config.as_dict()


def _check_identity(directory: Path, identity: dict[str, Any]) -> None:
    """A run directory belongs to one command: the same command resumes it, another is refused."""
    existing = _read_json(directory / "run.json").get("identity")
    if existing is not None and existing != identity:
        old = {**existing.pop("config", {}), **existing}
        new = {**identity.get("config", {}), **{k: v for k, v in identity.items() if k != "config"}}
        changed = sorted(key for key in set(old) | set(new) if json.dumps(old.get(key)) != json.dumps(new.get(key)))
        raise InvalidInputError(f"run {directory.name!r} was started with other settings (differs in: "
                                f"{', '.join(changed)})",
                                hint=f"re-run it with the same options, choose another --name, or delete {directory}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
