"""The domain API: what a domain plugin registers through ``register_domains``.

A domain has a name, tools (OpenAI tool schemas, made from pydantic models, typed Python functions
or LangChain tools with :func:`tool_schema`), a task source with deterministic train / dev / test
splits and categories, and a verifier returning pass / fail / unknown with a reason. Executable
domains also give each task a fresh :class:`ToolEnvironment` in which the agent's calls run.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from supertiny.schema import ParsedCall, ToolSpec

SPLITS = ("train", "dev", "test")
VerdictName = Literal["pass", "fail", "unknown"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: VerdictName
    reason: str = ""

    @classmethod
    def passed(cls, reason: str = "ok") -> "Verdict":
        return cls("pass", reason)

    @classmethod
    def failed(cls, reason: str) -> "Verdict":
        return cls("fail", reason)


@dataclasses.dataclass
class DomainTask:
    """One task: the conversation so far (OpenAI messages), the tools offered (none: the domain's own
    ``Domain.tools()``), the truth if known."""

    external_id: str
    split: str
    category: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ground_truth: Any = None

    def content_hash(self) -> str:
        """Identity of the task's content: equal tasks are harvested once."""
        payload = json.dumps([self.messages, self.tools, self.ground_truth], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


class ToolEnvironment:
    """The state behind an executable domain's tools, fresh for each task."""

    def execute(self, call: ParsedCall) -> Any:
        """Run one call and return its result (JSON-serialisable); raise to report an error to the model."""
        raise NotImplementedError


class ToolCallError(Exception):
    """A call the tools refuse (unknown tool, bad arguments); its message is written for the model."""


class FunctionEnvironment(ToolEnvironment):
    """A tool environment over plain Python: ``state``'s public methods are the tools (the same typed,
    documented methods :func:`tool_schema` turns into the schemas). A call runs the method of its name with its
    arguments checked and coerced against the signature; an unknown tool or bad arguments raise
    :class:`ToolCallError` with a message the model reads."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.functions = {name: getattr(state, name) for name in dir(state)
                          if not name.startswith("_") and callable(getattr(state, name))}

    def execute(self, call: ParsedCall) -> Any:
        import pydantic

        function = self.functions.get(call.name)
        if function is None:
            raise ToolCallError(f"unknown tool {call.name!r}; the tools are {', '.join(sorted(self.functions))}")
        try:
            return pydantic.validate_call(function)(**call.arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
            raise ToolCallError(f"invalid arguments for {call.name}: {problems}") from None


class Domain:
    """Base class of a domain. Subclasses set ``name`` and implement ``tasks`` and ``verify``."""

    name: str = ""
    description: str = ""
    # prepended to every task's conversation; a domain's prompt engineering lives here
    system_prompt: str | None = None
    # example turns (OpenAI messages) placed after the system prompt
    few_shot: Sequence[dict[str, Any]] = ()
    # agent steps allowed: 1 for single-shot tool calling, more for call → result → call → answer
    max_steps: int = 1

    def tools(self) -> list[ToolSpec]:
        """Domain-wide tools; tasks may also carry their own (``DomainTask.tools``)."""
        return []

    def categories(self) -> list[str]:
        return sorted({task.category for split in SPLITS for task in self.tasks(split)})

    def tasks(self, split: str) -> Iterator[DomainTask]:
        raise NotImplementedError

    def environment(self, task: DomainTask) -> ToolEnvironment | None:
        """A fresh tool environment for ``task``, or None when the domain's tools do not execute."""
        return None

    def verify(self, task: DomainTask, calls: list[ParsedCall], trajectory: list[dict[str, Any]],
               environment: ToolEnvironment | None = None) -> Verdict:
        """Judge the agent's answer: ``calls`` are every tool call it made, in order."""
        raise NotImplementedError


def assign_split(key: str, weights: tuple[float, float, float] = (0.6, 0.1, 0.3)) -> str:
    """A deterministic train / dev / test split from a stable key (the same on every machine)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for split, weight in zip(SPLITS, weights, strict=True):
        cumulative += weight
        if bucket < cumulative:
            return split
    return SPLITS[-1]


def tool_schema(tool: Any) -> ToolSpec:
    """An OpenAI tool schema from a pydantic model, a typed Python function, a LangChain tool or a dict."""
    if isinstance(tool, ToolSpec):
        return tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return ToolSpec.model_validate(convert_to_openai_tool(tool))
