"""The vllm backend cannot run without a GPU; without vLLM it says what to do instead."""

import sys

import pytest
from supertiny.errors import ModelError
from supertiny.registry import get_backends


def test_missing_vllm_is_a_clear_model_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails even where vLLM is installed
    with pytest.raises(ModelError) as info:
        get_backends()["vllm"].open("/models/qwen", {})
    message = str(info.value)
    assert message.startswith("the vllm backend needs vLLM")
    assert "supertiny[vllm]" in message and "--tool-call-parser hermes" in message and "\n" not in message
