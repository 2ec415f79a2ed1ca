"""The trainer interface: what a plugin registers through ``register_trainers``.

A trainer has a ``name`` (the ``supertiny train <name>`` subcommand and the model stage), a
``config_class`` (a :class:`TrainConfig` dataclass: its fields are the command's options) and
``train(context) -> TrainResult``. The pipeline (:mod:`supertiny.train.pipeline`) does everything
around it: it resolves and checks the student, teacher and snapshot, checks memory, gives the run a
directory for resumable checkpoints, then saves the returned model and registers it with its lineage.
"""

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from supertiny.config import Settings
from supertiny.progress import NullProgress, Progress
from supertiny.store import Dataset, DatasetItem, ModelVersion, Store
from supertiny.train.train_config import TrainConfig

TeacherUse = Literal["none", "optional", "required"]


@dataclasses.dataclass
class TrainContext:
    """Everything a trainer needs, resolved and checked by the pipeline."""

    store: Store
    settings: Settings
    config: TrainConfig
    student: ModelVersion
    dataset: Dataset
    name: str  # the new model version's name
    run_dir: Path  # this run's checkpoints and intermediate files (re-running resumes from them)
    teacher: ModelVersion | None = None
    domain: str | None = None
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    # a model name or HF directory -> a LangChain chat model (sampling for rft / dpo); tests swap it
    open_chat_model: Callable[[str], Any] | None = None
    _items: dict[str | None, list[DatasetItem]] = dataclasses.field(default_factory=dict, repr=False)

    def items(self, split: str | None = None) -> list[DatasetItem]:
        """The snapshot's records of ``split`` (default: the config's), first ``config.limit`` only."""
        from supertiny.data.snapshot import snapshot_items

        split = split or self.config.split
        if split not in self._items:
            items = snapshot_items(self.store, self.dataset, split)
            self._items[split] = items[: self.config.limit] if self.config.limit else items
        return self._items[split]

    def chat_model(self, name: str) -> Any:
        """A LangChain chat model over a registered model or an HF directory, for sampling. Opened
        outside the process-wide model cache, so its memory goes once the sampling is done."""
        if self.open_chat_model is not None:
            return self.open_chat_model(name)
        from supertiny.models.langchain_adapter import SupertinyChatModel
        from supertiny.registry import lookup
        from supertiny.runtime.loading import resolve_model

        where = resolve_model(self.store, name)
        return SupertinyChatModel(model=lookup("backend", where.backend).open(where.location, dict(where.config)))


@dataclasses.dataclass
class TrainResult:
    """What a trainer hands back: the trained model (adapters merged), its tokenizer, and metrics
    (``loss_first``, ``loss_last``, ``steps``, ``tokens``, ... see :mod:`supertiny.train.hf_loop`)."""

    model: Any
    tokenizer: Any
    metrics: dict[str, Any]


class Trainer(abc.ABC):
    """Base class of a stage-2 algorithm."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    teacher: ClassVar[TeacherUse] = "none"
    teacher_help: ClassVar[str] = "Teacher model."  # the --teacher option's help
    # the registry stage of the models it makes (one of MODEL_STAGES); default: the trainer's name
    stage: ClassVar[str | None] = None
    # the snapshot's domain must be known (the trainer samples the domain's tasks)
    needs_domain: ClassVar[bool] = False

    def check(self, context: TrainContext) -> None:  # noqa: B027 - optional hook
        """Refuse bad input before any training starts (raise InvalidInputError); the pipeline has
        already checked the snapshot, the models and the memory."""

    def resident_models(self, context: TrainContext) -> list[ModelVersion]:
        """Models held in memory beside the student while it trains (a kd teacher, a dpo reference)."""
        return []

    @abc.abstractmethod
    def train(self, context: TrainContext) -> TrainResult:
        """Train the student of ``context`` and return the result; resume from ``context.run_dir``."""
