"""Guided tool calls: an answer decoded under a grammar built from the offered tools' JSON Schemas.

The answer is one JSON object, and the grammar makes the model take the prototype pipeline's steps in
order: decide whether to call (``{"tool_calls": ...`` or ``{"reply": ...``), which function (each call's
``name`` is one of the offered functions), then fill the arguments under that function's parameter schema.
An engine that decodes under a JSON Schema (vLLM's structured outputs) cannot write an answer outside it,
so a guided answer never rambles past its calls and never calls an unknown function or misses a required
argument; what it can still get wrong is the choice and the values.

The model reads the expected shape from :data:`GUIDED_INSTRUCTION`, which the caller appends to the request
(:func:`with_guided_instruction`).
"""

import json
from collections.abc import Sequence
from typing import Any

from supertiny.models.parsing import ParseResult
from supertiny.models.tool_schemas import normalize_json_schema, tool_functions
from supertiny.schema import ParsedCall
from supertiny.schema.messages import MessageLike, message_dicts
from supertiny.schema.tools import ToolLike

GUIDED_FORMAT = "guided_json"
# bumped when the schema's shape or the instruction's place changes, so a harvest run never mixes answers decoded
# under two grammars or prompts
GUIDED_SCHEMA_VERSION = 2
GUIDED_INSTRUCTION = (
    'Answer with one JSON object. When none of the functions can do what the user asks, call none and say so: '
    '{"reply": <your answer>}. Otherwise call them: {"tool_calls": [{"name": <function name>, "arguments": '
    '{<argument>: <value>, ...}}, ...]}, one entry per call, several when the request needs several. After the '
    'functions have answered, reply with {"reply": <your answer>}.'
)


def answer_schema(tools: Sequence[ToolLike], call_required: bool = False) -> dict[str, Any]:
    """The JSON Schema of a guided answer to a request offering ``tools``: calls to those functions with
    arguments their schemas accept, or a reply; with ``call_required`` (``tool_choice`` "required" or a named
    tool) calls only. Each function's ``$defs`` move to the root under the function's index, where its
    ``$ref``s, rewritten, still find them."""
    definitions: dict[str, Any] = {}
    calls = []
    for index, (name, parameters) in enumerate(tool_functions(tools).items()):
        arguments = _prefixed_refs(_arguments_schema(parameters), index)
        for key in _DEFINITION_KEYS:
            for definition, sub in (arguments.pop(key, None) or {}).items():
                definitions[f"f{index}_{definition}"] = sub
        calls.append({"type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
                      "required": ["name", "arguments"], "additionalProperties": False})
    reply = {"type": "object", "properties": {"reply": {"type": "string"}}, "required": ["reply"],
             "additionalProperties": False}
    if not calls:
        return reply
    call_list = {"type": "object",
                 "properties": {"tool_calls": {"type": "array", "items": {"anyOf": calls}, "minItems": 1}},
                 "required": ["tool_calls"], "additionalProperties": False}
    shared = {"$defs": definitions} if definitions else {}
    if call_required:
        return {**call_list, **shared}
    return {"anyOf": [call_list, reply], **shared}


_DEFINITION_KEYS = ("$defs", "definitions")


def _prefixed_refs(schema: Any, index: int) -> Any:
    """``schema`` with each local ``$ref`` to its definitions pointing at the root's ``f<index>_`` ones."""
    if isinstance(schema, list):
        return [_prefixed_refs(item, index) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        prefix = next((f"#/{name}/" for name in _DEFINITION_KEYS
                       if key == "$ref" and isinstance(value, str) and value.startswith(f"#/{name}/")), None)
        out[key] = f"#/$defs/f{index}_{value.removeprefix(prefix)}" if prefix else _prefixed_refs(value, index)
    return out


def _arguments_schema(parameters: Any) -> dict[str, Any]:
    """The function's parameter schema, closed to arguments it does not name (a guided model cannot invent
    one) unless the schema says otherwise; a function without parameters takes none."""
    schema = normalize_json_schema(parameters) if isinstance(parameters, dict) else {}
    schema = {"type": "object", **{key: value for key, value in schema.items() if key != "$schema"}}
    if not any(key in schema for key in ("properties", "anyOf", "oneOf", "allOf", "$ref", "patternProperties")):
        schema["properties"] = {}
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
    return schema


def read_guided_answer(text: str) -> ParseResult:
    """The calls or the reply of a guided answer; ``ok=False`` with the reason when the text is not a whole
    answer (the token budget ran out mid-object) or not a guided one (an engine that ignored the schema)."""
    try:
        answer = json.loads(text)
    except ValueError as exc:
        reason = f"the guided answer is not complete JSON: {exc}" if text.lstrip().startswith("{") else \
            "the answer is not JSON: the engine did not decode under the schema (does it take structured_outputs?)"
        return ParseResult(calls=[], content=text, ok=False, format=GUIDED_FORMAT, reason=reason)
    if isinstance(answer, dict) and isinstance(answer.get("tool_calls"), list):
        entries = answer["tool_calls"]
        if entries and all(isinstance(call, dict) and isinstance(call.get("name"), str)
                           and isinstance(call.get("arguments", {}), dict) for call in entries):
            calls = [ParsedCall(name=call["name"], arguments=call.get("arguments") or {}) for call in entries]
            return ParseResult(calls=calls, content=None, ok=True, format=GUIDED_FORMAT)
        return ParseResult(calls=[], content=text, ok=False, format=GUIDED_FORMAT,
                           reason="tool_calls must hold at least one {\"name\": str, \"arguments\": object}")
    if isinstance(answer, dict) and isinstance(answer.get("reply"), str):
        return ParseResult(calls=[], content=answer["reply"], ok=True, format=GUIDED_FORMAT)
    return ParseResult(calls=[], content=text, ok=False, format=GUIDED_FORMAT,
                       reason="the guided answer holds neither tool_calls nor a reply")


def with_guided_instruction(messages: Sequence[MessageLike]) -> list[dict[str, Any]]:
    """``messages`` (as OpenAI chat dicts) with :data:`GUIDED_INSTRUCTION` at the end of their last user message
    (a new user message when they have none). Everything before it (the system prompt, the tools a chat template
    writes after it, few-shot turns, the request itself) is the prompt the model reads when it answers freely,
    so an engine's prefix cache serves most of a guided answer's prefill from a free answer to the same request."""
    out = message_dicts(messages)
    last_user = next((index for index in range(len(out) - 1, -1, -1) if out[index].get("role") == "user"), None)
    if last_user is None:
        return [*out, {"role": "user", "content": GUIDED_INSTRUCTION}]
    content = out[last_user].get("content")
    if isinstance(content, list):  # content parts
        out[last_user]["content"] = [*content, {"type": "text", "text": GUIDED_INSTRUCTION}]
    else:
        out[last_user]["content"] = f"{content}\n\n{GUIDED_INSTRUCTION}" if content else GUIDED_INSTRUCTION
    return out
