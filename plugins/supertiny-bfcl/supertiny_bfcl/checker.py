"""BFCL's AST-match semantics, written from its published rules (bfcl_eval is not imported).

A ground truth is a list of expected calls ``{function: {param: [acceptable values]}}``; ``""`` among
the acceptable values means the parameter may be left out. A call matches an expected call when:
the function name is the exact BFCL name or its OpenAI-valid form; every required parameter is there;
no parameter lies outside the schema or the expected call; every value has the schema's type (an int
is a number, a float is no integer; a value of the acceptable values' own type passes where BFCL has
a "variable" instead of a literal) and equals one acceptable value, an empty string or list standing
for a parameter that may be left out; every expected parameter without ``""`` is given. Strings
compare after BFCL's ``standardize_string`` (lowercase, no spaces or ``,./-_*^``); lists compare in
order, element by element; dicts in a ground truth hold lists of acceptable values per key,
recursively. A category's calls must match the expected calls one to one in any order (simple and
multiple: exactly one); irrelevance passes only without a call.

Where this is more lenient than BFCL's code, it is on purpose and consistent: int -> number widening
and string standardisation apply at every depth, not only at the top level, and the order-free
matching finds a one-to-one assignment whenever one exists (BFCL's is greedy).
"""

import re
from collections.abc import Sequence
from typing import Any

from supertiny.domain import Verdict
from supertiny.schema import ParsedCall

from supertiny_bfcl.data import NO_CALL_CATEGORIES
from supertiny_bfcl.schema import names_match, openai_name

ExpectedCall = dict[str, dict[str, list[Any]]]
_PUNCTUATION = re.compile(r"[ ,./\-_*^]")
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}
_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"), (str, "string"), (int, "integer"), (float, "float"), ((list, tuple), "array"),
    (dict, "object"), (type(None), "null"),
)


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: 'April 1, 2024' == 'april 1 2024'; single quotes read as double."""
    return _PUNCTUATION.sub("", text).lower().replace("'", '"')


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_error(value: Any, schema: dict[str, Any], path: str) -> str | None:
    """None when ``value`` has the schema's JSON type at every depth (no type: any value), else where not."""
    kind = schema.get("type")
    if kind is None:
        return None
    if isinstance(kind, list):
        errors = [_type_error(value, {**schema, "type": one}, path) for one in kind]
        return None if None in errors else errors[0]
    wrong_bool = kind in ("integer", "number") and isinstance(value, bool)
    if wrong_bool or not isinstance(value, _PYTHON_TYPES.get(kind, (object,))):
        return f"{path} {value!r} is {_type_name(value)}, expected {kind}"
    if kind == "array" and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            if error := _type_error(item, schema["items"], f"{path}[{index}]"):
                return error
    if kind == "object" and isinstance(schema.get("properties"), dict):
        for key, item in value.items():
            sub = schema["properties"].get(key)
            if isinstance(sub, dict) and (error := _type_error(item, sub, f"{path}.{key}")):
                return error
    return None


def _agrees_with_schema(option: Any, schema: dict[str, Any]) -> bool:
    """Whether an acceptable value has the schema's type (dicts hold acceptable-value lists: not checked)."""
    if isinstance(option, dict) or (isinstance(option, list) and any(isinstance(x, dict) for x in option)):
        return True
    return _type_error(option, schema, "") is None


def _type_name(value: Any) -> str:
    """A value's JSON type, with float told apart from integer (the distinction a type error is about)."""
    for kinds, name in _TYPE_NAMES:
        if isinstance(value, kinds):
            return name
    return type(value).__name__


def _dict_matches(value: Any, acceptable: dict[str, Any]) -> bool:
    """A dict against a ground-truth dict whose values are lists of acceptable values."""
    if not isinstance(value, dict):
        return False
    options = {key: item if isinstance(item, list) else [item] for key, item in acceptable.items()}
    for key, item in value.items():
        if key not in options:
            return False
        if item == "" and "" in options[key]:
            continue
        if not any(_matches(item, option) for option in options[key] if option != ""):
            return False
    return all(key in value or "" in values for key, values in options.items())


def _matches(value: Any, expected: Any) -> bool:
    """One value against one acceptable value, standardising strings and recursing into containers."""
    if isinstance(expected, dict):
        return _dict_matches(value, expected)
    if isinstance(expected, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(expected)
                and all(_matches(item, option) for item, option in zip(value, expected, strict=True)))
    if isinstance(expected, str):
        return isinstance(value, str) and standardize_string(value) == standardize_string(expected)
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if _is_number(expected):
        return _is_number(value) and value == expected
    return value == expected


