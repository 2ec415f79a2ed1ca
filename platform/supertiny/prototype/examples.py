"""Few-shot examples taken from verified answers: the passing samples of an earlier harvest run, shown to the
teacher as worked examples before each task (the prototype's prompt built from its own best answers).

Examples are chosen round-robin over the categories, the shortest passing answer of each task first, and never
from the task being answered. Each example's user turn starts by naming the example's own functions, so that a
small model does not mistake them for the task's tools; an answer whose calls got no tool result (single-shot
domains) is followed by an ``ok`` result for each call, as a chat template expects.
"""

import dataclasses
import hashlib
import json
from typing import Any

import sqlalchemy as sa

from supertiny.errors import InvalidInputError
from supertiny.store import Sample, Store, Task


@dataclasses.dataclass(frozen=True)
class Example:
    task_id: int
    category: str
    turns: tuple[dict[str, Any], ...]  # the example conversation, ready to put before a task


def verified_examples(store: Store, run_id: int, count: int) -> list[Example]:
    """Up to ``count`` + 1 examples from the passing samples of harvest run ``run_id`` (one spare, to replace an
    example that is the task being answered)."""
    with store.session() as session:
        rows = session.execute(
            sa.select(Sample.task_id, Sample.trajectory, Task.category, Task.tools, Task.messages)
            .join(Task, Task.id == Sample.task_id)
            .where(Sample.run_id == run_id, Sample.verdict == "pass")
            .order_by(Sample.task_id, Sample.sample_index)).all()
    if not rows:
        raise InvalidInputError(f"harvest run {run_id} has no passing sample to take examples from",
                                hint="see `supertiny harvest status RUN`")
    best: dict[int, tuple[int, str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for task_id, trajectory, category, tools, messages in rows:
        answer = trajectory[len(messages):]
        size = len(json.dumps(answer))
        if task_id not in best or size < best[task_id][0]:
            best[task_id] = (size, category, messages, answer, tools)
    by_category: dict[str, list[int]] = {}
    for task_id, (_, category, *_) in sorted(best.items(), key=lambda item: (item[1][0], item[0])):
        by_category.setdefault(category, []).append(task_id)
    order = [task_ids[index] for index in range(max(map(len, by_category.values())))
             for _, task_ids in sorted(by_category.items()) if index < len(task_ids)]
    examples = []
    for number, task_id in enumerate(order[: count + 1], start=1):
        _, category, messages, answer, tools = best[task_id]
        examples.append(Example(task_id, category, tuple(_turns(number, messages, answer, tools))))
    return examples


def examples_for(examples: list[Example], task_id: int | None, count: int) -> list[dict[str, Any]]:
    """The turns of the first ``count`` examples that are not ``task_id`` itself."""
    chosen = [example for example in examples if example.task_id != task_id][:count]
    return [dict(turn) for example in chosen for turn in example.turns]


def examples_digest(examples: list[Example]) -> str:
    return hashlib.sha256(json.dumps([example.turns for example in examples], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def _signature(tool: dict[str, Any]) -> str:
    function = tool.get("function", tool)
    parameters = ", ".join((function.get("parameters") or {}).get("properties") or {})
    return f"{function.get('name')}({parameters})"


def _turns(number: int, messages: list[dict[str, Any]], answer: list[dict[str, Any]],
           tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    conversation = [dict(message) for message in messages if message.get("role") != "system"]
    listed = ", ".join(_signature(tool) for tool in tools)
    for message in conversation:
        if message.get("role") == "user":
            message["content"] = f"(Example. Functions: {listed})\n{message.get('content') or ''}"
            break
    turns = conversation
    renamed: dict[str, str] = {}
    for index, message in enumerate(json.loads(json.dumps(answer))):
        calls = message.get("tool_calls") or []
        for position, call in enumerate(calls):  # ids unique across examples, as a template expects
            renamed[str(call.get("id"))] = call["id"] = f"call_example{number}_{index}_{position}"
        if message.get("role") == "tool":
            message["tool_call_id"] = renamed.get(str(message.get("tool_call_id")), message.get("tool_call_id"))
        turns.append(message)
        answered = index + 1 < len(answer) and answer[index + 1].get("role") == "tool"
        if calls and not answered:
            turns.extend({"role": "tool", "tool_call_id": call["id"], "content": '{"status": "ok"}'}
                         for call in calls)
    return turns
