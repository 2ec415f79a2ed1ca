"""Run a registered trainer end to end and write its result as a new model version.

Every check that can fail on bad input runs before any weight loads: the snapshot (known, not empty,
of the asked domain), the student and teacher (registered, local weights), the new name (free), the
run's identity (re-running resumes only the same command), and memory. The trained model is saved as
an HF directory under ``settings.models_dir/<name>`` and registered with parent = the student,
dataset = the snapshot, stage = algorithm, the config and the training metrics. Checkpoints live under
``settings.artifacts_dir/runs/<name>/``; re-running the same command resumes from the last one.
"""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supertiny.config import Settings
from supertiny.errors import InvalidInputError
from supertiny.progress import NullProgress, Progress
from supertiny.store import Dataset, ModelVersion, Store
from supertiny.store.tables import MODEL_STAGES
from supertiny.train.base import TrainContext, Trainer
from supertiny.train.train_config import TrainConfig

MAX_NAME = 200


@dataclasses.dataclass
class TrainedModel:
    """The registered result of one training run."""

    name: str
    model_version_id: int
    path: str
    algorithm: str
    parent: str
    dataset: str
    param_count: int | None
    size_bytes: int | None
    metrics: dict[str, Any]


@dataclasses.dataclass
class PreparedRun:
    """A checked run, ready to train."""

    trainer: Trainer
    context: TrainContext
    identity: dict[str, Any]  # what makes re-running the same command resume this run


def default_name(student: str, algorithm: str, dataset: Dataset) -> str:
    return f"{student}-{algorithm}-{dataset.name}-v{dataset.version}"[:MAX_NAME]


def run_dir(settings: Settings, name: str) -> Path:
    return settings.artifacts_dir / "runs" / name


def train_model(
    store: Store,
    settings: Settings,
    algorithm: str,
    *,
    student: str,
    data: str,
    config: TrainConfig | None = None,
    teacher: str | None = None,
    name: str | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
    check_memory: bool = True,
    keep_checkpoints: bool = False,
    open_chat_model: Callable[[str], Any] | None = None,
) -> TrainedModel:
    """Train ``student`` on snapshot ``data`` with the trainer called ``algorithm``; register the result."""
    run = prepare_run(store, settings, algorithm, student=student, data=data, config=config, teacher=teacher,
                      name=name, domain=domain, progress=progress, check_memory=check_memory,
                      open_chat_model=open_chat_model)
    return execute_run(run, keep_checkpoints=keep_checkpoints)


def prepare_run(
    store: Store,
    settings: Settings,
    algorithm: str,
    *,
    student: str,
    data: str,
    config: TrainConfig | None = None,
    teacher: str | None = None,
    name: str | None = None,
    domain: str | None = None,
    progress: Progress | None = None,
    check_memory: bool = True,
    open_chat_model: Callable[[str], Any] | None = None,
) -> PreparedRun:
    """Resolve and check everything a run needs; nothing is loaded or trained yet."""
    from supertiny.artifacts.facts import model_facts, model_ref
    from supertiny.data.snapshot import get_snapshot
    from supertiny.models.versions import find_model_version, get_model_version, require_hf_weights
    from supertiny.registry import lookup
    from supertiny.train import resources

    trainer: Trainer = lookup("trainer", algorithm)
    config = config if config is not None else trainer.config_class()
    if not isinstance(config, trainer.config_class):
        raise InvalidInputError(f"{algorithm} takes a {trainer.config_class.__name__}, "
                                f"not a {type(config).__name__}")
    config.validate()
    stage = stage_of(trainer)

    dataset = get_snapshot(store, data)
    ref = f"{dataset.name}@{dataset.version}"
    if dataset.n_items == 0:
        raise InvalidInputError(f"snapshot {ref} is empty")
    if domain and dataset.domain != domain:
        raise InvalidInputError(f"snapshot {ref} holds {dataset.domain or 'request-log'} records, "
                                f"not domain {domain!r}")
    domain = domain or dataset.domain
    if trainer.needs_domain:
        if not domain:
            raise InvalidInputError(f"{algorithm} samples a domain's tasks, but snapshot {ref} has no domain",
                                    hint="use a snapshot made from harvest runs")
        lookup("domain", domain)

    student_row = get_model_version(store, student)
    require_hf_weights(student_row, "training")
    student_ref = model_ref(student_row)
    teacher_row = _resolve_teacher(store, trainer, teacher)

    name = name or default_name(student_row.name, algorithm, dataset)
    if find_model_version(store, name) is not None:
        raise InvalidInputError(f"a model named {name!r} is already registered",
                                hint="choose another --name (or `supertiny models show` it)")
    directory = run_dir(settings, name)
    context = TrainContext(store=store, settings=settings, config=config, student=student_row, dataset=dataset,
                           name=name, run_dir=directory, teacher=teacher_row, domain=domain,
                           progress=progress or NullProgress(), open_chat_model=open_chat_model)
    if not context.items():
        raise InvalidInputError(f"snapshot {ref} has no record in split {config.split!r}",
                                hint="choose another --split")
    identity = _identity(algorithm, stage, student_row, teacher_row, ref, domain, config)
    _check_identity(directory, identity)
    trainer.check(context)
    if check_memory:
        resident = [model_facts(model_ref(row)) for row in trainer.resident_models(context)]
        resources.check_memory(config, model_facts(student_ref), resident, f"{algorithm} of {student_row.name}")
    return PreparedRun(trainer=trainer, context=context, identity=identity)


