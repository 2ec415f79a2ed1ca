"""Convert a GGUF causal LM into a bf16 safetensors Hugging Face directory.

transformers loads the GGUF with every tensor dequantized to bf16; the input embedding is re-tied to the
output head where asked, the generation config gets the chat model's end-of-turn ids, and model, tokenizer
(with its chat template) and generation config are saved into the output directory.
"""

import gc
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supertiny.artifacts import weights
from supertiny.errors import ModelError, ResourceError
from supertiny.models.catalog import CatalogModel
from supertiny.models.gguf_download import Report

logger = logging.getLogger(__name__)

DTYPE = "bfloat16"

# Peak memory of a conversion over the GGUF's size: the dequantized bf16 weights, plus the copies made while
# loading.
MEMORY_PER_GGUF_BYTE = 7

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


def check_memory(entry: CatalogModel) -> None:
    """Raise ResourceError when the machine clearly lacks the memory to convert ``entry``."""
    needed = MEMORY_PER_GGUF_BYTE * entry.size_bytes
    available = _available_memory()
    if available is not None and available < needed:
        raise ResourceError(f"converting {entry.name} needs about {needed / 2**30:.1f} GiB of memory; "
                            f"{available / 2**30:.1f} GiB is available",
                            hint="stop other jobs, or pull on a machine with more memory")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def convert_gguf(gguf_path: Path, output_dir: Path, *, tie_word_embeddings: bool = True,
                 name: str | None = None, progress: bool = True,
                 report: Report | None = None) -> dict[str, Any]:
    """Dequantize a GGUF causal LM to bf16 and save it with its tokenizer as an HF directory.

    With ``tie_word_embeddings`` the input embedding becomes the output head's weight (the GGUF
    stores two quantized copies; the head's is the more precise one in the Qwen files). Returns what
    the manifest records: parameter count, load and save seconds, which copies were used."""
    import torch
    import transformers

    report = report or (lambda message: None)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    report(f"converting {gguf_path.name} to {DTYPE} safetensors (dequantizing every tensor)")
    tokenizer, model, tokenizer_s, load_s = _load_gguf(gguf_path, progress)
    try:
        _unmark_quantized(model, gguf_path)
        untied_params = sum(param.numel() for param in model.parameters())
        tied = tie_word_embeddings and _tie_embeddings(model, gguf_path)
        param_count = sum(param.numel() for param in model.parameters())
        model.config.name_or_path = name or gguf_path.stem
        _set_generation_ids(model, tokenizer)
        started = time.perf_counter()
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        save_s = time.perf_counter() - started
    finally:
        del model
        gc.collect()
    stored = weights.count_safetensors_parameters(output_dir)
    if stored != param_count:
        raise ModelError(f"{gguf_path.name}: saved {stored} parameters, expected {param_count}")
    report(f"{name or gguf_path.stem}: {param_count:,} parameters"
           + (f" (tied; {untied_params:,} untied)" if tied else "")
           + f"; loaded in {load_s:.1f} s (tokenizer {tokenizer_s:.1f} s), saved in {save_s:.1f} s")
    return {"param_count": param_count, "untied_param_count": untied_params, "tied_word_embeddings": tied,
            "tokenizer_s": round(tokenizer_s, 2), "load_s": round(load_s, 2), "save_s": round(save_s, 2),
            "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def _load_gguf(gguf_path: Path, progress: bool) -> tuple[Any, Any, float, float]:
    """The tokenizer and the dequantized bf16 model of ``gguf_path``, with the seconds each took to load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    restore_bars = _quiet_transformers(progress)
    try:
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer_s = time.perf_counter() - started
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        load_s = time.perf_counter() - started
    except Exception as exc:  # transformers and gguf raise many kinds on a file they cannot read
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"transformers cannot load {gguf_path.name}: {first_line}") from exc
    finally:
        restore_bars()
    return tokenizer, model, tokenizer_s, load_s


def _unmark_quantized(model: Any, gguf_path: Path) -> None:
    """Let ``save_pretrained`` save a model loaded from GGUF (it refuses one that still looks quantized);
    a ModelError when a tensor stayed packed."""
    import torch

    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    packed = [key for key, param in model.named_parameters() if param.dtype != torch.bfloat16]
    if packed:
        raise ModelError(f"{gguf_path.name}: tensors stayed packed after loading ({packed[0]} ...)")


def _tie_embeddings(model: Any, gguf_path: Path) -> bool:
    """Make the output head's weight the input embedding too; whether the two were separate before."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or embed.weight.data_ptr() == head.weight.data_ptr():
        return False
    difference = (embed.weight.float() - head.weight.float()).abs().mean().item()
    embed.weight = head.weight
    model.config.tie_word_embeddings = True
    logger.info("%s: tied the input embedding to the output head (mean difference of the two copies "
                "%.5f)", gguf_path.name, difference)
    return True


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    """End generation at the end-of-turn tokens, pad with the tokenizer's pad token, and cap the tokenizer's
    length at the model's context window (the GGUF tokenizer says "unlimited")."""
    generation = model.generation_config
    eos_ids = [tokenizer.convert_tokens_to_ids(token) for token in END_OF_TURN_TOKENS
               if token in tokenizer.get_vocab()]
    if eos_ids:
        generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > context:
        tokenizer.model_max_length = context


def _quiet_transformers(progress: bool) -> Callable[[], None]:
    """Hide transformers' own progress bars when ``progress`` is off; returns the undo."""
    if progress:
        return lambda: None
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar if was_enabled else (lambda: None)
