"""Will the run fit in memory? An estimate from the models' parameter counts, read from file headers
before anything loads, against the memory the machine has available now.

The estimate is deliberately simple: weights x bytes per parameter, plus gradients and AdamW's two fp32
moments for every trained parameter, plus activations and logits for one batch, plus every other model
held beside the student (a kd teacher, a dpo reference) and a fixed runtime overhead.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from supertiny.artifacts.hardware import fast_dtype
from supertiny.errors import InvalidInputError, ResourceError
from supertiny.store import ModelVersion
from supertiny.transfer.train_config import TrainConfig

GIB = 1024**3
RUNTIME_OVERHEAD = 1.5 * GIB  # torch, the tokenizer, allocator slack (measured: 0.5B LoRA, 256 tokens)
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
    """The HF directory of a registered model (and its GGUF file name, if it is one); endpoints refused."""
    from supertiny.models.registry import require_hf_weights

    require_hf_weights(version, "training")
    path = Path(version.path).expanduser()
    gguf_file = (version.config or {}).get("gguf_file") if version.format == "gguf" else None
    if not path.is_dir():
        raise InvalidInputError(f"the files of model {version.name!r} are missing ({path})")
    return ModelRef(name=version.name, path=path, gguf_file=gguf_file, param_count=version.param_count)


def model_facts(ref: ModelRef) -> ModelFacts:
    from supertiny.artifacts import weights

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


def training_dtype(config: TrainConfig, facts: ModelFacts) -> tuple[str, bool]:
    """(dtype the weights are held in while training, whether compute autocasts to bf16)."""
    precision = config.precision
    if precision == "auto":
        native = fast_dtype(facts.dtype, "cuda" if _cuda() else "cpu") == "bfloat16"
        precision = ("bf16" if config.lora else "mixed") if native else "fp32"
    if precision == "bf16":
        return "bfloat16", False
    return "float32", precision == "mixed"


def estimate_training_bytes(config: TrainConfig, student: ModelFacts, resident: list[ModelFacts]) -> int:
    """Bytes the run needs at its peak (an estimate, see the module docstring)."""
    dtype, _ = training_dtype(config, student)
    weight_bytes = DTYPE_BYTES[dtype]
    params = student.param_count
    if config.lora:
        # adapters are ~1% of the weights; each adapter parameter: fp32 weight, gradient, 2 moments
        trained = params * 0.01
        model_bytes = params * weight_bytes + trained * 16
    else:
        model_bytes = params * (2 * weight_bytes + 8)  # weights, gradients, AdamW's two fp32 moments
    tokens = config.batch_size * config.max_length
    per_token_layer = 8 if config.gradient_checkpointing else 80  # activation bytes per hidden unit
    activations = tokens * (student.hidden_size * student.num_layers * per_token_layer + student.vocab_size * 12)
    others = sum(facts.param_count * facts.bytes_per_param + tokens * facts.vocab_size * 8 for facts in resident)
    return int(model_bytes + activations + others + RUNTIME_OVERHEAD)


def available_memory() -> int:
    """Bytes that can be allocated now: free GPU memory when training runs on CUDA, else the RAM the OS
    can give without swapping."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    return int(psutil.virtual_memory().available)


def check_memory(config: TrainConfig, student: ModelFacts, resident: list[ModelFacts], what: str) -> int:
    """The estimate; a ResourceError when it exceeds the available memory."""
    needed = estimate_training_bytes(config, student, resident)
    available = available_memory()
    if needed > available:
        hints = ["LoRA (--lora)" if not config.lora else None,
                 "--gradient-checkpointing" if not config.gradient_checkpointing else None,
                 "a smaller --max-length or --batch-size"]
        raise ResourceError(f"{what} needs about {needed / GIB:.1f} GiB of memory but only "
                            f"{available / GIB:.1f} GiB is available",
                            hint="try " + ", ".join(hint for hint in hints if hint) + ", or free memory")
    return needed


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_dtype(facts: ModelFacts) -> str:
    """The dtype to run a frozen model (a teacher, a model being pruned) in on this machine."""
    return fast_dtype(facts.dtype, "cuda" if _cuda() else "cpu")
