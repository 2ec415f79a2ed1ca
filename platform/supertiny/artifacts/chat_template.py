"""A model's own chat template, shared by every backend that renders prompts itself (transformers,
transformers-quantized, llama-cpp, vllm) so a model sees the same text on each: the tokenizer that carries
the template, the prompt it renders over messages and tools, the tokens that end a turn, and how completions
are decoded."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supertiny.artifacts.hf import first_line
from supertiny.errors import InvalidInputError, ModelError
from supertiny.schema.messages import MessageLike, message_dicts
from supertiny.schema.tools import ToolLike, tool_dicts

# chat-turn terminators of common templates; used as stop ids when the vocabulary has them
TURN_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")
# completions are decoded exactly as written: special tokens kept, no space clean-up
DECODE_KWARGS = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


def load_chat_tokenizer(directory: Path) -> Any:
    """The Hugging Face tokenizer in ``directory``; a ModelError when it cannot load or has no chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer in {directory}: {first_line(exc)}") from exc
    require_chat_template(tokenizer, directory)
    return tokenizer


def require_chat_template(tokenizer: Any, directory: Path) -> None:
    """A ModelError unless ``tokenizer`` (loaded from ``directory``) has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"the tokenizer in {directory} has no chat template",
                         hint="supertiny needs an instruct model whose template renders tools")


def chat_template_messages(messages: Sequence[MessageLike]) -> list[dict[str, Any]]:
    """Messages as chat templates want them: tool-call arguments as objects (Qwen's template writes
    ``arguments | tojson``, so a JSON string would come out encoded twice) and content never None."""
    conversation = message_dicts(messages)
    for message in conversation:
        if message.get("content") is None:
            message["content"] = ""
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except ValueError:
                continue  # malformed arguments stay as the model wrote them
            if isinstance(arguments, dict):
                function["arguments"] = arguments
    return conversation


def render_chat_prompt(tokenizer: Any, name: str, messages: Sequence[MessageLike],
                       tools: Sequence[ToolLike] | None = None) -> str:
    """A Hugging Face tokenizer's chat template over the messages and tools, ending with the assistant's turn."""
    conversation = chat_template_messages(messages)
    try:
        return tokenizer.apply_chat_template(conversation, tools=tool_dicts(tools), add_generation_prompt=True,
                                             tokenize=False)
    except Exception as exc:  # jinja2 errors carry the template's own message
        raise InvalidInputError(f"the chat template of {name} cannot render these messages: "
                                f"{first_line(exc)}") from exc


def stop_token_ids(tokenizer: Any, configured: int | list[int] | None) -> set[int]:
    """End-of-turn ids: the generation config's eos ids (``configured``), the tokenizer's eos, and known turn
    terminators."""
    ids: set[int] = set()
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocabulary = tokenizer.get_vocab()
    ids.update(vocabulary[token] for token in TURN_END_TOKENS if token in vocabulary)
    if not ids:
        raise ModelError("the model declares no end-of-sequence token; generation would never stop")
    return ids
