"""Where a model's weights are and what its files say about it, before anything loads: the parameter count,
the dtype its config declares, its width, depth and vocabulary; and the dtype a frozen copy of it computes in
on this machine."""

import dataclasses
import json
from pathlib import Path
from typing import Any

from supertiny.artifacts import weights
from supertiny.artifacts.hardware import fast_dtype, torch_device
from supertiny.errors import InvalidInputError
from supertiny.store import ModelVersion

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What a model's files say about its size, without loading it."""

    param_count: int
    dtype: str  # the dtype its config declares ("bfloat16", "float32", ...)
    hidden_size: int
    num_layers: int
    vocab_size: int

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 4)


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Where a model's weights are: a registered version, or an intermediate model of a run."""

    name: str
    path: Path
    gguf_file: str | None = None
    param_count: int | None = None

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def model_ref(version: ModelVersion) -> ModelRef:
    """The HF directory of a registered model (and its GGUF file name, if it is one); an InvalidInputError
    when its files are missing. Whether the model's backend opens it from such weights at all is the
    caller's check (:func:`supertiny.models.versions.require_hf_weights`)."""
    path = Path(version.path).expanduser()
    gguf_file = (version.config or {}).get("gguf_file") if version.format == "gguf" else None
    if not path.is_dir():
        raise InvalidInputError(f"the files of model {version.name!r} are missing ({path})")
    return ModelRef(name=version.name, path=path, gguf_file=gguf_file, param_count=version.param_count)


def model_facts(ref: ModelRef) -> ModelFacts:
    """The facts of ``ref`` read from its config.json and weight-file headers."""
    config: dict[str, Any] = {}
    if (ref.path / "config.json").is_file():
        try:
            config = json.loads((ref.path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
    config = {**config, **(config.get("text_config") or {})}
    params = ref.param_count
    if not params:
        params = weights.count_gguf_parameters(ref.path / ref.gguf_file) if ref.gguf_file \
            else weights.count_safetensors_parameters(ref.path) or 0
    dtype = "bfloat16" if ref.gguf_file else str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return ModelFacts(param_count=int(params), dtype=dtype, hidden_size=int(config.get("hidden_size") or 0),
                      num_layers=int(config.get("num_hidden_layers") or 0),
                      vocab_size=int(config.get("vocab_size") or 0))


def compute_dtype(facts: ModelFacts) -> str:
    """The dtype to run a frozen model (a teacher, a model being pruned) in on this machine."""
    return fast_dtype(facts.dtype, torch_device())
