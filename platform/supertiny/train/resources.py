"""Will the run fit in memory? An estimate from the models' parameter counts, read from file headers
before anything loads, against the memory the machine has available now.

The estimate is deliberately simple: weights x bytes per parameter, plus gradients and AdamW's two fp32
moments for every trained parameter, plus activations and logits for one batch, plus every other model
held beside the student (a kd teacher, a dpo reference) and a fixed runtime overhead.
"""

from supertiny.artifacts.facts import DTYPE_BYTES, ModelFacts
from supertiny.artifacts.hardware import fast_dtype, torch_device
from supertiny.errors import ResourceError
from supertiny.train.train_config import TrainConfig

GIB = 1024**3
RUNTIME_OVERHEAD = 1.5 * GIB  # torch, the tokenizer, allocator slack (measured: 0.5B LoRA, 256 tokens)


def training_dtype(config: TrainConfig, facts: ModelFacts) -> tuple[str, bool]:
    """(dtype the weights are held in while training, whether compute autocasts to bf16)."""
    precision = config.precision
    if precision == "auto":
        native = fast_dtype(facts.dtype, torch_device()) == "bfloat16"
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
