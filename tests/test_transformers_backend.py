"""The transformers backend on the tiny in-process Qwen2 model."""

import json
import math

import pytest
from helpers.chat_inputs import GREEDY, QUESTION, WEATHER_TOOL
from supertiny.errors import BackendTimeoutError, ContextLengthError, InvalidInputError, ModelError
from supertiny.models.backend import Generation, GenerationOptions
from supertiny.registry import get_backends


def force_answer(monkeypatch, chat, text: str) -> list[int]:
    """Make ``chat.model.generate`` write ``text`` then end the turn, through the real generation loop
    (a logits processor masks every other token; the log-probabilities stay the model's own)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    target = [*chat.tokenizer(text, add_special_tokens=False)["input_ids"],
              chat.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    original = chat.model.generate

    class ForceTokens(LogitsProcessor):
        def __init__(self, prompt_width: int):
            self.prompt_width = prompt_width

        def __call__(self, input_ids, scores):
            step = min(input_ids.shape[1] - self.prompt_width, len(target) - 1)
            forced = torch.full_like(scores, -math.inf)
            forced[:, target[step]] = 0.0
            return forced

    def generate(*args, **kwargs):
        kwargs["logits_processor"] = LogitsProcessorList([ForceTokens(kwargs["input_ids"].shape[1])])
        return original(*args, **kwargs)

    monkeypatch.setattr(chat.model, "generate", generate)
    return target


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1})


def test_builtin_plugin_registers_the_three_backends():
    assert {"transformers", "openai", "vllm"} <= set(get_backends())


def test_generate_with_tools_renders_them_into_the_prompt(chat):
    prompt = chat.render_prompt(QUESTION, [WEATHER_TOOL])
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")

    generation = chat.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    assert generation.prompt_tokens == len(chat.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= generation.completion_tokens <= 16
    assert generation.message.role == "assistant" and generation.latency_s > 0
    assert generation.finish_reason in ("stop", "length", "tool_calls")
    assert chat.model is not None and chat.tokenizer is not None and chat.name == "tiny-student"


def test_greedy_generation_is_deterministic(chat):
    first = chat.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    second = chat.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    assert first.token_ids == second.token_ids and first.text == second.text


def test_sampling_with_a_seed_is_reproducible(chat):
    options = GenerationOptions(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=11)
    first = chat.generate(QUESTION, None, options)
    second = chat.generate(QUESTION, None, options)
    other_seed = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=16, temperature=1.0, seed=12))
    assert first.token_ids == second.token_ids
    assert other_seed.token_ids != first.token_ids


def test_batch_equals_single_greedy_results(chat):
    conversations = [
        (QUESTION, [WEATHER_TOOL]),
        ([{"role": "user", "content": "hi"}], None),
        ([{"role": "system", "content": "Answer in French."}, *QUESTION], [WEATHER_TOOL]),
    ]
    batch = chat.generate_batch(conversations, GREEDY)
    single = [chat.generate(messages, tools, GREEDY) for messages, tools in conversations]
    assert [g.token_ids for g in batch] == [g.token_ids for g in single]
    assert [g.text for g in batch] == [g.text for g in single]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in single]
    for b, s in zip(batch, single, strict=True):
        assert b.token_logprobs == pytest.approx(s.token_logprobs, abs=1e-4)


def test_token_logprobs_are_the_models_own_log_probabilities(chat):
    import torch

    options = GenerationOptions(max_new_tokens=12, temperature=1.5, seed=3)  # tempered sampling
    generation = chat.generate(QUESTION, [WEATHER_TOOL], options)
    assert len(generation.token_logprobs) == generation.completion_tokens == len(generation.token_ids)
    assert all(value <= 0 for value in generation.token_logprobs)

    prompt_ids = chat.tokenizer(chat.render_prompt(QUESTION, [WEATHER_TOOL]), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + generation.token_ids])
    with torch.inference_mode():
        logits = chat.model(ids).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(log_probs.exp().sum(dim=-1), torch.ones(len(ids[0])), atol=1e-5)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(generation.token_ids))
    manual = [log_probs[position, token].item() for position, token in zip(positions, generation.token_ids,
                                                                              strict=True)]
    assert generation.token_logprobs == pytest.approx(manual, abs=1e-4)
    assert 0 < generation.confidence <= 1


def test_max_tokens_gives_finish_reason_length(chat, monkeypatch):
    force_answer(monkeypatch, chat, "a long answer that goes on and on and on")
    generation = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=3))
    assert generation.finish_reason == "length" and generation.completion_tokens == 3


def test_streaming_deltas_join_to_the_final_text(chat):
    parts = list(chat.stream(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=24)))
    *deltas, generation = parts
    assert isinstance(generation, Generation) and all(isinstance(delta, str) and delta for delta in deltas)
    assert "".join(deltas) == generation.text
    assert generation.text == chat.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=24)).text


def test_forced_tool_call_becomes_openai_tool_calls(chat, monkeypatch):
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    target = force_answer(monkeypatch, chat, answer)
    generation = chat.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=64))

    assert generation.text == answer
    assert generation.token_ids == target  # the end-of-turn token is counted, not written
    assert generation.finish_reason == "tool_calls"
    assert generation.message.content is None
    [call] = generation.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert generation.parse.format == "tool_call_tags"
    assert all(value <= 0 for value in generation.token_logprobs)

    *deltas, streamed = list(chat.stream(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=64)))
    assert "".join(deltas) == answer and streamed.message.tool_calls[0].function.name == "get_weather"


def test_calls_are_not_parsed_when_no_tools_were_offered(chat, monkeypatch):
    force_answer(monkeypatch, chat, '{"name": "get_weather", "arguments": {}}')
    generation = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=64))
    assert generation.message.tool_calls is None and generation.finish_reason == "stop"
    assert generation.message.content == '{"name": "get_weather", "arguments": {}}'


def test_stop_strings_cut_the_answer_and_the_stream_alike(chat, monkeypatch):
    force_answer(monkeypatch, chat, "It is sunny. STOP and more words")
    options = GenerationOptions(max_new_tokens=64, stop=[" STOP"])
    assert chat.generate(QUESTION, None, options).text == "It is sunny."
    *deltas, generation = list(chat.stream(QUESTION, None, options))
    assert "".join(deltas) == generation.text == "It is sunny."


def test_timeout_raises_backend_timeout(chat):
    with pytest.raises(BackendTimeoutError, match="time limit"):
        chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=16, timeout_s=0.0))
    with pytest.raises(BackendTimeoutError, match="time limit"):
        list(chat.stream(QUESTION, None, GenerationOptions(max_new_tokens=16, timeout_s=0.0)))


def test_a_prompt_that_does_not_fit_the_context_is_refused_before_any_work(chat):
    assert chat.context_length == 2048
    long_question = [{"role": "user", "content": "weather " * 2100}]
    with pytest.raises(ContextLengthError, match="maximum context length is 2048 tokens") as refused:
        chat.generate(long_question, None, GenerationOptions(max_new_tokens=4))
    assert refused.value.code == "context_length_exceeded" and refused.value.http_status == 400
    prompt_tokens = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=1)).prompt_tokens
    with pytest.raises(ContextLengthError):  # the answer's budget counts too
        chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=2049 - prompt_tokens))
    for call in (lambda: list(chat.stream(long_question, None, GenerationOptions(max_new_tokens=4))),
                 lambda: chat.generate_samples(long_question, None, GenerationOptions(max_new_tokens=4), n=2),
                 lambda: chat.generate_batch([(long_question, None)], GenerationOptions(max_new_tokens=4))):
        with pytest.raises(ContextLengthError):
            call()


def test_a_time_limit_stops_the_prefill_itself(tiny_model_dir, monkeypatch):
    import time

    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1})
    layers = chat.model.model.layers
    slow_layer = layers[0].forward

    def slow(*args, **kwargs):  # every layer call of the prefill takes 0.5 s
        time.sleep(0.5)
        return slow_layer(*args, **kwargs)

    monkeypatch.setattr(layers[0], "forward", slow)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="time limit"):
        chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=64, timeout_s=0.2))
    # the hook before the second layer ended the first forward pass: one slow layer call, not 64
    assert time.monotonic() - started < 2.0
    monkeypatch.undo()
    assert chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=3)).completion_tokens <= 3
    chat.close()


def test_each_request_of_a_batch_stops_at_its_own_deadline(tiny_model_dir):
    import concurrent.futures

    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1, "batch_window_ms": 200})
    budgets = {0.0: 2000, None: 8}  # an already-expired request rides with one that has no limit

    def ask(timeout_s):
        return chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=budgets[timeout_s],
                                                               timeout_s=timeout_s))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        expired, unlimited = pool.submit(ask, 0.0), pool.submit(ask, None)
        with pytest.raises(BackendTimeoutError):
            expired.result()
        assert unlimited.result().completion_tokens <= 8
    chat.close()


def test_long_prompts_are_not_batched_with_short_ones():
    from supertiny.models.batching import BatchRequest

    options = GenerationOptions()
    short, other_short = BatchRequest("a" * 100, None, options), BatchRequest("b" * 1500, None, options)
    long = BatchRequest("c" * 40_000, None, options)
    assert short.group == other_short.group != long.group


def test_assistant_tool_calls_and_tool_results_render_in_the_prompt(chat):
    conversation = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    ]
    prompt = chat.render_prompt(conversation, [WEATHER_TOOL])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt


def test_bad_locations_and_options_are_clear_errors(tmp_path, tiny_model_dir):
    backend = get_backends()["transformers"]
    with pytest.raises(ModelError, match="no model directory"):
        backend.open(str(tmp_path / "missing"), {})
    with pytest.raises(ModelError, match="not a Hugging Face model directory"):
        backend.open(str(tmp_path), {})
    with pytest.raises(InvalidInputError, match="unknown transformers backend option"):
        backend.open(str(tiny_model_dir), {"dtyp": "float32"})
    with pytest.raises(InvalidInputError, match="unknown dtype"):
        backend.open(str(tiny_model_dir), {"dtype": "int3"})


def test_bfloat16_dtype_is_honoured(tiny_model_dir):
    import torch

    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"dtype": "bfloat16"})
    assert chat.model.dtype == torch.bfloat16
    generation = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=4))
    assert all(value <= 0 for value in generation.token_logprobs)


def test_concurrent_requests_share_a_forward_pass_and_get_their_own_answers(tiny_model_dir):
    import concurrent.futures

    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1, "batch_window_ms": 50})
    assert chat.capabilities.batching and chat.capabilities.max_concurrency == 8 and chat.capabilities.local
    conversations = [(QUESTION, [WEATHER_TOOL]), ([{"role": "user", "content": "hi"}], None),
                     ([{"role": "system", "content": "Answer in French."}, *QUESTION], [WEATHER_TOOL])] * 2
    budgets = [16, 5, 9, 16, 5, 9]
    alone = [chat.generate(messages, tools, GenerationOptions(max_new_tokens=budget))
             for (messages, tools), budget in zip(conversations, budgets, strict=True)]
    batches_before = chat.batcher.batches
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda item: chat.generate(item[0][0], item[0][1],
                                                            GenerationOptions(max_new_tokens=item[1])),
                                 zip(conversations, budgets, strict=True)))
    assert chat.batcher.batches - batches_before < len(conversations)  # some requests shared a batch
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]  # each its own answer and budget
    assert all(g.completion_tokens <= budget for g, budget in zip(together, budgets, strict=True))
    chat.close()


def test_samples_of_one_prompt_come_from_one_batch_and_differ(chat):
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, seed=5)
    samples = chat.generate_samples(QUESTION, [WEATHER_TOOL], options, n=4)
    assert len(samples) == 4 and len({tuple(sample.token_ids) for sample in samples}) > 1
    again = chat.generate_samples(QUESTION, [WEATHER_TOOL], options, n=4)
    assert [sample.token_ids for sample in again] == [sample.token_ids for sample in samples]
    with pytest.raises(InvalidInputError):
        chat.generate_samples(QUESTION, None, options, n=0)


def test_without_dynamic_batching_the_model_says_one_request_at_a_time(tiny_model_dir):
    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"dynamic_batching": False})
    assert not chat.capabilities.batching and chat.capabilities.max_concurrency == 1 and chat.batcher is None
    assert chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=3)).completion_tokens <= 3


def test_a_long_prompt_is_prefilled_in_chunks_between_other_requests(tiny_model_dir, monkeypatch):
    import concurrent.futures
    import time

    long_question = [{"role": "user", "content": "weather in Paris " * 350}]  # ~1,400 tokens: three chunks
    options = GenerationOptions(max_new_tokens=8)
    plain = get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1, "dynamic_batching": False})
    expected = plain.generate(long_question, None, options)
    chat = get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1, "long_prompt_tokens": 600})
    assert chat.generate(long_question, None, options).token_ids == expected.token_ids  # the same greedy answer

    layer = chat.model.model.layers[0]
    forward = layer.forward

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    monkeypatch.setattr(layer, "forward", slow)
    finished = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        def ask(name, messages, budget):
            chat.generate(messages, None, GenerationOptions(max_new_tokens=budget))
            finished[name] = time.monotonic()

        long = pool.submit(ask, "long", long_question, 24)
        time.sleep(0.02)
        short = pool.submit(ask, "short", QUESTION, 2)
        long.result(), short.result()
    assert finished["short"] < finished["long"]  # answered between the long prompt's chunks, not after them
    with pytest.raises(BackendTimeoutError, match="time limit"):
        chat.generate(long_question, None, GenerationOptions(max_new_tokens=4, timeout_s=0.01))
    chat.close()
