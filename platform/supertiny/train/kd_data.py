"""What the kd teacher reads beside the student: the same conversation, optionally behind the domain's
system prompt and few-shot turns (context distillation).

The harvested answers were written by the teacher *with* the domain's prompt, while the student is
trained and served on the bare conversation. Distilling from the teacher's logits on the bare
conversation teaches the student a distribution the teacher never produced the data with. With
``teacher_context`` the teacher reads prompt + conversation and its logits on the assistant tokens are
paired, token by token, with the student's on the bare conversation. (The context was not what made
plain kd collapse the student on BFCL: the chat template's ``<tool_call>`` token was, see
:func:`supertiny.train.kd_loss.corrected_loss`.)
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from supertiny.artifacts.conversation import IGNORE_INDEX, Spellings, tokenize_conversation
from supertiny.train.chat_data import TokenizeStats, tokenize_records
from supertiny.train.sft_trainer import Record


@dataclasses.dataclass
class DistillationStats(TokenizeStats):
    teacher_context: int = 0  # examples whose teacher reads the domain's context
    # the assistant tokens differ once behind the context: the teacher reads the bare conversation
    context_mismatch: int = 0


def distillation_examples(tokenizer: Any, records: Sequence[Record], max_length: int,
                          context: Callable[[Sequence[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                          spell: Spellings | None = None, whole: bool = False
                          ) -> tuple[list[dict[str, Any]], DistillationStats]:
    """One row per trainable record: the student's ``input_ids``, ``labels``, ``prompt_length`` and the
    teacher's ``teacher_input_ids``, ``teacher_labels``, ``teacher_prompt_length``; the trained positions
    of the two carry the same tokens in the same order. ``context(messages)`` gives the messages the
    teacher reads before a conversation (None: the teacher reads what the student reads); ``spell`` as in
    :func:`supertiny.artifacts.conversation.tokenize_conversation`, for both. ``whole``: every token after the
    first is trained, prompt included (both read the same tokens; ``context`` must be None)."""
    if whole and context is not None:
        raise ValueError("distilling whole conversations needs the teacher to read what the student reads")
    examples, base_stats = tokenize_records(tokenizer, records, max_length, spell)
    stats = DistillationStats(**dataclasses.asdict(base_stats))
    if whole:
        stats.trained_tokens = sum(len(example.input_ids) - 1 for example in examples)
    rows = []
    for example in examples:
        if whole:
            example = dataclasses.replace(example, labels=[IGNORE_INDEX, *example.input_ids[1:]])
        row = {"input_ids": example.input_ids, "labels": example.labels, "prompt_length": example.prompt_length,
               "teacher_input_ids": example.input_ids, "teacher_labels": example.labels,
               "teacher_prompt_length": example.prompt_length}
        messages, tools = records[example.record]
        prefix = context(messages) if context is not None else []
        if prefix:
            aligned = _behind_context(tokenizer, prefix, messages, tools, example.labels, spell)
            if aligned is None:
                stats.context_mismatch += 1
            else:
                stats.teacher_context += 1
                row.update(aligned)
        rows.append(row)
    return rows, stats


def _behind_context(tokenizer: Any, context: Sequence[dict[str, Any]], messages: Sequence[dict[str, Any]],
                    tools: Sequence[Any] | None, student_labels: list[int], spell: Spellings | None = None
                    ) -> dict[str, Any] | None:
    """The teacher's tokens for context + ``messages``, trained on the positions of the student's
    trained tokens; None when those tokens do not line up."""
    whole = tokenize_conversation(tokenizer, list(context) + list(messages), tools, spell=spell)
    # before the student's max_length cut
    own = tokenize_conversation(tokenizer, messages, tools, spell=spell).trained_tokens
    wanted = [label for label in student_labels if label != IGNORE_INDEX]
    trained = [position for position, label in enumerate(whole.labels) if label != IGNORE_INDEX]
    # the context's few-shot answers are trained positions too: the conversation's own come last
    positions = trained[len(trained) - own:][: len(wanted)]
    ids = whole.input_ids
    if len(trained) < own or [ids[position] for position in positions] != wanted:
        return None
    end = positions[-1] + 1
    labels = [IGNORE_INDEX] * end
    for position in positions:
        labels[position] = ids[position]
    return {"teacher_input_ids": ids[:end], "teacher_labels": labels,
            "teacher_prompt_length": min(whole.prompt_length, end)}
