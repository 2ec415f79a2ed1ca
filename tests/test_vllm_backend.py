"""The vllm backend's checks and failures without an engine; its generation runs for real against a vLLM
engine in tests/test_engine.py."""

import socket

import pytest
from supertiny.errors import EngineUnavailableError, InvalidInputError
from supertiny.models.backend import GenerationOptions
from supertiny.registry import get_backends

from tests.helpers.chat_models import WEATHER_TOOL


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_backend_needs_the_served_name_and_the_tokenizer(tiny_model_dir):
    backend = get_backends()["vllm"]
    with pytest.raises(InvalidInputError, match="served model name"):
        backend.open("http://127.0.0.1:1/v1", {"tokenizer": str(tiny_model_dir)})
    with pytest.raises(InvalidInputError, match="unknown vllm backend option"):
        backend.open("http://127.0.0.1:1/v1", {"model": "m", "tokenizer": str(tiny_model_dir), "dtype": "x"})


def test_an_engine_that_does_not_answer_is_one_clear_error(tiny_model_dir):
    model = get_backends()["vllm"].open(f"http://127.0.0.1:{_closed_port()}/v1",
                                        {"model": "tiny", "tokenizer": str(tiny_model_dir), "name": "tiny"})
    assert model.capabilities.batching and not model.capabilities.local and model.capabilities.logprobs
    with pytest.raises(EngineUnavailableError) as info:
        model.generate([{"role": "user", "content": "weather in Paris?"}], [WEATHER_TOOL],
                       GenerationOptions(max_new_tokens=4))
    message = str(info.value)
    assert "is not answering" in message and "supertiny engine start tiny" in message and "\n" not in message
    with pytest.raises(EngineUnavailableError):
        list(model.stream([{"role": "user", "content": "hi"}], None, GenerationOptions(max_new_tokens=4)))
    model.close()


def test_the_prompt_is_the_models_own_chat_template(tiny_model_dir):
    from supertiny.models.transformers_backend import TransformersChatModel

    messages = [{"role": "user", "content": "weather in Paris?"}]
    remote = get_backends()["vllm"].open("http://127.0.0.1:1/v1", {"model": "tiny", "tokenizer": str(tiny_model_dir)})
    local = TransformersChatModel.load(tiny_model_dir)
    assert remote.render_prompt(messages, [WEATHER_TOOL]) == local.render_prompt(messages, [WEATHER_TOOL])
    assert set(remote.stop_token_ids) == local.stop_token_ids
    remote.close()
    local.close()
