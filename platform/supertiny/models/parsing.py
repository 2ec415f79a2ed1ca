"""Tool-call parsing: turn what a model wrote into calls (checked against the tools' schemas in
:mod:`supertiny.models.tool_schemas`).

Real Qwen models answer in several shapes, tried in this order (the first shape found wins):

- ``<tool_call>{...}</tool_call>`` blocks, one or several; the last one may be unterminated
  (format ``"tool_call_tags"``);
- a ```` ```json ```` fence holding one object or a list of objects, or several fences
  (format ``"json_fence"``);
- bare JSON objects or lists, anywhere in the text (format ``"json"``);
- Python call syntax, the whole answer: ``get_weather(city="Paris")`` or ``[f(a=1), g(b=2)]``
  (format ``"python"``).

A call object is ``{"name", "arguments"}``, ``{"name", "parameters"}``, ``{"function": {...}}`` or
OpenAI's shape with ``arguments`` as a JSON string. Malformed JSON gives ``ok=False`` with a reason,
never an exception. Leniency that cannot change meaning is applied: trailing commas, single quotes,
Python's True/False/None, doubled outer braces.
"""

import ast
import dataclasses
import json
import re
from typing import Any

from supertiny.schema import ParsedCall

_TAG_OPEN = "<tool_call>"
_TAG_CLOSE = "</tool_call>"
_TAG_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_JSON_FENCE_LANGUAGES = {"", "json", "json5", "jsonc", "javascript", "js", "tool_call", "tool_code"}
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")


@dataclasses.dataclass
class ParseResult:
    calls: list[ParsedCall]
    content: str | None  # the text outside the calls; None when the answer was only calls
    ok: bool
    reason: str | None = None
    # "tool_call_tags" | "json_fence" | "json" | "python" | "none"; "openai" for an endpoint's native calls,
    # "guided_json" for an answer decoded under supertiny.models.guided_calls' schema
    format: str = "none"


class _Malformed(ValueError):
    """A block that should hold calls cannot be read."""


class _NotACall(ValueError):
    """A well-formed value that is not a function call."""


def parse_tool_calls(text: str) -> ParseResult:
    """Read the tool calls in a model's answer; a plain-text answer is ``ok`` with no calls."""
    if not text or not text.strip():
        return ParseResult(calls=[], content=text, ok=True)
    for parse in (_parse_tags, _parse_fences, _parse_bare_json, _parse_python):
        result = parse(text)
        if result is not None:
            return result
    return ParseResult(calls=[], content=text, ok=True)


def _parse_tags(text: str) -> ParseResult | None:
    if _TAG_OPEN not in text:
        return None
    blocks = [match.group(1) for match in _TAG_BLOCK.finditer(text)]
    content = _TAG_BLOCK.sub("", text).replace(_TAG_CLOSE, "")
    return _result_from_blocks(blocks, content, "tool_call_tags", "<tool_call> block", strict=True)


def _parse_fences(text: str) -> ParseResult | None:
    if "```" not in text:
        return None
    blocks, spans = [], []
    for match in _FENCE.finditer(text):
        language, body = match.group(1).lower(), match.group(2)
        if language in _JSON_FENCE_LANGUAGES and body.strip()[:1] in ("{", "["):
            blocks.append(body)
            spans.append(match.span())
    if not blocks:
        return None
    result = _result_from_blocks(blocks, _cut(text, spans), "json_fence", "```json block", strict=False)
    return result or ParseResult(calls=[], content=text, ok=True)


