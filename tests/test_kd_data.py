"""Context distillation's tokens: the teacher reads the domain's prompt and few-shot turns before the
conversation, the student reads it bare, and their trained positions carry the same tokens."""

import json

import pytest
from helpers.toy_domain import WEATHER_TOOL
from supertiny.artifacts.conversation import IGNORE_INDEX
from supertiny.train.kd_data import distillation_examples
from transformers import AutoTokenizer


def _call(name, **arguments):
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo in celsius?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Oslo", unit="celsius")]},
]
CONTEXT = [
    {"role": "system", "content": "Always call a tool."},
    {"role": "user", "content": "Weather in Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Rome")]},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _trained(ids, labels):
    return [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]


def test_the_teacher_reads_the_context_and_trains_the_same_tokens_as_the_student(tokenizer):
    rows, stats = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024, lambda _: CONTEXT)
    (row,) = rows
    assert (stats.kept, stats.teacher_context, stats.context_mismatch) == (1, 1, 0)
    student = _trained(row["input_ids"], row["labels"])
    teacher = _trained(row["teacher_input_ids"], row["teacher_labels"])
    assert teacher == student and "Oslo" in tokenizer.decode(teacher)
    teacher_text = tokenizer.decode(row["teacher_input_ids"])
    assert "Always call a tool." in teacher_text and "Rome" in teacher_text  # the few-shot turn is read ...
    assert "Rome" not in tokenizer.decode(teacher)  # ... but not trained
    assert "Always call a tool." not in tokenizer.decode(row["input_ids"])
    # the last assistant turn starts at each side's prompt length (on-policy sampling starts there)
    assert row["teacher_input_ids"][row["teacher_prompt_length"]:] == teacher
    assert row["input_ids"][row["prompt_length"]:][: len(student)] == student


def test_a_cut_student_trains_the_first_tokens_on_both_sides(tokenizer):
    (whole,), _ = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024)
    cut_at = len(whole["input_ids"]) - 4
    (row,), stats = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], cut_at, lambda _: CONTEXT)
    assert stats.truncated == 1
    assert _trained(row["teacher_input_ids"], row["teacher_labels"]) == _trained(row["input_ids"], row["labels"])
    assert row["teacher_labels"][-1] != IGNORE_INDEX  # the teacher's tokens end with the last one trained


def test_without_context_the_teacher_reads_the_students_tokens(tokenizer):
    rows, stats = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024)
    assert rows[0]["teacher_input_ids"] == rows[0]["input_ids"] and stats.teacher_context == 0
    rows, stats = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024, lambda _: [])
    assert rows[0]["teacher_labels"] == rows[0]["labels"] and stats.teacher_context == 0


def test_whole_conversations_train_every_token_after_the_first_on_both_sides(tokenizer):
    (answers,), _ = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024)
    (row,), stats = distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024, whole=True)
    assert row["input_ids"] == answers["input_ids"] == row["teacher_input_ids"]
    assert row["labels"] == row["teacher_labels"] == [IGNORE_INDEX, *row["input_ids"][1:]]
    assert stats.trained_tokens == len(row["input_ids"]) - 1 > len(_trained(answers["input_ids"], answers["labels"]))
    with pytest.raises(ValueError, match="teacher to read what the student reads"):
        distillation_examples(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 1024, lambda _: CONTEXT, whole=True)
