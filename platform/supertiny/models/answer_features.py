"""What a routing gate can see of one answer before anyone knows whether it is right: how sure the model was of
its tokens, what shape the answer has (calls made, tools offered, length), whether its argument values come from
the user's words (a made-up value rarely does), whether the functions it calls are about what the user asked (a
call on an irrelevant request rarely is) and whether a tool it left out fits the request better. The same
features are kept by evaluations and by the cascade's log, so a gate learned from either scores served answers on
the same footing."""

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from supertiny.models.backend import CONFIDENCE_MEASURES, Generation, answer_confidence
from supertiny.schema import ToolSpec
from supertiny.schema.messages import MessageLike

# the floor of a log-probability feature: an answer with a token the model gave no probability is as unsure as this
LOGPROB_FLOOR = -30.0
_WORD = re.compile(r"[a-z0-9]+")
# words of a function's name and description that say nothing of what it is about
_FILLER = frozenset(("a", "an", "and", "the", "of", "for", "to", "in", "on", "by", "with", "from", "at", "is", "are",
                     "be", "this", "that", "it", "its", "as", "or", "get", "set", "calculate", "find", "given",
                     "specified", "specific", "function", "returns", "return", "value", "values"))


def answer_features(messages: Sequence[MessageLike], tools: Sequence[ToolSpec | dict[str, Any]] | None,
                    generation: Generation) -> dict[str, float]:
    """The gate features of ``generation``, the answer to ``messages`` offering ``tools``. The log-probability
    features are missing when the model gave none."""
    calls = generation.parse.calls
    called = {call.name for call in calls}
    user_text = " ".join(_content(message) for message in messages if _role(message) == "user").lower()
    user_words = set(_WORD.findall(user_text))
    features = {
        "calls": float(len(calls)),
        "no_call": float(not calls),
        "tools": float(len(tools or ())),
        "log_tokens": math.log1p(generation.completion_tokens),
        "grounding": _grounding([value for call in calls for value in _leaves(call.arguments)], user_text),
        "relevance": max((_relevance(_tool_words(tools, name), user_words) for name in called), default=0.0),
        # a tool left out that fits the request better hints at the wrong choice (or a wrong refusal)
        "other_relevance": max((_relevance(_tool_words(tools, name), user_words) for name in _names(tools)
                                if name not in called), default=0.0),
    }
    for measure in CONFIDENCE_MEASURES:
        confidence = answer_confidence(generation.token_logprobs, measure)
        if confidence is not None:
            features[f"{measure}_logprob"] = max(LOGPROB_FLOOR, math.log(confidence)) if confidence > 0 \
                else LOGPROB_FLOOR
    return {name: round(value, 4) for name, value in features.items()}


def _role(message: MessageLike) -> str:
    return str(message.get("role") if isinstance(message, dict) else message.role)


def _content(message: MessageLike) -> str:
    content = message.get("content") if isinstance(message, dict) else message.content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _leaves(value: Any) -> Iterable[Any]:
    """The scalar values inside a call's arguments (nested lists and objects flattened)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield value


def _grounding(values: Sequence[Any], user_text: str) -> float:
    """The share of argument values whose text the user wrote (numbers compared as written and as integers);
    1 without values."""
    if not values:
        return 1.0

    def found(value: Any) -> bool:
        if isinstance(value, float) and value.is_integer():
            return str(int(value)) in user_text or str(value) in user_text
        text = str(value).strip().lower()
        return bool(text) and text in user_text

    return sum(found(value) for value in values) / len(values)


def _names(tools: Sequence[ToolSpec | dict[str, Any]] | None) -> list[str]:
    return [str(tool.get("function", {}).get("name") if isinstance(tool, dict) else tool.name) for tool in tools or ()]


def _tool_words(tools: Sequence[ToolSpec | dict[str, Any]] | None, name: str) -> set[str]:
    """The content words of the offered tool called ``name`` (its name split at _ . and case, and its
    description); just the name's words when the tool is not offered."""
    description = ""
    for tool in tools or ():
        function = tool.get("function", {}) if isinstance(tool, dict) else tool.function.model_dump()
        if function.get("name") == name:
            description = str(function.get("description") or "")
            break
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace(".", " ")
    return {word for word in _WORD.findall(f"{spaced} {description}".lower()) if word not in _FILLER}


def _relevance(tool_words: set[str], user_words: set[str]) -> float:
    """The share of the tool's content words the user used (a prefix of four letters counts: 'weather' and
    'weathers')."""
    if not tool_words:
        return 0.0
    stems = {word[:4] for word in user_words if len(word) >= 4}
    return sum(word in user_words or (len(word) >= 4 and word[:4] in stems) for word in tool_words) / len(tool_words)
