"""The LangChain adapter: conversions (with a scripted ChatModel double) and one real tiny-model invoke."""

import json
from collections.abc import Sequence

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from supertiny.errors import InvalidInputError
from supertiny.models.backend import ChatModel, Generation, GenerationOptions, parse_answer
from supertiny.models.langchain_adapter import SupertinyChatModel, to_openai_messages
from supertiny.registry import get_backends
from test_transformers_backend import force_answer


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Current weather in a city."""
    return json.dumps({"city": city, "temp": 21, "unit": unit})


class BookFlight(BaseModel):
    """Book a flight."""

    origin: str = Field(description="departure airport")
    destination: str


def convert(amount: float, currency: str) -> float:
    """Convert an amount of money.

    Args:
        amount: how much
        currency: target currency code
    """
    return amount


OPENAI_DICT_TOOL = {"type": "function", "function": {"name": "send_email", "description": "Send an email",
                                                     "parameters": {"type": "object", "properties": {}}}}


class ScriptedChatModel(ChatModel):
    """Answers with the next scripted text and records what it was sent (a test double for the
    adapter's conversions only)."""

    name = "scripted"
    backend = "test"

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.calls: list[tuple[list[dict], list[dict] | None, GenerationOptions]] = []

    def generate(self, messages: Sequence, tools=None, options=None) -> Generation:
        self.calls.append((list(messages), tools, options))
        text = self.answers.pop(0)
        parse, message = parse_answer(text, tools)
        return Generation(text=text, message=message, parse=parse, prompt_tokens=10, completion_tokens=4,
                          latency_s=0.25, finish_reason="tool_calls" if message.tool_calls else "stop",
                          token_logprobs=[-0.1, -0.2, -0.05, -0.01])


def test_bind_tools_accepts_langchain_tools_pydantic_models_functions_and_openai_dicts():
    double = ScriptedChatModel("Sure.")
    llm = SupertinyChatModel(model=double).bind_tools([get_weather, BookFlight, convert, OPENAI_DICT_TOOL])
    llm.invoke("hello")
    _, tools, _ = double.calls[0]
    assert [tool["function"]["name"] for tool in tools] == ["get_weather", "BookFlight", "convert", "send_email"]
    assert all(tool["type"] == "function" for tool in tools)
    weather = tools[0]["function"]["parameters"]
    assert weather["properties"]["city"]["type"] == "string" and weather["required"] == ["city"]
    assert tools[2]["function"]["parameters"]["properties"]["amount"]["type"] == "number"


def test_a_tool_call_answer_becomes_langchain_tool_calls_with_usage_and_metadata():
    double = ScriptedChatModel('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```')
    answer = SupertinyChatModel(model=double).bind_tools([get_weather]).invoke("Weather in Paris?")

    assert isinstance(answer, AIMessage) and answer.content == ""
    [call] = answer.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"}) and call["id"].startswith("call_")
    assert answer.usage_metadata == {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}
    metadata = answer.response_metadata
    assert metadata["finish_reason"] == "tool_calls" and metadata["latency_s"] == 0.25
    assert metadata["token_logprobs"] == [-0.1, -0.2, -0.05, -0.01] and 0 < metadata["confidence"] < 1
    assert metadata["model_name"] == "scripted" and metadata["parse_format"] == "json_fence"


def test_a_full_tool_calling_conversation_converts_to_openai_messages():
    conversation = [
        SystemMessage("Be brief."),
        HumanMessage("Weather in Paris and Oslo?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"},
                                  {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_2"}]),
        ToolMessage('{"temp": 21}', tool_call_id="call_1"),
        ToolMessage('{"temp": 5}', tool_call_id="call_2"),
        AIMessage([{"type": "text", "text": "Paris 21, Oslo 5."}]),
        HumanMessage("Thanks"),
    ]
    assert to_openai_messages(conversation) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 5}'},
        {"role": "assistant", "content": "Paris 21, Oslo 5."},
        {"role": "user", "content": "Thanks"},
    ]


