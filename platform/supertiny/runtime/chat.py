"""One chat turn with a model and its tools, checked: what ``supertiny models chat`` runs."""

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.models.backend import Generation, GenerationOptions
from supertiny.schema import ToolSpec
from supertiny.store.engine import Store


@dataclasses.dataclass
class ChatTurn:
    model: str
    generation: Generation
    problems: list[str]  # validation problems of the parsed calls against the tools' schemas
    load_s: float  # seconds to open the model (0 when it was already open)

    @property
    def tokens_per_s(self) -> float | None:
        if self.generation.latency_s <= 0:
            return None
        return self.generation.completion_tokens / self.generation.latency_s

    def summary(self) -> dict[str, Any]:
        generation, parse = self.generation, self.generation.parse
        return {
            "model": self.model,
            "text": generation.text,
            "tool_calls": [{"name": call.name, "arguments": call.arguments} for call in parse.calls],
            "parse": {"ok": parse.ok, "format": parse.format, "reason": parse.reason},
            "problems": self.problems,
            "finish_reason": generation.finish_reason,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "latency_s": round(generation.latency_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2) if self.tokens_per_s is not None else None,
            "confidence": generation.confidence,
            "load_s": round(self.load_s, 2),
        }


def load_tools_file(path: str | Path) -> list[ToolSpec]:
    """Tools from a JSON file: a list of OpenAI tools (``{"type": "function", "function": {...}}``),
    bare function schemas (``{"name", "description", "parameters"}``), or ``{"tools": [...]}``."""
    from pydantic import ValidationError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidInputError(f"no such tools file: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the tools file {path}: {exc}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("tools", [data])
    if not isinstance(data, list) or not data:
        raise InvalidInputError(f"{path} holds no tools", hint="expected a JSON list of OpenAI tool schemas")
    tools = []
    for index, item in enumerate(data, start=1):
        if isinstance(item, dict) and "function" not in item and "name" in item:
            item = {"type": "function", "function": item}
        try:
            tools.append(ToolSpec.model_validate(item))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "tool"
            expected = 'expected {"type": "function", "function": {"name": ..., "parameters": {...}}}'
            raise InvalidInputError(f"{path}: tool {index} is not a valid tool schema: {where}: "
                                    f"{error['msg']}", hint=expected) from exc
    return tools


def chat_once(store: Store, model: str, message: str, *, tools: list[ToolSpec] | None = None,
              system: str | None = None, options: GenerationOptions | None = None) -> ChatTurn:
    """Open ``model`` (registered name or path), answer ``message`` and validate its tool calls."""
    from supertiny.models.tool_schemas import validate_calls
    from supertiny.runtime.loading import open_model

    if not message.strip():
        raise InvalidInputError("the message is empty")
    started = time.perf_counter()
    chat_model = open_model(store, model)
    load_s = time.perf_counter() - started
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": message})
    generation = chat_model.generate(messages, tools or None, options or GenerationOptions())
    problems = validate_calls(generation.parse.calls, tools or []) if tools else []
    return ChatTurn(model=model, generation=generation, problems=problems, load_s=load_s)
