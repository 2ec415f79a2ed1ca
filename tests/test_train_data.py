"""Training tokens: the loss mask keeps the assistant turns (tool calls, answers, end-of-turn tokens)
and nothing else, checked by decoding what it keeps."""

import json

import pytest
from helpers.toy_domain import WEATHER_TOOL
from supertiny.artifacts.chat_template import chat_template_messages
from supertiny.artifacts.conversation import IGNORE_INDEX, assistant_spans, tokenize_conversation
from supertiny.errors import InvalidInputError
from supertiny.train.chat_data import markup_spellings, tokenize_records
from transformers import AutoTokenizer

BFCL_TOOL = {"name": "calc.area", "description": "Area of a triangle.",
             "parameters": {"type": "dict", "properties": {"base": {"type": "float"}}, "required": ["base"]}}


def _call(name, **arguments):
    return {"id": f"call_{name}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo in celsius?"},
    {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Oslo", unit="celsius")]},
    {"role": "tool", "tool_call_id": "call_get_weather", "content": '{"temperature": 3}'},
    {"role": "assistant", "content": "It is 3 degrees in Oslo."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _segments(tokenizer, tokenized):
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_only_the_assistant_turns_are_trained(tokenizer):
    tokenized = tokenize_conversation(tokenizer, CONVERSATION, [WEATHER_TOOL])
    assert _segments(tokenizer, tokenized) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
        "<|im_end|>",
        "It is 3 degrees in Oslo.<|im_end|>",
    ]
    whole = tokenizer.decode(tokenized.input_ids)
    assert whole == tokenizer.apply_chat_template(chat_template_messages(CONVERSATION), tools=[WEATHER_TOOL],
                                                  tokenize=False)
    assert '{"temperature": 3}' in whole and "<tools>" in whole  # present, but masked


def test_the_prompt_length_ends_where_the_last_assistant_turn_starts(tokenizer):
    tokenized = tokenize_conversation(tokenizer, CONVERSATION, [WEATHER_TOOL])
    prompt = tokenizer.decode(tokenized.input_ids[: tokenized.prompt_length])
    assert prompt == tokenizer.apply_chat_template(chat_template_messages(CONVERSATION[:3]), tools=[WEATHER_TOOL],
                                                   tokenize=False, add_generation_prompt=True)


def test_bfcl_style_tools_and_argument_objects_render_like_the_backend(tokenizer):
    messages = [{"role": "user", "content": "Area of a triangle with base 3?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c", "type": "function", "function": {"name": "calc.area",
                                                                              "arguments": {"base": 3.0}}}]}]
    text, spans = assistant_spans(tokenizer, messages, [BFCL_TOOL])
    assert '"name": "calc.area"' in text and '"type": "dict"' in text
    assert [text[start:end] for start, end in spans] == [
        '<tool_call>\n{"name": "calc.area", "arguments": {"base": 3.0}}\n</tool_call><|im_end|>']


@pytest.fixture(scope="module")
def qwen_like_tokenizer(tiny_model_dir):
    """The tiny tokenizer with the tool-call tags as Qwen's tokenizer has them: added, but not special."""
    from supertiny.testing import build_tiny_tokenizer
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tiny = build_tiny_tokenizer()
    data = json.loads(tiny.backend_tokenizer.to_str())
    tags = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"}
    for token in data["added_tokens"]:
        token["special"] = token["content"] not in tags
    qwen_like = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    qwen_like.chat_template = tiny.chat_template
    return qwen_like


def test_the_non_special_added_tokens_are_spelled_as_text(qwen_like_tokenizer):
    tokenizer = qwen_like_tokenizer
    spellings = markup_spellings(tokenizer)
    tag = tokenizer.convert_tokens_to_ids("<tool_call>")
    assert set(spellings) == set(tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>", "<tool_response>",
                                                                  "</tool_response>"]))
    assert tokenizer.decode(spellings[tag]) == "<tool_call>" and len(spellings[tag]) > 1
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in spellings


