"""The ``helpdesk`` domain: a support agent for an online shop, judged by what it changed in the shop."""

import contextlib
from collections.abc import Iterator
from typing import Any

from supertiny.domain import SPLITS, Domain, DomainTask, ToolEnvironment, Verdict
from supertiny.errors import InvalidInputError
from supertiny.schema import ParsedCall, ToolSpec

from supertiny_helpdesk import prompts
from supertiny_helpdesk.environment import HelpdeskEnvironment
from supertiny_helpdesk.service import HelpdeskError, HelpdeskService
from supertiny_helpdesk.tasks import CATEGORIES, generate_tasks
from supertiny_helpdesk.tools import tool_specs
from supertiny_helpdesk.verify import find_problems


class HelpdeskDomain(Domain):
    name = "helpdesk"
    description = ("Customer support for an online shop: lookups, refunds, cancellations and tickets, "
                   "judged on the shop's final state")
    system_prompt = prompts.SYSTEM_PROMPT_WITH_EXAMPLE
    max_steps = 6

    def tools(self) -> list[ToolSpec]:
        return list(tool_specs())

    def categories(self) -> list[str]:
        return list(CATEGORIES)

    def tasks(self, split: str) -> Iterator[DomainTask]:
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}", hint=f"known: {', '.join(SPLITS)}")
        return (task for task in generate_tasks() if task.split == split)

    def environment(self, task: DomainTask) -> HelpdeskEnvironment:
        return HelpdeskEnvironment(HelpdeskService.seeded(task.ground_truth["seed"]))

    def verify(self, task: DomainTask, calls: list[ParsedCall], trajectory: list[dict[str, Any]],
               environment: ToolEnvironment | None = None) -> Verdict:
        """Pass iff the shop changed exactly as the task expects and the required lookups were made."""
        if not isinstance(environment, HelpdeskEnvironment):  # only the calls are known: replay them
            environment = self.environment(task)
            for call in calls:
                with contextlib.suppress(HelpdeskError):  # the agent saw this error too
                    environment.execute(call)
        problems = find_problems(task.ground_truth, calls, environment.desk.changes())
        return Verdict.failed("; ".join(problems)) if problems else Verdict.passed()
