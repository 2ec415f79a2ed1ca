"""Tool-call parsing of what real Qwen models write, and validation against the tools' schemas."""

import pytest
from supertiny.models.parsing import parse_tool_calls
from supertiny.models.tool_schemas import normalize_json_schema, validate_calls
from supertiny.schema import FunctionSpec, ParsedCall, ToolSpec

WEATHER = ParsedCall(name="get_weather", arguments={"city": "Paris"})


def _calls(text: str) -> list[tuple[str, dict]]:
    result = parse_tool_calls(text)
    assert result.ok, result.reason
    return [(call.name, call.arguments) for call in result.calls]


def test_tool_call_tags_one_block():
    result = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert result.ok and result.calls == [WEATHER] and result.format == "tool_call_tags"
    assert result.content is None


def test_tool_call_tags_several_blocks_with_prose_and_an_unterminated_last_block():
    text = ('Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    result = parse_tool_calls(text)
    assert [call.arguments["city"] for call in result.calls] == ["Paris", "Oslo"]
    assert result.content == "Let me check both."


def test_tool_call_block_holding_a_list_or_a_fence():
    assert _calls('<tool_call>\n[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]\n</tool_call>') \
        == [("a", {}), ("b", {"x": 1})]
    assert _calls('<tool_call>\n```json\n{"name": "a", "arguments": {"x": 1}}\n```\n</tool_call>') == [("a", {"x": 1})]


def test_json_fence_with_one_object_as_the_small_qwens_answer():
    result = parse_tool_calls('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```')
    assert result.calls == [WEATHER] and result.format == "json_fence" and result.content is None


def test_json_fence_with_a_list_of_calls():
    text = '```json\n[\n  {"name": "a", "arguments": {"x": 1}},\n  {"name": "b", "arguments": {"y": "z"}}\n]\n```'
    assert _calls(text) == [("a", {"x": 1}), ("b", {"y": "z"})]


def test_several_fences_and_a_fence_without_language_or_closing():
    text = 'First:\n```json\n{"name": "a", "arguments": {}}\n```\nThen:\n```\n{"name": "b", "arguments": {}}'
    result = parse_tool_calls(text)
    assert [call.name for call in result.calls] == ["a", "b"]
    assert result.content == "First:\n\nThen:"


def test_bare_json_object_list_and_objects_in_prose():
    assert _calls('{"name": "get_weather", "arguments": {"city": "Paris"}}') == [("get_weather", {"city": "Paris"})]
    assert _calls('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]') == [("a", {}), ("b", {})]
    result = parse_tool_calls('I will call {"name": "a", "arguments": {"n": 2}} now.')
    assert result.format == "json" and result.calls == [ParsedCall(name="a", arguments={"n": 2})]
    assert result.content == "I will call  now."


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
    '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
    '{"id": "call_1", "type": "function", "name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    '{"tool_calls": [{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}',
])
def test_call_object_shapes(text):
    assert _calls(text) == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("text", [
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris",},}\n```',  # trailing commas
    "{'name': 'get_weather', 'arguments': {'city': 'Paris'}}",  # single quotes
    '{{"name": "get_weather", "arguments": {"city": "Paris"}}}',  # the 1.5B template's doubled braces
])
def test_lenient_json(text):
    assert _calls(text) == [("get_weather", {"city": "Paris"})]


def test_python_literals_and_json_literals_are_read():
    assert _calls("{'name': 'f', 'arguments': {'a': True, 'b': None, 'c': -1.5, 'd': (1, 2)}}") == \
        [("f", {"a": True, "b": None, "c": -1.5, "d": [1, 2]})]
    assert _calls('{"name": "f", "arguments": {"a": true, "b": null, "c": [1, 2,]}}') == \
        [("f", {"a": True, "b": None, "c": [1, 2]})]


def test_python_call_syntax():
    result = parse_tool_calls('[get_weather(city="Paris"), math.factorial(n=5)]')
    assert result.format == "python"
    assert [(call.name, call.arguments) for call in result.calls] == \
        [("get_weather", {"city": "Paris"}), ("math.factorial", {"n": 5})]


def test_no_call_is_ok_with_the_text_as_content():
    for text in ["The weather in Paris is sunny.", "Use the set {1, 2} here.", "", "```python\nprint(1)\n```",
                 '```json\n{"temperature": 21}\n```']:
        result = parse_tool_calls(text)
        assert result.ok and result.calls == [] and result.format == "none" and result.content == text


@pytest.mark.parametrize(("text", "reason"), [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
     "malformed JSON in <tool_call> block: Expecting ',' delimiter"),
    ('```json\n{"name": "get_weather", "arguments": {"city": \n```', "malformed JSON in ```json block"),
    ('{"name": "get_weather", "arguments": {"city": "Par', "malformed JSON"),
    ('<tool_call>\n{"name": "f", "arguments": "{not json"}\n</tool_call>', "arguments of 'f' are not JSON"),
    ("<tool_call>\n</tool_call>", "empty <tool_call> block"),
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', 'is not a function call: no "name"'),
    ('{"name": "f", "arguments": [1, 2]}', "arguments of 'f' are a list, not an object"),
])
def test_malformed_calls_are_a_result_with_a_reason(text, reason):
    result = parse_tool_calls(text)
    assert not result.ok and result.calls == []
    assert reason in result.reason