def test_a_langchain_tool_loop_runs_on_a_supertiny_model():
    double = ScriptedChatModel('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>',
                               "It is 21 degrees in Lima.")
    llm = SupertinyChatModel(model=double).bind_tools([get_weather])
    messages = [HumanMessage("Weather in Lima?")]
    answer = llm.invoke(messages)
    messages.append(answer)
    for call in answer.tool_calls:
        messages.append(get_weather.invoke(call))  # a ToolMessage carrying the call's id
    final = llm.invoke(messages)

    assert final.content == "It is 21 degrees in Lima." and final.tool_calls == []
    sent, _, _ = double.calls[1]
    assert sent[1]["tool_calls"][0]["id"] == answer.tool_calls[0]["id"]
    assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == answer.tool_calls[0]["id"]
    assert json.loads(sent[2]["content"])["city"] == "Lima"


def test_tool_choice_narrows_the_tools_offered():
    double = ScriptedChatModel("a", "b", "c")
    model = SupertinyChatModel(model=double)
    model.bind_tools([get_weather, convert], tool_choice="none").invoke("x")
    model.bind_tools([get_weather, convert], tool_choice="convert").invoke("x")
    model.bind_tools([get_weather, convert],
                     tool_choice={"type": "function", "function": {"name": "get_weather"}}).invoke("x")
    assert double.calls[0][1] is None
    assert [tool["function"]["name"] for tool in double.calls[1][1]] == ["convert"]
    assert [tool["function"]["name"] for tool in double.calls[2][1]] == ["get_weather"]
    with pytest.raises(InvalidInputError, match="not among the bound tools"):
        model.bind_tools([get_weather], tool_choice="nope").invoke("x")


def test_call_options_reach_the_backend():
    double = ScriptedChatModel("ok")
    SupertinyChatModel(model=double, max_new_tokens=50).invoke(
        "x", stop=["END"], temperature=0.7, max_tokens=9, seed=5)
    options = double.calls[0][2]
    assert (options.max_new_tokens, options.temperature, options.seed, tuple(options.stop)) == (9, 0.7, 5, ("END",))


def test_unreadable_calls_become_invalid_tool_calls():
    double = ScriptedChatModel('<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>')
    answer = SupertinyChatModel(model=double).bind_tools([get_weather]).invoke("x")
    assert answer.tool_calls == []
    [invalid] = answer.invalid_tool_calls
    assert "malformed JSON" in invalid["error"] and "<tool_call>" in answer.content


def test_stream_with_tools_ends_in_tool_call_chunks():
    double = ScriptedChatModel('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    chunks = list(SupertinyChatModel(model=double).bind_tools([get_weather]).stream("x"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls[0]["name"] == "get_weather" and merged.tool_calls[0]["args"] == {"city": "Oslo"}
    assert merged.usage_metadata["output_tokens"] == 4


@pytest.fixture
def tiny_chat(tiny_model_dir):
    return get_backends()["transformers"].open(str(tiny_model_dir), {"threads": 1})


def test_real_tiny_model_invoke_returns_the_forced_tool_call(tiny_chat, monkeypatch):
    force_answer(monkeypatch, tiny_chat,
                 '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    llm = SupertinyChatModel(model=tiny_chat, max_new_tokens=64).bind_tools([get_weather])
    answer = llm.invoke([SystemMessage("You are a weather bot."), HumanMessage("Weather in Paris?")])

    assert [(call["name"], call["args"]) for call in answer.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert answer.usage_metadata["output_tokens"] == len(answer.response_metadata["token_logprobs"])
    assert answer.response_metadata["backend"] == "transformers"
    assert all(value <= 0 for value in answer.response_metadata["token_logprobs"])


def test_real_tiny_model_streams_text_without_tools(tiny_chat):
    llm = SupertinyChatModel(model=tiny_chat, max_new_tokens=12)
    chunks = list(llm.stream("hello"))
    assert sum(1 for chunk in chunks if chunk.content) >= 2  # text arrives in several deltas
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == llm.invoke("hello").content
    assert merged.usage_metadata["output_tokens"] >= 1
    assert merged.response_metadata["finish_reason"] in ("stop", "length")