def _parse_bare_json(text: str) -> ParseResult | None:
    stripped = text.strip()
    whole_error = None
    if stripped[:1] in ("{", "["):
        try:
            value = _loads(stripped)
        except _Malformed as exc:
            whole_error = exc  # maybe JSON followed by prose: the scan below finds it
        else:
            try:
                return ParseResult(calls=_calls_from(value), content=None, ok=True, format="json")
            except _Malformed as exc:
                return ParseResult(calls=[], content=text, ok=False, reason=str(exc), format="json")
            except _NotACall as exc:
                if _looks_like_call(stripped):
                    return ParseResult(calls=[], content=text, ok=False,
                                       reason=f"JSON answer is not a function call: {exc}", format="json")
                return ParseResult(calls=[], content=text, ok=True)
    # JSON objects embedded in prose: keep only those shaped like calls
    calls, spans = [], []
    decoder = json.JSONDecoder(strict=False)
    position = 0
    while (start := _next_json_start(text, position)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
            calls.extend(_calls_from(value))
        except (ValueError, _NotACall):
            position = start + 1
            continue
        spans.append((start, end))
        position = end
    if calls:
        content = _cut(text, spans).replace(_TAG_CLOSE, "")  # Qwen sometimes closes a tag it never opened
        return ParseResult(calls=calls, content=_none_if_blank(content), ok=True, format="json")
    if whole_error is not None and _looks_like_call(stripped):
        return ParseResult(calls=[], content=text, ok=False, reason=f"malformed JSON: {whole_error}",
                           format="json")
    return None


def _parse_python(text: str) -> ParseResult | None:
    stripped = text.strip()
    if "(" not in stripped or not stripped.endswith((")", "]")):
        return None
    try:
        tree = ast.parse(stripped, mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        if name is None or any(keyword.arg is None for keyword in node.keywords):
            return None
        try:
            arguments = {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
        except ValueError:
            return None
        calls.append(ParsedCall(name=name, arguments=arguments))
    return ParseResult(calls=calls, content=None, ok=True, format="python") if calls else None


def _result_from_blocks(blocks: list[str], content: str, format: str, what: str,
                       strict: bool) -> ParseResult | None:
    """Calls from blocks that should hold JSON; None when lenient blocks hold no call at all."""
    calls: list[ParsedCall] = []
    for index, block in enumerate(blocks, start=1):
        body = _strip_fence(block)
        label = f"{what} {index}" if len(blocks) > 1 else what
        if not body:
            return ParseResult(calls=[], content=_none_if_blank(content), ok=False,
                               reason=f"empty {label}", format=format)
        try:
            calls.extend(_calls_from(_loads(body)))
        except _Malformed as exc:
            if not strict and not _looks_like_call(body):
                continue
            return ParseResult(calls=[], content=_none_if_blank(content), ok=False,
                               reason=f"malformed JSON in {label}: {exc}", format=format)
        except _NotACall as exc:
            if not strict:
                continue  # a fenced JSON value that is not a call is part of the answer, not a call
            return ParseResult(calls=[], content=_none_if_blank(content), ok=False,
                               reason=f"{label} is not a function call: {exc}", format=format)
    if not calls:
        return None
    return ParseResult(calls=calls, content=_none_if_blank(content), ok=True, format=format)


def _calls_from(value: Any) -> list[ParsedCall]:
    """The calls in a decoded JSON value: a call object, a list of them, or ``{"tool_calls": [...]}``."""
    if isinstance(value, list):
        if not value:
            raise _NotACall("an empty list")
        calls = []
        for index, item in enumerate(value, start=1):
            try:
                calls.extend(_calls_from(item))
            except _NotACall as exc:
                raise _NotACall(f"item {index}: {exc}") from None
        return calls
    if not isinstance(value, dict):
        raise _NotACall(f"a JSON {type(value).__name__}, not an object")
    if isinstance(value.get("tool_calls"), list) and "name" not in value:
        return _calls_from(value["tool_calls"])
    if isinstance(value.get("function"), dict):
        return _calls_from(value["function"])
    name = value.get("name", value.get("function"))
    if not isinstance(name, str) or not name.strip():
        raise _NotACall('no "name"')
    keys = [key for key in _ARGUMENT_KEYS if key in value]
    extra = set(value) - {"name", "function", "type", "id", *keys}
    if not keys and extra:
        raise _NotACall(f'"name" with {sorted(extra)} but no "arguments"')
    arguments = value[keys[0]] if keys else {}
    if isinstance(arguments, str):
        try:
            arguments = _loads(arguments) if arguments.strip() else {}
        except _Malformed as exc:
            raise _Malformed(f"arguments of {name!r} are not JSON: {exc}") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _Malformed(f"arguments of {name!r} are a {type(arguments).__name__}, not an object")
    return [ParsedCall(name=name.strip(), arguments=arguments)]


def _loads(text: str) -> Any:
    """JSON, leniently: strict JSON first, then without trailing commas, then Python-literal syntax."""
    text = text.strip()
    try:
        return json.loads(text, strict=False)
    except ValueError as exc:
        first_error = exc
    candidates = [_TRAILING_COMMA.sub(r"\1", text)]
    if text.startswith("{{") and text.endswith("}}"):
        # the 1.5B chat template prints its example call with doubled braces and the model copies them
        candidates.append(text[1:-1])
    for candidate in candidates:
        try:
            return json.loads(candidate, strict=False)
        except ValueError:
            pass
    for candidate in (text, *candidates[1:]):
        try:
            return _literal(ast.parse(candidate, mode="eval").body)
        except (SyntaxError, ValueError, RecursionError):
            pass
    raise _Malformed(_describe(first_error))


_NAMED_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    """A Python/JSON literal from a syntax tree, without evaluating anything."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | type(None)):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMED_CONSTANTS:
        return _NAMED_CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _literal(node.operand)
        if isinstance(operand, int | float) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(element) for element in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:
        keys = [_literal(key) for key in node.keys]  # type: ignore[arg-type]
        if all(isinstance(key, str | int | float | bool) or key is None for key in keys):
            return {str(key) if not isinstance(key, str) else key: _literal(value)
                    for key, value in zip(keys, node.values, strict=True)}
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted_name(node.value)
        return f"{parent}.{node.attr}" if parent else None
    return None


def _describe(error: ValueError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    return str(error)


def _looks_like_call(text: str) -> bool:
    return '"name"' in text or "'name'" in text or '"function"' in text


def _next_json_start(text: str, position: int) -> int:
    starts = [index for index in (text.find("{", position), text.find("[", position)) if index != -1]
    return min(starts) if starts else -1


def _strip_fence(block: str) -> str:
    body = block.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    pieces, position = [], 0
    for start, end in spans:
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _none_if_blank(text: str | None) -> str | None:
    return text.strip() if text and text.strip() else None