def test_reason_names_the_block_among_several():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {</tool_call>'
    assert "<tool_call> block 2" in parse_tool_calls(text).reason


# --- validation ----------------------------------------------------------------------------------

BFCL_TOOL = {
    "name": "calculate_triangle_area",
    "description": "Area of a triangle",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "float"},
            "height": {"type": "integer"},
            "unit": {"type": "string", "enum": ["cm", "m"]},
            "points": {"type": "tuple", "items": {"type": "float"}},
            "options": {"type": "dict", "properties": {"exact": {"type": "boolean"}},
                        "additionalProperties": {"type": "float"}},
            "anything": {"type": "any"},
        },
        "required": ["base", "height"],
    },
}


def test_bfcl_types_are_normalized_recursively():
    schema = normalize_json_schema(BFCL_TOOL["parameters"])
    assert schema["type"] == "object"
    properties = schema["properties"]
    assert properties["base"] == {"type": "number"}
    assert properties["points"] == {"type": "array", "items": {"type": "number"}}
    assert properties["options"]["type"] == "object"
    assert properties["options"]["additionalProperties"] == {"type": "number"}
    assert properties["anything"] == {}
    assert normalize_json_schema({"type": ["String", "null"]}) == {"type": ["string", "null"]}
    assert BFCL_TOOL["parameters"]["type"] == "dict"  # the input is left alone


def test_valid_call_passes_and_int_is_accepted_where_a_number_is_asked():
    call = ParsedCall(name="calculate_triangle_area",
                      arguments={"base": 10, "height": 5, "points": [1, 2.5], "options": {"exact": True, "w": 3},
                                 "anything": {"x": [1]}})
    assert validate_calls([call], [BFCL_TOOL]) == []


def test_each_schema_problem_is_one_message():
    call = ParsedCall(name="calculate_triangle_area",
                      arguments={"height": "5", "unit": "km", "points": [1, "a"], "options": {"exact": "yes"}})
    problems = validate_calls([call], [BFCL_TOOL])
    assert problems == [
        "call calculate_triangle_area: 'base' is a required property",
        "call calculate_triangle_area: height: '5' is not of type 'integer'",
        "call calculate_triangle_area: options.exact: 'yes' is not of type 'boolean'",
        "call calculate_triangle_area: points.1: 'a' is not of type 'number'",
        "call calculate_triangle_area: unit: 'km' is not one of ['cm', 'm']",
    ]


def test_unknown_function_is_reported_with_the_known_names():
    tools = [ToolSpec(function=FunctionSpec(name="get_weather", parameters={
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))]
    problems = validate_calls([WEATHER, ParsedCall(name="find_group", arguments={})], tools)
    assert problems == ["call 2 (find_group): unknown function 'find_group' (tools: get_weather)"]


def test_openai_tool_dicts_and_booleans_are_not_numbers():
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number"}}}}}
    assert validate_calls([ParsedCall(name="f", arguments={"n": 3})], [tool]) == []
    assert validate_calls([ParsedCall(name="f", arguments={"n": True})], [tool]) == \
        ["call f: n: True is not of type 'number'"]
