"""Loading and saving Hugging Face models: the tokenizer (with its chat template) and the causal LM of a
:class:`~supertiny.artifacts.facts.ModelRef`, a model saved back as a plain HF directory (LoRA adapters merged,
tokenizer, chat template and generation config beside it), and the small file and error helpers around them."""

import json
import shutil
from pathlib import Path
from typing import Any

from supertiny.artifacts.facts import ModelRef
from supertiny.errors import InvalidInputError, ModelError


def set_threads(threads: int) -> None:
    """Give torch ``threads`` CPU threads (process-wide); 0 keeps torch's default."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def load_tokenizer(ref: ModelRef) -> Any:
    """The model's tokenizer; it must have a chat template (training renders conversations with it)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.load_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {ref.name!r}: {first_line(exc)}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError(f"the tokenizer of {ref.name!r} has no chat template",
                                hint="training renders conversations and tools with the model's own template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: ModelRef, dtype: str, trainable: bool = True) -> Any:
    """The causal LM at ``ref`` in ``dtype`` ("bfloat16" or "float32")."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=getattr(torch, dtype), **ref.load_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load {ref.name!r} as a causal LM: {first_line(exc)}") from exc
    if ref.gguf_file:  # dequantized on load: make it an ordinary model that save_pretrained accepts
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if torch.cuda.is_available():
        model.to("cuda")
    if trainable:
        model.config.use_cache = False
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def merged(model: Any) -> Any:
    """The plain transformers model: LoRA adapters merged into the weights."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        # only the trained adapter: TRL's DPOTrainer adds a frozen "ref" copy beside it
        return model.merge_and_unload(adapter_names=["default"] if "default" in model.peft_config else None)
    return model


def save_model(model: Any, tokenizer: Any, directory: Path, dtype: str) -> Path:
    """Save an HF directory loadable by ``AutoModelForCausalLM``; written to a temporary directory and
    renamed, so a crash never leaves half a model under the final name."""
    import torch

    model = merged(model)
    model.to(getattr(torch, dtype)).to("cpu")
    model.config.use_cache = True
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if directory.exists():
        shutil.rmtree(directory)
    partial.rename(directory)
    return directory


def tokenizer_difference(student: Any, teacher: Any) -> str | None:
    """Why two tokenizers cannot share logits, or None when their vocabularies are identical."""
    left, right = student.get_vocab(), teacher.get_vocab()
    if left == right:
        return None
    if len(left) != len(right):
        return f"the vocabularies differ in size ({len(left)} vs {len(right)} tokens)"
    differing = sum(1 for token, index in left.items() if right.get(token) != index)
    return f"{differing} of {len(left)} tokens have different ids"


def save_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    temporary.replace(path)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
