"""The OpenAI wire types: what requests are accepted, and chunks shaped as OpenAI streams them."""

import json

import pytest
from helpers.chat_models import WEATHER_TOOL
from pydantic import ValidationError
from supertiny.schema import ToolCall, ToolCallFunction
from supertiny.schema.openai import ChatCompletionRequest, ChunkWriter, Usage

OTHER_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "weather", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})


def test_messages_accept_text_parts_and_the_developer_role():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    parsed = request(messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": parts}])
    system, user = parsed.chat_messages()
    assert (system.role, system.content, user.content) == ("system", "be brief", "ab")
    with pytest.raises(ValidationError, match="only text content"):
        request(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_tool_choice_decides_the_offered_tools():
    offered = request(tools=[WEATHER_TOOL, OTHER_TOOL]).offered_tools()
    assert [tool.name for tool in offered] == ["get_weather", "get_time"]
    assert request(tools=[WEATHER_TOOL], tool_choice="none").offered_tools() is None
    choice = {"type": "function", "function": {"name": "get_time"}}
    named = request(tools=[WEATHER_TOOL, OTHER_TOOL], tool_choice=choice)
    assert [tool.name for tool in named.offered_tools()] == ["get_time"] and named.call_required


def test_unknown_openai_fields_are_accepted_and_limits_checked():
    parsed = request(frequency_penalty=0.5, logprobs=False, max_completion_tokens=20, max_tokens=5, stop="END")
    assert parsed.max_new_tokens == 20 and parsed.stop_sequences == ["END"]
    with pytest.raises(ValidationError, match="only n=1"):
        request(n=3)
    with pytest.raises(ValidationError):
        request(temperature=3)


def test_chunks_follow_openais_stream_shape():
    writer = ChunkWriter("chatcmpl-1", "weather", created=1, argument_piece=5)
    call = ToolCall(id="call_1", function=ToolCallFunction(name="get_weather", arguments='{"city": "Paris"}'))
    chunks = [json.loads(chunk.wire()) for chunk in
              [*writer.tool_calls([call]), *writer.finish("tool_calls", Usage.of(3, 4))]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]
    pieces = [chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for chunk in chunks[2:-2]]
    assert "".join(pieces) == '{"city": "Paris"}' and all(len(piece) <= 5 for piece in pieces)
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
