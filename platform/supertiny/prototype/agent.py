"""The prototype agent: a LangChain tool-calling loop over any chat model.

The teacher is bound to the task's tools; each tool call it makes is executed in the domain's tool
environment and the result fed back, until it answers without a call or runs out of steps. Domains
whose tools do not execute (ground-truth domains like BFCL) stop after the first answer.

The trajectory kept for training is the task's own conversation plus the turns the teacher wrote:
the domain's system prompt and few-shot examples steer the teacher but are not part of the data,
so the student learns to behave that way without them.
"""

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from supertiny.domain import Domain, DomainTask, ToolEnvironment
from supertiny.models.guided_calls import with_guided_instruction
from supertiny.schema import ParsedCall


@dataclasses.dataclass
class AgentRun:
    trajectory: list[dict[str, Any]]  # task messages + generated turns, OpenAI format
    calls: list[ParsedCall]  # every tool call made, in order
    steps: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    environment: ToolEnvironment | None
    finished: bool  # False when max_steps ran out while the model was still calling tools


def task_tools(domain: Domain, task: DomainTask) -> list[dict[str, Any]]:
    """The tools offered for a task: its own, else the domain's."""
    return task.tools or [tool.openai() for tool in domain.tools()]


def prompt_messages(domain: Domain, task: DomainTask,
                    few_shot: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What the teacher sees before the task: the domain's system prompt and few-shot turns (``few_shot``
    instead of the domain's own when given)."""
    return context_messages(domain, task.messages, few_shot)


def context_messages(domain: Domain, conversation: Sequence[dict[str, Any]],
                     few_shot: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The domain's system prompt (unless ``conversation`` brings its own) and few-shot turns (``few_shot``
    instead of the domain's own when given), to put before ``conversation``."""
    messages: list[dict[str, Any]] = []
    has_system = bool(conversation) and conversation[0].get("role") == "system"
    if domain.system_prompt and not has_system:
        messages.append({"role": "system", "content": domain.system_prompt})
    messages.extend(dict(message) for message in (domain.few_shot if few_shot is None else few_shot))
    return messages


def _tool_result_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def run_agent(chat_model: Any, domain: Domain, task: DomainTask, *, use_prompt: bool = True, guided: bool = False,
              **generation_kwargs: Any) -> AgentRun:
    """Run ``chat_model`` (any LangChain chat model with ``bind_tools``) on one task."""
    return run_agent_samples(chat_model, domain, task, 1, use_prompt=use_prompt, guided=guided,
                             **generation_kwargs)[0]


def run_agent_samples(chat_model: Any, domain: Domain, task: DomainTask, n: int, *, use_prompt: bool = True,
                      few_shot: Sequence[dict[str, Any]] | None = None, guided: bool = False,
                      **generation_kwargs: Any) -> list[AgentRun]:
    """``n`` independent runs of ``chat_model`` on one task whose first answers come from one request
    (``n`` samples of the same prompt: an engine computes the prompt once); each run then goes on alone,
    with its own tool environment. ``few_shot`` replaces the domain's few-shot turns. ``guided`` decodes
    every answer under the task's tools' JSON Schemas (:mod:`supertiny.models.guided_calls`): the model
    decides whether and which function to call, then fills the arguments under the function's schema."""
    from langchain_core.messages import convert_to_messages
    from langchain_core.utils.function_calling import convert_to_openai_tool

    tools = [convert_to_openai_tool(tool) for tool in task_tools(domain, task)]
    prefix = prompt_messages(domain, task, few_shot) if use_prompt else []
    messages = prefix + list(task.messages)
    if guided and tools:
        messages = with_guided_instruction(messages)
        generation_kwargs = {**generation_kwargs, "guided": True}
    conversation = convert_to_messages(messages)
    started = time.perf_counter()
    first = _first_answers(chat_model, conversation, tools, n, generation_kwargs)
    first_s = time.perf_counter() - started
    model = chat_model.bind_tools(tools) if tools else chat_model
    if generation_kwargs:
        model = model.bind(**generation_kwargs)
    return [_continue(model, domain, task, conversation, answer, first_s) for answer in first]


def _first_answers(chat_model: Any, conversation: list[Any], tools: list[dict[str, Any]], n: int,
                   generation_kwargs: dict[str, Any]) -> list[Any]:
    """``n`` first answers, asked for in one request where the model takes ``n`` (OpenAI-style models and
    supertiny's own do); a model that gives fewer is asked again, one seed further each time."""
    kwargs = {**generation_kwargs, **({"tools": tools} if tools else {})}
    if n == 1:
        return [chat_model.invoke(conversation, **kwargs)]
    answers = [generation.message for generation in
               chat_model.generate([conversation], n=n, **kwargs).generations[0]][:n]
    seed = generation_kwargs.get("seed")
    while len(answers) < n:
        if seed is not None:
            kwargs["seed"] = seed + len(answers)
        answers.append(chat_model.invoke(conversation, **kwargs))
    return answers


def _continue(model: Any, domain: Domain, task: DomainTask, conversation: list[Any], first: Any,
              first_s: float) -> AgentRun:
    """One run from its first answer: execute its calls and ask again until it answers without one."""
    from langchain_core.messages import AIMessage, ToolMessage, convert_to_openai_messages

    environment = domain.environment(task)
    generated: list[Any] = []
    calls: list[ParsedCall] = []
    prompt_tokens = completion_tokens = steps = 0
    started = time.perf_counter()
    finished = False
    answer: AIMessage | None = first
    while steps < max(1, domain.max_steps):
        steps += 1
        if answer is None:
            answer = model.invoke(conversation + generated)
        usage = answer.usage_metadata or {}
        prompt_tokens += int(usage.get("input_tokens", 0))
        completion_tokens += int(usage.get("output_tokens", 0))
        generated.append(answer)
        step_calls = [ParsedCall(name=call["name"], arguments=call.get("args") or {}) for call in answer.tool_calls]
        calls.extend(step_calls)
        if not step_calls or environment is None:
            finished = True
            break
        for call, raw in zip(step_calls, answer.tool_calls, strict=True):
            try:
                content = _tool_result_text(environment.execute(call))
            except Exception as exc:  # the model sees the error, as a real tool API would show it
                content = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
            generated.append(ToolMessage(content=content, tool_call_id=raw.get("id") or call.name))
        answer = None
    trajectory = list(task.messages) + convert_to_openai_messages(generated)
    return AgentRun(
        trajectory=trajectory,
        calls=calls,
        steps=steps,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=first_s + time.perf_counter() - started,
        environment=environment,
        finished=finished,
    )
