"""Tool calls against the tools' JSON Schemas: a tool's parameter schema normalized to standard JSON Schema,
and the problems of parsed calls (an unknown function, arguments the schema rejects)."""

from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from supertiny.schema import ParsedCall, ToolSpec

_TYPE_ALIASES = {
    "dict": "object", "object": "object", "hashmap": "object", "map": "object",
    "float": "number", "double": "number", "number": "number",
    "int": "integer", "integer": "integer", "long": "integer",
    "bool": "boolean", "boolean": "boolean",
    "str": "string", "string": "string",
    "list": "array", "tuple": "array", "array": "array", "arraylist": "array",
    "null": "null",
}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("additionalProperties", "not", "contains", "if", "then", "else", "propertyNames")


def normalize_json_schema(schema: Any) -> Any:
    """A copy of a tool's parameter schema in standard JSON Schema.

    BFCL-style type names map to JSON Schema ones (dict -> object, float -> number, tuple -> array,
    any -> no type constraint); unknown type names drop the constraint rather than failing.
    """
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            types = _normalize_types(value)
            if types is not None:
                out["type"] = types
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {name: normalize_json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [normalize_json_schema(sub) for sub in value]
        elif key in _SCHEMA_ONES or key == "items":
            out[key] = ([normalize_json_schema(sub) for sub in value] if isinstance(value, list)
                        else normalize_json_schema(value))
        elif key == "required" and not isinstance(value, list):
            continue  # BFCL sometimes writes a boolean per property; JSON Schema wants a list on the object
        else:
            out[key] = value
    if isinstance(out.get("items"), list):  # draft-4 tuple form -> 2020-12
        out["prefixItems"] = out.pop("items")
    return out


def _normalize_types(value: Any) -> Any:
    names = value if isinstance(value, list) else [value]
    mapped = []
    for name in names:
        alias = _TYPE_ALIASES.get(str(name).lower()) if isinstance(name, str) else None
        if alias is None:
            return None  # "any" or a type JSON Schema does not know: no constraint
        if alias not in mapped:
            mapped.append(alias)
    return mapped if isinstance(value, list) else mapped[0]


def tool_functions(tools: Sequence[ToolSpec | Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Function name -> its parameters schema, from OpenAI tools or bare function dicts (BFCL)."""
    functions: dict[str, dict[str, Any]] = {}
    for tool in tools:
        if isinstance(tool, ToolSpec):
            function = tool.function.model_dump()
        elif isinstance(tool.get("function"), Mapping):
            function = dict(tool["function"])
        else:
            function = dict(tool)
        if isinstance(function.get("name"), str):
            functions[function["name"]] = function.get("parameters") or {}
    return functions


def validate_calls(calls: Sequence[ParsedCall], tools: Sequence[ToolSpec | Mapping[str, Any]]) -> list[str]:
    """One message per problem: a call to an unknown function, or arguments its schema rejects."""
    functions = tool_functions(tools)
    problems = []
    for index, call in enumerate(calls, start=1):
        where = f"call {index} ({call.name})" if len(calls) > 1 else f"call {call.name}"
        if call.name not in functions:
            known = ", ".join(sorted(functions)) or "none"
            problems.append(f"{where}: unknown function {call.name!r} (tools: {known})")
            continue
        schema = normalize_json_schema(functions[call.name])
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            problems.append(f"{where}: the tool's parameter schema is invalid: {exc.message}")
            continue
        errors = sorted(Draft202012Validator(schema).iter_errors(call.arguments),
                        key=lambda error: [str(part) for part in error.absolute_path])
        for error in errors:
            path = ".".join(str(part) for part in error.absolute_path)
            problems.append(f"{where}: {f'{path}: ' if path else ''}{error.message}")
    return problems
