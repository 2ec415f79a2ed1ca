"""Load a registered model for training, wrap it in LoRA adapters, and save the result as a plain HF
directory (adapters merged, the student's dtype, tokenizer + chat template + generation config)."""

import json
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError, ModelError
from supertiny.transfer.resources import ModelRef
from supertiny.transfer.train_config import TrainConfig


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def load_tokenizer(ref: ModelRef) -> Any:
    """The model's tokenizer; it must have a chat template (training renders conversations with it)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, **ref.load_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {ref.name!r}: {_first_line(exc)}") from exc
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
        raise ModelError(f"cannot load {ref.name!r} as a causal LM: {_first_line(exc)}") from exc
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


def apply_lora(model: Any, config: TrainConfig, token_ids: Sequence[int] = ()) -> Any:
    """Wrap ``model`` in trainable LoRA adapters (the base weights stay frozen), and make the embedding rows
    of ``token_ids`` trainable too (tied to the output head where the model ties them)."""
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = config.lora_targets.strip()
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none",
                      trainable_token_indices=sorted(set(token_ids)) or None)
    try:
        with warnings.catch_warnings():  # PEFT still asks for the pre-5.x checkpointing property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, lora, autocast_adapter_dtype=config.adapter_fp32)
    except ValueError as exc:  # e.g. a target module the model does not have
        raise InvalidInputError(f"cannot add LoRA adapters: {_first_line(exc)}") from exc


def added_token_ids(tokenizer: Any, labels: Iterable[Sequence[int]]) -> list[int]:
    """The tokenizer's added tokens (chat markup such as ``<tool_call>``) that occur among ``labels``."""
    added = set(tokenizer.added_tokens_decoder)
    return sorted({token for row in labels for token in row if token in added})


def prepare_student(ref: ModelRef, config: TrainConfig, dtype: str, token_ids: Sequence[int] = ()) -> Any:
    """The student ready to train: LoRA-wrapped (with ``token_ids``' embedding rows trainable when
    ``config.train_added_tokens``) or fully trainable."""
    model = load_model(ref, dtype)
    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora:
            model.enable_input_require_grads()
    if not config.lora:
        return model
    return apply_lora(model, config, token_ids if config.train_added_tokens else ())


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
    temporary.replace(path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
