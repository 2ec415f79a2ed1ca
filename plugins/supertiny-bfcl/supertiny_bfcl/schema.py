"""BFCL function docs -> OpenAI tool schemas, and the function-name mapping between the two.

BFCL writes its schemas in a Python-flavoured dialect ("dict", "float", "tuple", "any"); OpenAI tools
take JSON Schema. BFCL names may contain dots (``restaurant.find_group``), which OpenAI function
names (``^[a-zA-Z0-9_-]{1,64}$``) do not allow, so by default a dot becomes an underscore. The
checker accepts the exact original name and its sanitised form, nothing shorter.
"""

import copy
import re
from typing import Any

# BFCL type -> JSON Schema type; None drops the type ("any" accepts every value)
TYPE_MAP: dict[str, str | None] = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "string": "string",
    "str": "string",
    "char": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "any": None,
}
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def openai_name(name: str) -> str:
    """The OpenAI-valid form of a BFCL function name: every character outside [a-zA-Z0-9_-] becomes '_'."""
    return _INVALID_NAME_CHARS.sub("_", name)


def names_match(called: str, expected: str) -> bool:
    """Whether a call names ``expected`` exactly, in either its BFCL or its OpenAI-valid spelling."""
    return called in (expected, openai_name(expected))


def convert_schema(node: Any) -> Any:
    """One BFCL schema node as JSON Schema; structural keys recurse, everything else is copied."""
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            mapped = TYPE_MAP.get(value, value)
            if mapped is not None:
                converted["type"] = mapped
        elif key == "properties" and isinstance(value, dict):
            converted["properties"] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            converted[key] = convert_schema(value)
        else:
            converted[key] = copy.deepcopy(value)
    return converted


def openai_tool(function: dict[str, Any], dotted_names: bool = False) -> dict[str, Any]:
    """A BFCL function doc as an OpenAI tool; ``dotted_names`` keeps BFCL's names as they are."""
    parameters = convert_schema(function.get("parameters") or {})
    parameters["type"] = "object"
    parameters.setdefault("properties", {})
    name = function["name"] if dotted_names else openai_name(function["name"])
    description = function.get("description", "")
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": parameters}}


def openai_tools(functions: list[dict[str, Any]], dotted_names: bool = False) -> list[dict[str, Any]]:
    """A task's function list as OpenAI tools; two names that sanitise alike would be ambiguous."""
    tools = [openai_tool(function, dotted_names) for function in functions]
    seen: dict[str, str] = {}
    for function in functions:
        key = openai_name(function["name"])
        if key in seen and seen[key] != function["name"]:
            raise ValueError(f"function names {seen[key]!r} and {function['name']!r} both map to {key!r}")
        seen[key] = function["name"]
    return tools
