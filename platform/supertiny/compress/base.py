"""The compressor interface: what a plugin registers through ``register_compressors``.

A compressor has a ``name`` (the ``supertiny compress <name>`` subcommand), a ``config_class`` (a
:class:`CompressConfig` dataclass: its fields are the command's options), a registry ``stage`` and
``compress(context) -> CompressResult``. The pipeline (:mod:`supertiny.compress.pipeline`) does
everything around it: it resolves and checks the model, the snapshot and the new name, gives the
compressor an empty output directory, then registers what the compressor wrote there with its
lineage (parent = the input model, dataset = the calibration snapshot).
"""

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

from supertiny.artifacts.facts import ModelRef
from supertiny.compress.compress_config import CompressConfig
from supertiny.config import Settings
from supertiny.progress import NullProgress, Progress
from supertiny.store import Dataset, DatasetItem, ModelVersion, Store

DataUse = Literal["none", "optional", "required"]

@dataclasses.dataclass
class CompressContext:
    """Everything a compressor needs, resolved and checked by the pipeline."""

    store: Store
    settings: Settings
    config: CompressConfig
    source: ModelVersion  # the registered model to compress
    source_ref: ModelRef  # its local HF directory
    name: str  # the new model version's name
    output_dir: Path  # empty; the compressor writes the new model here
    dataset: Dataset | None = None  # the calibration snapshot, when given
    domain: str | None = None
    progress: Progress = dataclasses.field(default_factory=NullProgress)
    _items: dict[str, list[DatasetItem]] = dataclasses.field(default_factory=dict, repr=False)

    def items(self, split: str) -> list[DatasetItem]:
        """The snapshot's records of ``split`` (none without a snapshot)."""
        from supertiny.data.snapshot import snapshot_items

        if self.dataset is None:
            return []
        if split not in self._items:
            self._items[split] = snapshot_items(self.store, self.dataset, split)
        return self._items[split]


@dataclasses.dataclass
class CompressResult:
    """What a compressor hands back once its files are in ``context.output_dir``: how the registry
    opens them (format, backend and backend config), the parameter count and metrics. ``location`` is
    what the backend opens when that is a file inside ``output_dir`` (a GGUF), not the directory."""

    param_count: int
    metrics: dict[str, Any]
    format: str = "hf"
    backend: str = "transformers"
    backend_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    location: Path | None = None


class Compressor(abc.ABC):
    """Base class of a stage-3 algorithm."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[CompressConfig]] = CompressConfig
    stage: ClassVar[str] = "pruned"  # the registry stage of the models it makes (one of MODEL_STAGES)
    data: ClassVar[DataUse] = "none"  # whether it takes a calibration snapshot (--data)
    data_help: ClassVar[str] = "Dataset snapshot (NAME or NAME@VERSION)."
    healable: ClassVar[bool] = False  # its result can be healed by distillation from the input model

    def name_suffix(self, config: CompressConfig) -> str:
        """What the default name of a result adds to the input model's name."""
        return self.name

    def check(self, context: CompressContext) -> None:  # noqa: B027 - optional hook
        """Refuse bad input before any weight loads (raise InvalidInputError); the pipeline has already
        checked the model, the snapshot and the name."""

    @abc.abstractmethod
    def compress(self, context: CompressContext) -> CompressResult:
        """Compress ``context.source`` and write the new model into ``context.output_dir``."""
