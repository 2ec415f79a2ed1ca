"""The student made trainable: loaded for training, with LoRA adapters (the base weights frozen) and,
optionally, the embedding rows of the chat markup's added tokens trainable too."""

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from supertiny.artifacts.facts import ModelRef
from supertiny.artifacts.hf import first_line, load_model
from supertiny.errors import InvalidInputError
from supertiny.train.train_config import TrainConfig


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
        raise InvalidInputError(f"cannot add LoRA adapters: {first_line(exc)}") from exc


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
