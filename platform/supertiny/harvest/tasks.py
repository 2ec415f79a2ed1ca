"""Domain tasks in the store: synced once, deduplicated by content hash."""

from typing import Any

import sqlalchemy as sa

from supertiny.domain import Domain, DomainTask
from supertiny.errors import InvalidInputError
from supertiny.prototype.agent import task_tools
from supertiny.store import Store, Task
from supertiny.task_selection import select_tasks


def check_tool_schemas(tools: list[dict[str, Any]], where: str) -> None:
    """Raise InvalidInputError unless every tool is a well-formed OpenAI tool with a valid JSON Schema."""
    import jsonschema

    from supertiny.models.tool_schemas import normalize_json_schema
    from supertiny.schema import ToolSpec

    for tool in tools:
        try:
            spec = ToolSpec.model_validate(tool)
            jsonschema.Draft202012Validator.check_schema(normalize_json_schema(spec.function.parameters))
        except Exception as exc:
            name = (tool.get("function") or {}).get("name", "?") if isinstance(tool, dict) else "?"
            reason = str(exc).splitlines()[0]
            raise InvalidInputError(f"{where}: tool {name!r} has an invalid schema: {reason}") from exc


def sync_tasks(store: Store, domain: Domain, split: str, limit: int | None = None) -> list[int]:
    """Store the split's tasks and return their ids in harvest order.

    Tasks with the same content hash are one task, stored and harvested once. With ``limit``, the
    first N distinct tasks taken round-robin over the categories, so a small harvest covers them all.
    """
    chosen: dict[str, DomainTask] = {}
    for task in select_tasks(domain, split, limit=limit):
        check_tool_schemas(task_tools(domain, task), f"domain {domain.name!r}, task {task.external_id!r}")
        chosen[task.content_hash()] = task
    if not chosen:
        raise InvalidInputError(f"domain {domain.name!r} has no tasks in split {split!r}")
    with store.session() as session:
        existing = dict(session.execute(
            sa.select(Task.content_hash, Task.id).where(Task.domain == domain.name,
                                                        Task.content_hash.in_(list(chosen)))
        ).all())
        for digest, task in chosen.items():
            if digest not in existing:
                row = Task(domain=domain.name, external_id=task.external_id, split=task.split,
                           category=task.category, messages=task.messages, tools=task.tools,
                           ground_truth=task.ground_truth, content_hash=digest)
                session.add(row)
                session.flush()
                existing[digest] = row.id
    return [existing[digest] for digest in chosen]


def domain_task(row: Task) -> DomainTask:
    return DomainTask(external_id=row.external_id or str(row.id), split=row.split, category=row.category,
                      messages=row.messages, tools=row.tools, ground_truth=row.ground_truth)
