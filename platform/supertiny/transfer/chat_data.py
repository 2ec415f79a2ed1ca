"""Conversations as training tokens: rendered with the tokenizer's own chat template and tools, exactly
as the transformers backend renders a prompt (the same message conversion: tool-call arguments as
objects, content never None), with the loss on the assistant turns only.

The assistant spans are found by rendering prefixes: the text of turn ``i`` is what
``render(messages[:i + 1])`` adds to ``render(messages[:i], add_generation_prompt=True)``, so the mask
follows any template without ``{% generation %}`` markers. A span covers the turn's content and tool
calls and its end-of-turn token; the user turns, the tool results and the template's own text stay
masked. A token is trained when it starts inside a span.

With ``spell`` (see :func:`markup_spellings`), trained occurrences of the chat template's non-special added
tokens are trained as the text pieces that spell them: Qwen's template opens each call with the added token
``<tool_call>``, which the 0.5B and 1.5B Qwen models give probability ~0 (they open a ```json block, or write
the tag as ``<`` ``tool`` ``_call`` ``>``). LoRA barely moves that token's tied embedding row, so sft on it
taught the student that no answer opens a call and, on 14 BFCL records of which 6 refusals, to refuse every
request. Spelled, the tag is text the model already writes, and the parser reads the same ``<tool_call>``.
"""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from supertiny.artifacts.chat_template import chat_template_messages
from supertiny.errors import InvalidInputError
from supertiny.schema.tools import tool_dicts

IGNORE_INDEX = -100
Spellings = Mapping[int, Sequence[int]]


@dataclasses.dataclass
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]  # input_ids on the assistant tokens, IGNORE_INDEX elsewhere
    prompt_length: int  # tokens before the last assistant turn: the prompt of on-policy generation
    record: int = 0  # which of the tokenized records this came from

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


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


def render(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None,
           add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(chat_template_messages(messages), tools=tool_dicts(tools),
                                             add_generation_prompt=add_generation_prompt, tokenize=False)
    except InvalidInputError:
        raise
    except Exception as exc:  # jinja2 errors carry the template's own message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(f"the chat template cannot render a training conversation: {first}") from exc


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, Any]],
                    tools: Sequence[Any] | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(tokenizer, messages, tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or index == 0:
            continue
        before = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
        through = render(tokenizer, messages[: index + 1], tools)
        start = _common_prefix(before, through)
        end = len(through.rstrip())
        if end <= start:
            continue
        if full[:end] == through[:end]:
            span = (start, end)
        else:  # the template renders earlier turns differently once later ones follow: find the text
            found = full.find(through[start:end], cursor)
            if found < 0:
                raise InvalidInputError("the chat template renders an assistant turn differently inside the "
                                        "whole conversation; cannot find which tokens to train")
            span = (found, found + end - start)
        spans.append(span)
        cursor = span[1]
    return full, spans


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


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None,
                          max_length: int | None = None, spell: Spellings | None = None) -> TokenizedConversation:
    """Token ids of the rendered conversation and labels that keep only the assistant tokens; trained tokens
    in ``spell`` are replaced by their spelling."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    offsets = list(encoding["offset_mapping"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, _end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = input_ids[position]
    if spell:
        input_ids, labels, offsets = _spelled(input_ids, labels, offsets, spell)
    prompt_length = len(input_ids)
    if spans:
        last_start = spans[-1][0]
        prompt_length = next((position for position, (start, _) in enumerate(offsets) if start >= last_start),
                             len(input_ids))
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        prompt_length = min(prompt_length, len(input_ids))
    return TokenizedConversation(input_ids=input_ids, labels=labels, prompt_length=prompt_length)


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


def _spelled(input_ids: list[int], labels: list[int], offsets: list[tuple[int, int]], spell: Spellings
             ) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Trained tokens in ``spell`` replaced by their pieces (each trained, each at the token's offsets)."""
    ids: list[int] = []
    new_labels: list[int] = []
    new_offsets: list[tuple[int, int]] = []
    for token, label, offset in zip(input_ids, labels, offsets, strict=True):
        pieces = spell.get(token) if label != IGNORE_INDEX else None
        if not pieces:
            ids.append(token)
            new_labels.append(label)
            new_offsets.append(offset)
            continue
        ids.extend(pieces)
        new_labels.extend(pieces)
        new_offsets.extend([offset] * len(pieces))
    return ids, new_labels, new_offsets


def _common_prefix(left: str, right: str) -> int:
    limit = min(len(left), len(right))
    index = 0
    while index < limit and left[index] == right[index]:
        index += 1
    return index
