"""The llama-cpp backend on tiny GGUF exports: the same prompt tokens, greedy tokens and log-probabilities as
the transformers backend on the source model (f32 exactly, q8_0 closely, q4_0 near), tool calls parsed by the shared
parser, streaming, stops, budgets, the KV-cache reuse between calls, the registry path from
``compress gguf`` to ``open_model``, and one clear error for a missing package or a missing file."""

import builtins
import json
import math
import shutil

import numpy as np
import pytest
from helpers.chat_inputs import GREEDY, QUESTION, WEATHER_TOOL
from supertiny.compress.gguf_export import copy_companion_files, export_gguf
from supertiny.config import Settings
from supertiny.errors import BackendTimeoutError, ContextLengthError, InvalidInputError, ModelError
from supertiny.models.backend import Generation, GenerationOptions
from supertiny.models.llamacpp_backend import LlamaCppChatModel
from supertiny.models.versions import register_external
from supertiny.registry import get_backends
from supertiny.runtime.loading import close_models, open_model


def _export(model_dir, directory, out_type):
    copy_companion_files(model_dir, directory)
    return export_gguf(model_dir, directory / f"tiny-{out_type}.gguf", out_type).path


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {out_type: _export(tiny_model_dir, root / out_type, out_type) for out_type in ("f32", "q8_0", "q4_0")}


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1, "dtype": "float32"})


@pytest.fixture(scope="module")
def chat(exports):
    pytest.importorskip("llama_cpp")
    model = get_backends()["llama-cpp"].open(str(exports["f32"]), {"threads": 1, "n_ctx": 1024})
    yield model
    model.close()


@pytest.fixture(scope="module")
def chat_q8(exports):
    pytest.importorskip("llama_cpp")
    model = get_backends()["llama-cpp"].open(str(exports["q8_0"].parent), {"threads": 1, "n_ctx": 1024})
    yield model
    model.close()


def force_answer(monkeypatch, chat, text: str) -> list[int]:
    """Make the decoding loop write ``text`` then end the turn: every other token's logit is masked."""
    target = [*chat.tokenizer(text, add_special_tokens=False)["input_ids"],
              chat.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prefill, last_logits = chat._prefill, chat._last_logits
    step = {"n": 0}

    def prefill_and_restart(prompt_ids):
        step["n"] = 0
        prefill(prompt_ids)

    def forced_logits():
        logits = np.full_like(last_logits(), -math.inf)
        logits[target[min(step["n"], len(target) - 1)]] = 0.0
        step["n"] += 1
        return logits

    monkeypatch.setattr(chat, "_prefill", prefill_and_restart)
    monkeypatch.setattr(chat, "_last_logits", forced_logits)
    return target


def test_the_builtin_plugin_registers_the_backend():
    assert "llama-cpp" in get_backends()


def test_f32_greedy_answers_match_the_transformers_backend(chat, reference):
    for tools in (None, [WEATHER_TOOL]):
        mine, theirs = chat.generate(QUESTION, tools, GREEDY), reference.generate(QUESTION, tools, GREEDY)
        assert chat.render_prompt(QUESTION, tools) == reference.render_prompt(QUESTION, tools)
        assert mine.prompt_tokens == theirs.prompt_tokens
        assert mine.token_ids[:8] == theirs.token_ids[:8]
        assert mine.token_ids == theirs.token_ids and mine.text == theirs.text
        assert mine.finish_reason == theirs.finish_reason and mine.parse == theirs.parse
        np.testing.assert_allclose(mine.token_logprobs, theirs.token_logprobs, atol=1e-3)
        assert mine.completion_tokens == len(mine.token_ids) and mine.latency_s > 0


def _last_logits_against_the_source(chat, reference):
    """The GGUF model's and the transformers model's next-token logits after the same prompt."""
    import torch

    prompt = reference.tokenizer(reference.render_prompt(QUESTION, [WEATHER_TOOL]), add_special_tokens=False)
    ids = prompt["input_ids"]
    with torch.no_grad():
        expected = reference.model(torch.tensor([ids])).logits[0, -1].numpy()
    chat._prefill(ids)
    return np.array(chat._last_logits())[: expected.shape[0]], expected


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_q8_0_logits_stay_close_to_the_source_model(chat_q8, reference):
    logits, expected = _last_logits_against_the_source(chat_q8, reference)
    assert _cosine(logits, expected) > 0.999 and int(logits.argmax()) == int(expected.argmax())
    mine, theirs = chat_q8.generate(QUESTION, [WEATHER_TOOL], GREEDY), reference.generate(QUESTION, [WEATHER_TOOL],
                                                                                            GREEDY)
    assert mine.token_ids[0] == theirs.token_ids[0]
    assert abs(mine.token_logprobs[0] - theirs.token_logprobs[0]) < 0.05


def test_a_q4_0_export_loads_and_its_logits_stay_near_the_source_model(exports, reference):
    pytest.importorskip("llama_cpp")
    chat_q4 = get_backends()["llama-cpp"].open(str(exports["q4_0"]), {"threads": 1, "n_ctx": 1024})
    try:
        logits, expected = _last_logits_against_the_source(chat_q4, reference)
        assert _cosine(logits, expected) > 0.98
        generation = chat_q4.generate(QUESTION, [WEATHER_TOOL], GREEDY)
        assert generation.completion_tokens > 0 and generation.prompt_tokens > 0
    finally:
        chat_q4.close()
    assert exports["q4_0"].stat().st_size < exports["q8_0"].stat().st_size


def test_a_cached_prefix_gives_the_same_answers(chat):
    first = chat.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    other = [{"role": "user", "content": "And in Oslo, in fahrenheit?"}]
    chat.generate(other, [WEATHER_TOOL], GREEDY)  # shares the system prompt and tools, then diverges
    again = chat.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    assert again.token_ids == first.token_ids and again.token_logprobs == pytest.approx(first.token_logprobs)


def test_sampling_with_a_seed_is_reproducible(chat):
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    first, second = chat.generate(QUESTION, None, options), chat.generate(QUESTION, None, options)
    assert first.token_ids == second.token_ids
    assert all(value <= 0 for value in first.token_logprobs)


def test_streaming_deltas_join_to_the_final_text(chat):
    *deltas, generation = list(chat.stream(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=24)))
    assert isinstance(generation, Generation) and all(isinstance(delta, str) and delta for delta in deltas)
    assert "".join(deltas) == generation.text
    assert generation.text == chat.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=24)).text