def test_spelled_tool_calls_train_the_pieces_and_keep_the_text(qwen_like_tokenizer):
    tokenizer = qwen_like_tokenizer
    spell = markup_spellings(tokenizer)
    tag = tokenizer.convert_tokens_to_ids("<tool_call>")
    plain = tokenize_conversation(tokenizer, CONVERSATION, [WEATHER_TOOL])
    spelled = tokenize_conversation(tokenizer, CONVERSATION, [WEATHER_TOOL], spell=spell)
    assert tag in plain.labels and tag not in spelled.labels
    assert spelled.input_ids.count(tag) == plain.input_ids.count(tag) - 1  # the system prompt's stays
    assert tokenizer.decode(spelled.input_ids) == tokenizer.decode(plain.input_ids)
    assert _segments(tokenizer, spelled) == _segments(tokenizer, plain)
    assert len(spelled.input_ids) == len(plain.input_ids) + 2 * (len(spell[tag]) - 1)  # both tags, 4 pieces each
    assert spelled.prompt_length == plain.prompt_length + 2 * (len(spell[tag]) - 1)  # the first turn's tags
    earlier_turn = [*CONVERSATION, {"role": "user", "content": "And in Lima?"},
                    {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", city="Lima")]}]
    only_last = tokenize_conversation(tokenizer, earlier_turn, [WEATHER_TOOL], spell=spell)
    assert tag not in [label for label in only_last.labels if label != IGNORE_INDEX]
    kept, _ = tokenize_records(tokenizer, [(CONVERSATION, [WEATHER_TOOL])], 4096, spell)
    assert kept[0].input_ids == spelled.input_ids


def test_records_without_trainable_tokens_are_counted_and_dropped(tokenizer):
    only_user = [{"role": "user", "content": "hello"}]
    records = [(CONVERSATION, [WEATHER_TOOL]), (only_user, None), (CONVERSATION, [WEATHER_TOOL])]
    full_length = len(tokenize_conversation(tokenizer, CONVERSATION, [WEATHER_TOOL]).input_ids)
    kept, stats = tokenize_records(tokenizer, records, max_length=full_length - 3)
    assert (stats.conversations, stats.kept, stats.no_assistant_turn, stats.truncated) == (3, 2, 1, 2)
    assert all(len(example.input_ids) == full_length - 3 for example in kept)
    kept, stats = tokenize_records(tokenizer, records, max_length=20)  # the prompt alone is longer
    assert kept == [] and stats.too_long == 2


def test_a_template_that_cannot_render_is_a_clear_error(tokenizer):
    with pytest.raises(InvalidInputError, match="chat template"):
        tokenize_conversation(tokenizer, [], None)


def test_tool_call_arguments_are_rendered_as_objects_not_escaped_strings(tokenizer):
    text, spans = assistant_spans(tokenizer, CONVERSATION, [WEATHER_TOOL])
    first = text[spans[0][0]:spans[0][1]]
    assert '"arguments": {"city": "Oslo", "unit": "celsius"}' in first and '\\"' not in first


def test_the_text_around_tool_calls_is_left_out_unless_asked_for(tokenizer):
    from types import SimpleNamespace

    from supertiny.train.sft_trainer import training_records

    narrated = [CONVERSATION[0], {**CONVERSATION[1], "content": "To get the weather I will call get_weather."},
                *CONVERSATION[2:]]
    item = SimpleNamespace(messages=narrated, tools=[WEATHER_TOOL], verdict="pass")
    (messages, _), = training_records([item])
    assert messages[1]["content"] == "" and messages[1]["tool_calls"] == narrated[1]["tool_calls"]
    assert messages[3]["content"] == "It is 3 degrees in Oslo."  # a plain answer keeps its text
    trained = tokenize_conversation(tokenizer, messages, [WEATHER_TOOL])
    kept = tokenizer.decode([token for token, label in zip(trained.input_ids, trained.labels, strict=True)
                             if label != IGNORE_INDEX])
    assert "I will call" not in kept and "get_weather" in kept
    (messages, _), = training_records([item], call_prose=True)
    assert messages[1]["content"] == narrated[1]["content"]
    assert narrated[1]["content"]  # the stored record is never modified


def test_balanced_categories_repeat_the_rarer_ones_up_to_the_largest():
    from supertiny.store import DatasetItem
    from supertiny.train.sft_trainer import balanced, training_records

    def item(category, index, verdict="pass"):
        return DatasetItem(category=category, verdict=verdict, tools=[],
                           messages=[{"role": "user", "content": f"{category} {index}"}])

    items = [item("irrelevance", i) for i in range(4)] + [item("parallel", 0)] + [item("simple", i) for i in range(2)]
    out = balanced(items)
    assert len(out) == 12
    assert [entry.category for entry in out[:3]] == ["irrelevance", "parallel", "simple"]
    assert {category: sum(entry.category == category for entry in out) for category in ("irrelevance", "parallel",
                                                                                         "simple")} == \
        {"irrelevance": 4, "parallel": 4, "simple": 4}
    assert [entry.messages[0]["content"] for entry in out if entry.category == "simple"] == [
        "simple 0", "simple 1", "simple 0", "simple 1"]
    # failed records are left out before balancing; one category is left as it is
    assert len(training_records([*items, item("parallel", 9, verdict="fail")], balance=True)) == 12
    assert balanced(items[:4]) == items[:4]