def _check_value(param: str, value: Any, acceptable: list[Any], schema: dict[str, Any]) -> str | None:
    """None when ``value`` is an acceptable value of ``param``, else why not."""
    type_error = _type_error(value, schema, param)
    # an empty string or list for a parameter that may be left out counts as leaving it out (as in BFCL)
    if isinstance(value, str | list) and not value and "" in acceptable and type_error is None:
        return None
    outer = {"type": schema["type"]} if "type" in schema else {}
    for option in acceptable:
        if option == "":
            continue
        # BFCL's "variable" rule: where the ground truth itself disagrees with the schema (a variable
        # name where a list is asked for, null for an optional number), its own type is accepted; a
        # different outer type (a variable) compares exactly, as code would
        if not isinstance(option, dict) and _type_error(option, outer, param) is not None:
            if type(value) is type(option) and value == option:
                return None
        elif _matches(value, option) and (type_error is None or not _agrees_with_schema(option, schema)):
            return None
    return type_error or f"{param} {value!r} not in {acceptable!r}"


def check_call(call: ParsedCall, expected: ExpectedCall,
               parameters: dict[str, Any] | None = None) -> str | None:
    """None when ``call`` matches the one expected call, else why not; ``parameters``: its JSON Schema."""
    ((function, acceptable),) = expected.items()
    if not names_match(call.name, function):
        return f"called {call.name!r}, expected {function!r}"
    parameters = parameters or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    for param in parameters.get("required") or []:
        if param not in call.arguments:
            return f"{function}: missing required parameter {param!r}"
    for param, value in call.arguments.items():
        if param not in acceptable or (properties and param not in properties):
            return f"{function}: unexpected parameter {param!r}"
        reason = _check_value(param, value, acceptable[param], properties.get(param) or {})
        if reason:
            return f"{function}: {reason}"
    for param, values in acceptable.items():
        if param not in call.arguments and "" not in values:
            return f"{function}: missing parameter {param!r} (expected one of {values!r})"
    return None


def _plural(count: int) -> str:
    return f"{count} call" if count == 1 else f"{count} calls"


def _schemas(tools: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each tool's parameter schema under its OpenAI-valid name (tools may carry either spelling)."""
    found: dict[str, dict[str, Any]] = {}
    for tool in tools:
        function = tool.get("function", tool)
        found[openai_name(function["name"])] = function.get("parameters") or {}
    return found


def _assign(reasons: list[list[str | None]]) -> tuple[list[int], set[int]]:
    """A one-to-one assignment of expected calls (rows) to the made calls (columns) that match them.

    Augmenting paths, so a valid assignment is found whenever one exists (BFCL's greedy pass can
    miss one when an expected call accepts several values). Returns the unmatched rows and the
    columns assigned.
    """
    owner: dict[int, int] = {}

    def place(row: int, seen: set[int]) -> bool:
        for column, reason in enumerate(reasons[row]):
            if reason is None and column not in seen:
                seen.add(column)
                if column not in owner or place(owner[column], seen):
                    owner[column] = row
                    return True
        return False

    unmatched = [row for row in range(len(reasons)) if not place(row, set())]
    return unmatched, set(owner)


def check_answer(category: str, calls: Sequence[ParsedCall], ground_truth: Sequence[ExpectedCall],
                 tools: Sequence[dict[str, Any]]) -> Verdict:
    """Judge every call an answer made against a BFCL ground truth; ``tools`` (OpenAI) give the types."""
    if category in NO_CALL_CATEGORIES or not ground_truth:
        if calls:
            names = ", ".join(call.name for call in calls)
            return Verdict.failed(f"{category}: {_plural(len(calls))} made ({names}), expected none")
        return Verdict.passed("no call, as expected")
    if len(calls) != len(ground_truth):
        return Verdict.failed(f"{category}: {_plural(len(calls))} made, {len(ground_truth)} expected")
    schemas = _schemas(tools)
    reasons = [[check_call(call, expected, schemas.get(openai_name(next(iter(expected)))))
                for call in calls] for expected in ground_truth]
    unmatched, assigned = _assign(reasons)
    if not unmatched:
        return Verdict.passed(f"{_plural(len(calls))} match" if len(calls) > 1 else "ok")
    if len(ground_truth) == 1:
        return Verdict.failed(str(reasons[0][0]))
    row = unmatched[0]
    function = next(iter(ground_truth[row]))
    left = [column for column in range(len(calls)) if column not in assigned]
    closest = next((reasons[row][column] for column in left if names_match(calls[column].name, function)),
                   f"no call to {function!r} among {', '.join(calls[column].name for column in left)}")
    return Verdict.failed(f"{category}: expected call #{row + 1} of {len(ground_truth)} unmatched: {closest}")