def test_forced_tool_call_becomes_openai_tool_calls(chat, monkeypatch):
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    target = force_answer(monkeypatch, chat, answer)
    generation = chat.generate(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=64))
    assert generation.text == answer and generation.token_ids == target
    assert generation.finish_reason == "tool_calls" and generation.message.content is None
    [call] = generation.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    *deltas, streamed = list(chat.stream(QUESTION, [WEATHER_TOOL], GenerationOptions(max_new_tokens=64)))
    assert "".join(deltas) == answer and streamed.message.tool_calls[0].function.name == "get_weather"


def test_stop_strings_and_the_token_budget(chat, monkeypatch):
    force_answer(monkeypatch, chat, "It is sunny. STOP and more words")
    options = GenerationOptions(max_new_tokens=64, stop=[" STOP"])
    assert chat.generate(QUESTION, None, options).text == "It is sunny."
    *deltas, generation = list(chat.stream(QUESTION, None, options))
    assert "".join(deltas) == generation.text == "It is sunny."
    short = chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=3))
    assert short.finish_reason == "length" and short.completion_tokens == 3


def test_timeouts_and_overlong_prompts_are_clear_errors(chat, exports):
    with pytest.raises(BackendTimeoutError, match="did not answer within 0s"):
        chat.generate(QUESTION, None, GenerationOptions(max_new_tokens=16, timeout_s=0.0))
    small = get_backends()["llama-cpp"].open(str(exports["f32"]), {"threads": 1, "n_ctx": 32})
    try:
        with pytest.raises(ContextLengthError, match=r"tiny-f32's maximum context length is \d+ tokens; this request "
                                                     r"asks for \d+"):
            small.generate(QUESTION, [WEATHER_TOOL], GREEDY)
    finally:
        small.close()
    assert small.llama is None


def test_compressed_model_opens_by_name_once_and_times_itself(sqlite_store, tmp_path, tiny_model_dir):
    pytest.importorskip("llama_cpp")
    from supertiny.compress.gguf_config import GGUFConfig
    from supertiny.compress.report import ReportOptions, model_report
    from supertiny.runs.pipeline import compress_model

    register_external(sqlite_store, tiny_model_dir, name="student")
    settings = Settings(home=tmp_path / "home", database_url=sqlite_store.url)
    try:
        result = compress_model(sqlite_store, settings, "gguf", model="student", config=GGUFConfig(type="q8_0"))
        model = open_model(sqlite_store, result.name, threads=1)
        assert isinstance(model, LlamaCppChatModel) and model.name == result.name
        assert open_model(sqlite_store, result.name, threads=1) is model
        assert model.generate(QUESTION, [WEATHER_TOOL], GREEDY).prompt_tokens > 0
        report = model_report(sqlite_store, result.name, ReportOptions(prompt_tokens=32, new_tokens=8))
        assert report["backend"] == "llama-cpp" and report["decode_tok_s"] > 0 and report["prefill_tok_s"] > 0
    finally:
        close_models()
    assert model.llama is None


def test_a_missing_package_is_one_clear_error(exports, monkeypatch):
    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    with pytest.raises(ModelError, match=r"needs llama-cpp-python.*pip install 'supertiny\[llamacpp\]'"):
        get_backends()["llama-cpp"].open(str(exports["f32"]), {})


def test_bad_locations_and_options_are_clear_errors(exports, tmp_path, tiny_model_dir):
    backend = get_backends()["llama-cpp"]
    with pytest.raises(ModelError, match="no GGUF file or directory"):
        backend.open(str(tmp_path / "missing"), {})
    with pytest.raises(ModelError, match=r"no .gguf file in"):
        backend.open(str(tiny_model_dir), {})
    with pytest.raises(ModelError, match=r"is not a .gguf file"):
        backend.open(str(tiny_model_dir / "config.json"), {})
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(exports["f32"], two / name)
    with pytest.raises(ModelError, match=r"holds 2 .gguf files"):
        backend.open(str(two), {})
    with pytest.raises(ModelError, match=r"no Hugging Face tokenizer in .*tokenizer=HF_DIR"):
        backend.open(str(two / "a.gguf"), {})
    with pytest.raises(InvalidInputError, match="unknown llama-cpp backend option"):
        backend.open(str(exports["f32"]), {"dtype": "float32"})