def execute_run(run: PreparedRun, keep_checkpoints: bool = False) -> TrainedModel:
    """Train (resuming), save the model under ``models_dir`` and register it."""
    from supertiny.artifacts import weights
    from supertiny.artifacts.facts import DTYPE_BYTES, model_facts, model_ref
    from supertiny.artifacts.hf import save_json, save_model
    from supertiny.models.versions import register_model_version
    from supertiny.train.hf_loop import remove_checkpoints

    trainer, context = run.trainer, run.context
    identity_file = context.run_dir / "run.json"
    state = _read_json(identity_file) or {"identity": run.identity, "status": "running", "elapsed_s": 0.0}
    save_json(identity_file, state)
    started = time.perf_counter()
    try:
        result = trainer.train(context)
    finally:
        state["elapsed_s"] = round(state.get("elapsed_s", 0.0) + time.perf_counter() - started, 2)
        save_json(identity_file, state)
    context.progress.phase(f"saving {context.name}")
    out = context.settings.models_dir / context.name
    save_dtype = model_facts(model_ref(context.student)).dtype
    save_model(result.model, result.tokenizer, out, save_dtype if save_dtype in DTYPE_BYTES else "float32")
    metrics = {**result.metrics, "wall_time_s": state["elapsed_s"]}
    # the training recipe is provenance, kept under "source": the rest of a row's config is what the
    # backend opens the model with
    config = {"source": {**context.config.as_dict(), "data": _dataset_ref(context.dataset),
                         "teacher": context.teacher.name if context.teacher else None, "domain": context.domain}}
    param_count, size_bytes = weights.count_safetensors_parameters(out), weights.weights_size(out)
    row = register_model_version(context.store, name=context.name, stage=stage_of(trainer), format="hf",
                                 backend="transformers", path=str(out), parent=context.student.name,
                                 dataset_id=context.dataset.id, algorithm=trainer.name, config=config,
                                 metrics=metrics, param_count=param_count, size_bytes=size_bytes)
    state["status"] = "completed"
    save_json(identity_file, state)
    if not keep_checkpoints:
        remove_checkpoints(context.run_dir)
    return TrainedModel(name=row.name, model_version_id=row.id, path=str(out), algorithm=trainer.name,
                        parent=context.student.name, dataset=_dataset_ref(context.dataset),
                        param_count=param_count, size_bytes=size_bytes, metrics=metrics)


def stage_of(trainer: Trainer) -> str:
    stage = getattr(trainer, "stage", None) or trainer.name
    if stage not in MODEL_STAGES:
        raise InvalidInputError(f"trainer {trainer.name!r} makes models of stage {stage!r}, which the registry "
                                f"does not know", hint=f"one of {', '.join(MODEL_STAGES)}")
    return stage


def _resolve_teacher(store: Store, trainer: Trainer, teacher: str | None) -> ModelVersion | None:
    from supertiny.models.versions import get_model_version

    if trainer.teacher == "required" and not teacher:
        raise InvalidInputError(f"{trainer.name} needs a --teacher")
    if trainer.teacher == "none" and teacher:
        raise InvalidInputError(f"{trainer.name} takes no --teacher")
    return get_model_version(store, teacher) if teacher else None


def _dataset_ref(dataset: Dataset) -> str:
    return f"{dataset.name}@{dataset.version}"


def _identity(algorithm: str, stage: str, student: ModelVersion, teacher: ModelVersion | None, data: str,
              domain: str | None, config: TrainConfig) -> dict[str, Any]:
    return {"algorithm": algorithm, "stage": stage, "student": student.name, "teacher": teacher.name if teacher
            else None, "data": data, "domain": domain, "config": config.identity()}


def _check_identity(directory: Path, identity: dict[str, Any]) -> None:
    """A run directory belongs to one command: the same command resumes it, another is refused."""
    import json

    existing = _read_json(directory / "run.json").get("identity")
    if existing is not None and existing != identity:
        old = {**existing.pop("config", {}), **existing}
        new = {**identity.get("config", {}), **{k: v for k, v in identity.items() if k != "config"}}
        changed = sorted(key for key in set(old) | set(new) if json.dumps(old.get(key)) != json.dumps(new.get(key)))
        raise InvalidInputError(f"run {directory.name!r} was started with other settings (differs in: "
                                f"{', '.join(changed)})",
                                hint=f"re-run it with the same options, choose another --name, or delete {directory}")


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
