"""The compressor interface: what a plugin registers through ``register_compressors``.

A compressor is an :class:`~supertiny.runs.algorithm.Algorithm` with a ``name`` (the ``supertiny
compress <name>`` subcommand), a ``config_class`` (a :class:`CompressConfig` dataclass: its fields are
the command's options), a registry ``stage`` and ``compress(context) -> Produced``. The pipeline
(:mod:`supertiny.runs.pipeline`) does everything around it: it resolves and checks the model, the
snapshot and the new name, gives the compressor an empty output directory, then registers what the
compressor wrote there with its lineage (parent = the input model, dataset = the calibration snapshot).
"""

import abc
import dataclasses
from typing import Any, ClassVar

from supertiny.artifacts.facts import ModelRef
from supertiny.compress.compress_config import CompressConfig
from supertiny.errors import InvalidInputError
from supertiny.runs.algorithm import Algorithm, Produced, RunContext
from supertiny.store import Dataset, DatasetItem, ModelVersion

QUANTIZED_FORMATS = ("quantized", "compressed-tensors")  # `compress quantize`'s weight-only and W8A8 outputs


@dataclasses.dataclass
class CompressContext(RunContext):
    """A run's context as a compressor reads it: ``source`` is the model to compress."""

    @property
    def source(self) -> ModelVersion:
        return self.model

    @property
    def source_ref(self) -> ModelRef:
        return self.model_ref

    def items(self, split: str) -> list[DatasetItem]:
        """The snapshot's records of ``split`` (none without a snapshot)."""
        return self.snapshot_items(split)


class Compressor(Algorithm):
    """Base class of a stage-3 algorithm."""

    kind = "compressor"
    config_class: ClassVar[type[CompressConfig]] = CompressConfig
    context_class = CompressContext
    stage: ClassVar[str | None] = "pruned"
    name_pattern = "<model>-<what was done>"
    model_help = "Registered model to compress."
    purpose = "compression"

    def name_suffix(self, config: CompressConfig) -> str:
        """What the default name of a result adds to the input model's name."""
        return self.name

    def default_name(self, model: ModelVersion, dataset: Dataset | None, config: Any) -> str:
        return f"{model.name}-{self.name_suffix(config)}"

    def check_model(self, model: ModelVersion) -> None:
        if model.format in QUANTIZED_FORMATS:
            raise InvalidInputError(f"model {model.name!r} is already quantized", hint="compress its parent instead")

    def run(self, context: RunContext) -> Produced:
        assert isinstance(context, CompressContext)
        return self.compress(context)

    @abc.abstractmethod
    def compress(self, context: CompressContext) -> Produced:
        """Compress ``context.source`` and write the new model into ``context.output_dir``."""
