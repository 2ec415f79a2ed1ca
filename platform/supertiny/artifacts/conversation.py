"""Conversations as tokens: rendered with the tokenizer's own chat template and tools, exactly as the backends
render a prompt (:func:`supertiny.artifacts.chat_template.chat_template_messages`: tool-call arguments as
objects, content never None), with labels on the assistant turns only. Trainers learn from these tokens and
compressors calibrate on them.

The assistant spans are found by rendering prefixes: the text of turn ``i`` is what
``render(messages[:i + 1])`` adds to ``render(messages[:i], add_generation_prompt=True)``, so the mask
follows any template without ``{% generation %}`` markers. A span covers the turn's content and tool
calls and its end-of-turn token; the user turns, the tool results and the template's own text stay
masked. A token is trained when it starts inside a span.

With ``spell`` (token id -> the ids of the pieces that spell it), each trained occurrence of such a token is
replaced by its pieces, each of them trained.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from supertiny.artifacts.chat_template import chat_template_messages
from supertiny.artifacts.hf import first_line
from supertiny.errors import InvalidInputError
from supertiny.schema.tools import tool_dicts

IGNORE_INDEX = -100  # the label of a position that is not trained
Spellings = Mapping[int, Sequence[int]]  # a token id -> the ids of the pieces that spell it


@dataclasses.dataclass
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]  # input_ids on the assistant tokens, IGNORE_INDEX elsewhere
    prompt_length: int  # tokens before the last assistant turn: the prompt of on-policy generation
    record: int = 0  # which of the tokenized records this came from

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render_conversation(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None,
                        add_generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it (with an opened assistant turn after it when
    ``add_generation_prompt``); an InvalidInputError when the template cannot render it."""
    try:
        return tokenizer.apply_chat_template(chat_template_messages(messages), tools=tool_dicts(tools),
                                             add_generation_prompt=add_generation_prompt, tokenize=False)
    except InvalidInputError:
        raise
    except Exception as exc:  # jinja2 errors carry the template's own message
        raise InvalidInputError(f"the chat template cannot render a training conversation: {first_line(exc)}") \
            from exc


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, Any]],
                    tools: Sequence[Any] | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render_conversation(tokenizer, messages, tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or index == 0:
            continue
        before = render_conversation(tokenizer, messages[:index], tools, add_generation_prompt=True)
        through = render_conversation(tokenizer, messages[: index + 1], tools)
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
