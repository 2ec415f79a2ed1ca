"""Conversations as training examples: the records of a snapshot tokenized (see
:mod:`supertiny.artifacts.conversation`: the loss on the assistant turns only), those with nothing to train
left out and counted, optionally without the prose around tool calls, and the chat markup spelled out.

With ``spell`` (see :func:`markup_spellings`), trained occurrences of the chat template's non-special added
tokens are trained as the text pieces that spell them: Qwen's template opens each call with the added token
``<tool_call>``, which the 0.5B and 1.5B Qwen models give probability ~0 (they open a ```json block, or write
the tag as ``<`` ``tool`` ``_call`` ``>``). LoRA barely moves that token's tied embedding row, so sft on it
taught the student that no answer opens a call and, on 14 BFCL records of which 6 refusals, to refuse every
request. Spelled, the tag is text the model already writes, and the parser reads the same ``<tool_call>``.
"""

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from supertiny.artifacts.conversation import Spellings, TokenizedConversation, tokenize_conversation


@dataclasses.dataclass
class TokenizeStats:
    conversations: int = 0
    kept: int = 0
    no_assistant_turn: int = 0
    truncated: int = 0  # cut at max_length, some assistant tokens kept
    too_long: int = 0  # every assistant token past max_length: dropped
    tokens: int = 0
    trained_tokens: int = 0


def without_call_prose(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the text of every assistant turn that makes tool calls removed: the calls are the answer."""
    return [{**message, "content": ""} if message.get("role") == "assistant" and message.get("tool_calls")
            and message.get("content") else dict(message) for message in messages]


def markup_spellings(tokenizer: Any) -> dict[int, list[int]]:
    """Each non-special added token of ``tokenizer`` (Qwen's ``<tool_call>``, ``</tool_call>``) -> the ids of
    its text tokenized without added tokens (``<`` ``tool`` ``_call`` ``>``). Special tokens such as
    ``<|im_end|>`` are kept: models write them. Empty for a tokenizer without a fast backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    pre_tokenizer = backend.pre_tokenizer
    spellings = {}
    for token_id, token in tokenizer.added_tokens_decoder.items():
        if token.special:
            continue
        pieces = pre_tokenizer.pre_tokenize_str(token.content) if pre_tokenizer is not None else [(token.content, None)]
        ids = [piece.id for text, _ in pieces for piece in backend.model.tokenize(text)]
        if len(ids) > 1 or (ids and ids[0] != token_id):
            spellings[token_id] = ids
    return spellings


def tokenize_records(tokenizer: Any, records: Iterable[tuple[Sequence[dict[str, Any]], Sequence[Any] | None]],
                     max_length: int, spell: Spellings | None = None
                     ) -> tuple[list[TokenizedConversation], TokenizeStats]:
    """Tokenize (messages, tools) records for training; records with nothing to train are left out
    and counted in the stats."""
    stats = TokenizeStats()
    kept = []
    for index, (messages, tools) in enumerate(records):
        stats.conversations += 1
        whole = tokenize_conversation(tokenizer, messages, tools, spell=spell)
        if whole.trained_tokens == 0:
            stats.no_assistant_turn += 1
            continue
        cut = TokenizedConversation(whole.input_ids[:max_length], whole.labels[:max_length],
                                    min(whole.prompt_length, max_length), record=index)
        if cut.trained_tokens == 0:
            stats.too_long += 1
            continue
        if cut.trained_tokens < whole.trained_tokens:
            stats.truncated += 1
        stats.kept += 1
        stats.tokens += len(cut.input_ids)
        stats.trained_tokens += cut.trained_tokens
        kept.append(cut)
    return kept, stats
