"""Guided tool calls: the answer schema the engine decodes under, reading a guided answer back, and the
prototype pipeline asking for it (instruction in the prompt, the option down to the backend, a teacher
that cannot honour it refused before any sample). The engine's own decoding under the schema is in
test_engine.py."""

import json

import pytest
import sqlalchemy as sa
from helpers import toy_domain
from helpers.chat_models import WEATHER_TOOL
from jsonschema import Draft202012Validator
from supertiny.errors import InvalidInputError
from supertiny.harvest.runner import HarvestConfig, run_harvest
from supertiny.models.backend import Capabilities, ChatModel, Generation, GenerationOptions, guided_answer
from supertiny.models.guided_calls import (
    GUIDED_FORMAT,
    GUIDED_INSTRUCTION,
    answer_schema,
    read_guided_answer,
    with_guided_instruction,
)
from supertiny.models.langchain_adapter import SupertinyChatModel
from supertiny.store import HarvestRun, Sample

BFCL_STYLE_TOOL = {"name": "area", "description": "Area of a shape.",
                   "parameters": {"type": "dict", "properties": {"base": {"type": "float"},
                                                                 "unit": {"type": "string", "enum": ["cm", "m"]}},
                                  "required": ["base"]}}


def _valid(schema, answer) -> bool:
    return Draft202012Validator(schema).is_valid(answer)


def test_the_schema_takes_calls_to_offered_functions_with_valid_arguments_or_a_reply():
    schema = answer_schema([WEATHER_TOOL, BFCL_STYLE_TOOL])
    Draft202012Validator.check_schema(schema)
    assert _valid(schema, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                          {"name": "area", "arguments": {"base": 2.5, "unit": "cm"}}]})
    assert _valid(schema, {"reply": "None of these functions can book a flight."})
    for wrong in ({"tool_calls": []},  # deciding to call means at least one call
                  {"tool_calls": [{"name": "book_flight", "arguments": {}}]},  # not offered
                  {"tool_calls": [{"name": "get_weather", "arguments": {}}]},  # required argument missing
                  {"tool_calls": [{"name": "area", "arguments": {"base": "two"}}]},  # BFCL float -> number
                  {"tool_calls": [{"name": "area", "arguments": {"base": 1, "unit": "inch"}}]},  # not in the enum
                  {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo", "when": "now"}}]},
                  {"reply": "hi", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
                  {"answer": "hi"}):
        assert not _valid(schema, wrong), wrong


def test_where_a_call_is_required_the_schema_has_no_reply():
    schema = answer_schema([WEATHER_TOOL, BFCL_STYLE_TOOL], call_required=True)
    Draft202012Validator.check_schema(schema)
    assert _valid(schema, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})
    assert not _valid(schema, {"reply": "None of these functions can book a flight."})
    assert not _valid(schema, {"tool_calls": []})


def test_a_functions_definitions_move_to_the_root_where_its_refs_still_find_them():
    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    tools = [{"name": "move", "parameters": {"type": "object", "properties": {"to": {"$ref": "#/$defs/Point"}},
                                             "required": ["to"], "$defs": {"Point": point}}},
             {"name": "mark", "parameters": {"type": "object", "properties": {"at": {"$ref": "#/definitions/Point"}},
                                             "required": ["at"], "definitions": {"Point": {"type": "string"}}}}]
    schema = answer_schema(tools)
    Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]) == {"f0_Point", "f1_Point"}
    assert _valid(schema, {"tool_calls": [{"name": "move", "arguments": {"to": {"x": 1.5}}},
                                          {"name": "mark", "arguments": {"at": "here"}}]})
    assert not _valid(schema, {"tool_calls": [{"name": "move", "arguments": {"to": "here"}}]})
    assert not _valid(schema, {"tool_calls": [{"name": "mark", "arguments": {"at": {"x": 1}}}]})


def test_a_function_without_parameters_takes_no_arguments():
    schema = answer_schema([{"name": "now", "description": "The time."}])
    assert _valid(schema, {"tool_calls": [{"name": "now", "arguments": {}}]})
    assert not _valid(schema, {"tool_calls": [{"name": "now", "arguments": {"tz": "UTC"}}]})


def test_without_functions_the_schema_is_a_reply():
    assert answer_schema([]) == {"type": "object", "properties": {"reply": {"type": "string"}},
                                 "required": ["reply"], "additionalProperties": False}


def test_a_guided_answer_reads_back_as_calls_or_content():
    calls = read_guided_answer('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}')
    assert calls.ok and calls.format == GUIDED_FORMAT and calls.content is None
    assert [(call.name, call.arguments) for call in calls.calls] == [("get_weather", {"city": "Paris"})]
    parse, message = guided_answer('{"tool_calls": [{"name": "area", "arguments": {"base": 2}}, '
                                   '{"name": "area", "arguments": {"base": 3}}]}')
    assert parse.ok and [json.loads(call.function.arguments) for call in message.tool_calls] == [{"base": 2},
                                                                                                  {"base": 3}]
    parse, message = guided_answer('{"reply": "I cannot book flights."}')
    assert parse.ok and not parse.calls and message.content == "I cannot book flights." and not message.tool_calls


@pytest.mark.parametrize("text", ['{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa',
                                  '{"answer": 1}', '{"tool_calls": [{"name": 3}]}', '{"tool_calls": []}', '[1, 2]',
                                  '', 'Sure, I will call get_weather.'])
