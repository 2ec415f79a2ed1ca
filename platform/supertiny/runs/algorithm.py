"""What a registered algorithm is: the part of a trainer or a compressor that the pipeline reads.

An algorithm turns one registered model (and, where it takes them, a snapshot and a teacher) into a
new model version. It declares its ``name`` (its subcommand), ``config_class`` (its options),
``stage`` (the registry stage of what it makes), what data and teacher it takes, its checks, and
``run(context) -> Produced``. :mod:`supertiny.runs.pipeline` does everything around it: resolve and
check the inputs, give the run its directories, time it, and register the result with its lineage.
Stage 2 (:class:`supertiny.train.base.Trainer`) and stage 3
(:class:`supertiny.compress.base.Compressor`) are the two families built on it.
"""

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from supertiny.artifacts.facts import ModelRef
from supertiny.config import Settings
from supertiny.progress import NullProgress, Progress
from supertiny.store import Dataset, DatasetItem, ModelVersion, Store

Use = Literal["none", "optional", "required"]


@dataclasses.dataclass
class RunContext:
    """Everything an algorithm needs, resolved and checked by the pipeline."""

    store: Store
    settings: Settings
    config: Any  # an instance of the algorithm's config_class
    model: ModelVersion  # the registered input model
    model_ref: ModelRef  # its local HF directory
    name: str  # the new model version's name
    run_dir: Path  # this run's intermediate files and checkpoints (re-running resumes from them)
    output_dir: Path  # where the new model is written
    dataset: Dataset | None = None
    teacher: ModelVersion | None = None
    domain: str | None = None
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    # a model name or HF directory -> a LangChain chat model (sampling for rft / dpo); tests swap it
    open_chat_model: Callable[[str], Any] | None = None
    _items: dict[str, list[DatasetItem]] = dataclasses.field(default_factory=dict, repr=False)

    def snapshot_items(self, split: str) -> list[DatasetItem]:
        """The snapshot's records of ``split`` (none without a snapshot)."""
        from supertiny.data.snapshot import snapshot_items

        if self.dataset is None:
            return []
        if split not in self._items:
            self._items[split] = snapshot_items(self.store, self.dataset, split)
        return self._items[split]


@dataclasses.dataclass
class Produced:
    """What a run leaves once its files are in ``context.output_dir``: how the registry opens them
    (format, backend and backend config), the parameter count and metrics. ``location`` is what the
    backend opens when that is a file inside ``output_dir`` (a GGUF), not the directory."""

    param_count: int | None
    metrics: dict[str, Any]
    format: str = "hf"
    backend: str = "transformers"
    backend_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    location: Path | None = None


class Algorithm(abc.ABC):
    """Base class of everything that makes a model version from another: trainers and compressors."""

    kind: ClassVar[str] = ""  # its plugin registry kind: "trainer", "compressor"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    context_class: ClassVar[type[RunContext]] = RunContext
    # the registry stage of the models it makes (one of MODEL_STAGES); default: the algorithm's name
    stage: ClassVar[str | None] = None
    name_pattern: ClassVar[str] = "<model>-<algorithm>"  # default_name, as the --name option's help says it
    model_option: ClassVar[str] = "model"  # the CLI option naming the input model
    model_help: ClassVar[str] = "Registered model."
    purpose: ClassVar[str] = "this"  # what needs the input's HF weights, in error messages
    data: ClassVar[Use] = "none"  # whether it takes a snapshot (--data)
    data_help: ClassVar[str] = "Dataset snapshot (NAME or NAME@VERSION)."
    teacher: ClassVar[Use] = "none"
    teacher_help: ClassVar[str] = "Teacher model."
    needs_domain: ClassVar[bool] = False  # the snapshot's domain must be known (it samples the domain's tasks)
    resumable: ClassVar[bool] = False  # keeps checkpoints under run_dir that a re-run resumes from
    checks_memory: ClassVar[bool] = False  # estimates its peak memory before it starts

    def registry_stage(self) -> str:
        return self.stage or self.name

    def default_name(self, model: ModelVersion, dataset: Dataset | None, config: Any) -> str:
        return f"{model.name}-{self.name}"

    def default_teacher(self, store: Store, model: ModelVersion) -> str | None:
        """The teacher when none is given."""
        return None

    def check_model(self, model: ModelVersion) -> None:  # noqa: B027 - optional hook
        """Refuse an input model this family cannot take (raise InvalidInputError)."""

    def check_inputs(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """The family's own checks of a resolved context, before the run's identity is checked."""

    def check(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Refuse bad input before any weight loads (raise InvalidInputError); the pipeline has already
        checked the model, the snapshot, the teacher and the name."""

    def check_resources(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Refuse a run that will not fit the machine (raise ResourceError)."""

    @abc.abstractmethod
    def run(self, context: RunContext) -> Produced:
        """Make the new model in ``context.output_dir``."""

    def clean_up(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Drop what only a resumed run would need, once the new model is registered."""
