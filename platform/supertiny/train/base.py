"""The trainer interface: what a plugin registers through ``register_trainers``.

A trainer is an :class:`~supertiny.runs.algorithm.Algorithm` with a ``name`` (the ``supertiny train
<name>`` subcommand and, by default, the model stage), a ``config_class`` (a :class:`TrainConfig`
dataclass: its fields are the command's options) and ``train(context) -> TrainResult``. The pipeline
(:mod:`supertiny.runs.pipeline`) does everything around it: it resolves and checks the student,
teacher and snapshot, checks memory, gives the run a directory for resumable checkpoints, then saves
the returned model and registers it with its lineage.
"""

import abc
import dataclasses
from typing import Any, ClassVar

from supertiny.errors import InvalidInputError
from supertiny.runs.algorithm import Algorithm, Produced, RunContext, Use
from supertiny.store import Dataset, DatasetItem, ModelVersion
from supertiny.train.train_config import TrainConfig


@dataclasses.dataclass
class TrainContext(RunContext):
    """A run's context as a trainer reads it: ``student`` is the input model."""

    @property
    def student(self) -> ModelVersion:
        return self.model

    def items(self, split: str | None = None) -> list[DatasetItem]:
        """The snapshot's records of ``split`` (default: the config's), first ``config.limit`` only."""
        items = self.snapshot_items(split or self.config.split)
        return items[: self.config.limit] if self.config.limit else items

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


class Trainer(Algorithm):
    """Base class of a stage-2 algorithm."""

    kind = "trainer"
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    context_class = TrainContext
    name_pattern = "<student>-<algorithm>-<snapshot>-v<version>"
    model_option = "student"
    model_help = "Registered model to train."
    purpose = "training"
    data: ClassVar[Use] = "required"
    data_help = "Dataset snapshot: NAME or NAME@VERSION."
    resumable = True
    checks_memory = True

    def default_name(self, model: ModelVersion, dataset: Dataset | None, config: Any) -> str:
        assert dataset is not None  # a trainer always takes a snapshot
        return f"{model.name}-{self.name}-{dataset.name}-v{dataset.version}"

    def check_inputs(self, context: RunContext) -> None:
        assert isinstance(context, TrainContext)
        if not context.items():
            raise InvalidInputError(f"snapshot {context.dataset.name}@{context.dataset.version} has no record in "
                                    f"split {context.config.split!r}", hint="choose another --split")

    def resident_models(self, context: TrainContext) -> list[ModelVersion]:
        """Models held in memory beside the student while it trains (a kd teacher, a dpo reference)."""
        return []

    def check_resources(self, context: RunContext) -> None:
        from supertiny.artifacts.facts import model_facts, model_ref
        from supertiny.train import resources

        assert isinstance(context, TrainContext)
        resident = [model_facts(model_ref(row)) for row in self.resident_models(context)]
        resources.check_memory(context.config, model_facts(context.model_ref), resident,
                               f"{self.name} of {context.student.name}")

    def run(self, context: RunContext) -> Produced:
        """Train (resuming), then save the model as an HF directory in ``context.output_dir``."""
        from supertiny.artifacts import weights
        from supertiny.artifacts.facts import DTYPE_BYTES, model_facts
        from supertiny.artifacts.hf import save_model

        assert isinstance(context, TrainContext)
        result = self.train(context)
        context.progress.phase(f"saving {context.name}")
        save_dtype = model_facts(context.model_ref).dtype
        save_model(result.model, result.tokenizer, context.output_dir,
                   save_dtype if save_dtype in DTYPE_BYTES else "float32")
        return Produced(param_count=weights.count_safetensors_parameters(context.output_dir), metrics=result.metrics)

    def clean_up(self, context: RunContext) -> None:
        from supertiny.train.hf_loop import remove_checkpoints

        remove_checkpoints(context.run_dir)

    @abc.abstractmethod
    def train(self, context: TrainContext) -> TrainResult:
        """Train the student of ``context`` and return the result; resume from ``context.run_dir``."""