def test_a_cut_or_foreign_answer_is_not_ok_and_keeps_its_text(text):
    parse, message = guided_answer(text)
    assert not parse.ok and parse.reason and not parse.calls and message.content == text
    if text and not text.startswith(("{", "[")):
        assert "did not decode under the schema" in parse.reason


def test_the_instruction_ends_the_last_user_message_so_the_free_prompt_is_its_prefix():
    system = {"role": "system", "content": "Use the tools."}
    task = [system, {"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "Celsius?"},
            {"role": "user", "content": "Yes."}]
    steered = with_guided_instruction(task)
    assert steered[:3] == task[:3] and steered[3] == {"role": "user", "content": f"Yes.\n\n{GUIDED_INSTRUCTION}"}
    assert task[3]["content"] == "Yes."  # the caller's messages are left as they were
    parts = with_guided_instruction([{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}])
    assert parts[0]["content"][-1] == {"type": "text", "text": GUIDED_INSTRUCTION}
    assert with_guided_instruction([system]) == [system, {"role": "user", "content": GUIDED_INSTRUCTION}]


class GuidedTeacher(ChatModel):
    """Answers toy-weather tasks right, in the guided JSON shape, and records what it was asked."""

    name = backend = "guided-scripted"

    def __init__(self):
        self.seen: list[tuple[list, GenerationOptions]] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=False, logprobs=False, guided=True)

    def generate(self, messages, tools=None, options=None) -> Generation:
        self.seen.append((list(messages), options))
        request = messages[-1]["content"].removesuffix(f"\n\n{GUIDED_INSTRUCTION}")
        city, unit = request.split(" in ")[1:3]
        text = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": city,
                                                                                 "unit": unit.rstrip("?")}}]})
        parse, message = guided_answer(text)
        return Generation(text=text, message=message, parse=parse, prompt_tokens=20, completion_tokens=12,
                          latency_s=0.01)


class FreeTeacher(GuidedTeacher):
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(local=True, logprobs=False, engine="transformers")


@pytest.fixture
def toy(register_plugin):
    register_plugin(toy_domain, name="toy-domains")


def test_a_guided_harvest_steers_the_teacher_and_stores_plain_tool_calls(store, toy):
    teacher = GuidedTeacher()
    config = HarvestConfig(domain="toy-weather", teacher="guided", limit=5, guided=True)
    result = run_harvest(store, config, lambda: SupertinyChatModel(model=teacher))
    assert result.done == result.passed == 5
    messages, options = teacher.seen[0]
    assert options.guided and messages[-1]["role"] == "user" and messages[-1]["content"].endswith(GUIDED_INSTRUCTION)
    assert messages[0]["content"] == toy_domain.ToyWeather.system_prompt
    with store.session() as session:
        sample = session.scalars(sa.select(Sample).where(Sample.run_id == result.run_id)).first()
        run = session.get(HarvestRun, result.run_id)
        assert run.params["guided"] is True
    assert [message["role"] for message in sample.trajectory] == ["user", "assistant"]  # the instruction is not data
    assert sample.trajectory[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    free = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="guided", limit=5),
                       lambda: SupertinyChatModel(model=GuidedTeacher()))
    assert free.run_id != result.run_id  # guided and free decoding are two runs, never mixed


def test_a_teacher_that_cannot_decode_guided_is_refused_before_any_sample(store, toy):
    config = HarvestConfig(domain="toy-weather", teacher="in-process", limit=3, guided=True)
    with pytest.raises(InvalidInputError, match="--guided needs a teacher") as raised:
        run_harvest(store, config, lambda: SupertinyChatModel(model=FreeTeacher()))
    assert "supertiny engine start in-process" in str(raised.value.hint)
    with store.session() as session:
        assert session.scalar(sa.select(sa.func.count(Sample.id))) == 0
        assert session.scalar(sa.select(sa.func.count(HarvestRun.id))) == 0  # refused before the run is recorded
    with pytest.raises(InvalidInputError, match="cannot decode guided tool calls"):
        SupertinyChatModel(model=FreeTeacher()).invoke("Weather in Oslo in celsius?", guided=True)


def test_a_task_whose_schema_the_engine_refuses_fails_alone_in_a_guided_evaluation(store, toy, monkeypatch):
    import contextlib

    from supertiny.eval.runner import EvalConfig, evaluate
    from supertiny.models.versions import register_model_version

    class PickyEngine(GuidedTeacher):
        def generate(self, messages, tools=None, options=None):
            if "celsius" in messages[-1]["content"]:
                raise InvalidInputError("guided-scripted cannot take this request: invalid JSON schema")
            return super().generate(messages, tools, options)

    monkeypatch.setattr("supertiny.runtime.loading.lease_model",
                        lambda store, name: contextlib.nullcontext(PickyEngine()))
    register_model_version(store, name="picky", stage="external", format="hf", backend="transformers", path="/x")
    evaluation = evaluate(store, EvalConfig(model="picky", domain="toy-weather", limit=12, guided=True))
    records = evaluation.details["records"]
    refused = [record for record in records if "no guided answer" in record["reason"]]
    assert refused and all(not record["correct"] and "invalid JSON schema" in record["reason"] for record in refused)
    assert len(refused) < len(records) and any(record["correct"] for record in records)
    # sampled for the agreement gate: a refused task keeps no agreement, and the others one each
    sampled = evaluate(store, EvalConfig(model="picky", domain="toy-weather", limit=12, guided=True,
                                         agreement_samples=2)).details["records"]
    assert all((record["agreement"] is None) == ("no guided answer" in record["reason"]) for record in sampled)
