"""The ``bfcl`` domain: BFCL's single-turn Python categories as tasks, judged by BFCL's AST rules."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supertiny.domain import SPLITS, Domain, DomainTask, ToolEnvironment, Verdict, assign_split
from supertiny.errors import InvalidInputError
from supertiny.schema import ParsedCall

from supertiny_bfcl import prompts
from supertiny_bfcl.checker import check_answer
from supertiny_bfcl.data import BFCL_VERSION, CATEGORIES, BfclEntry, load_category
from supertiny_bfcl.schema import openai_tools

SPLIT_WEIGHTS = (0.6, 0.1, 0.3)


class BfclDomain(Domain):
    """BFCL v4 simple_python, multiple, parallel, parallel_multiple and irrelevance.

    Construction is cheap: the wheel is located (or downloaded) and read on the first ``tasks()``.
    ``dotted_names`` keeps BFCL's dotted function names in the tools instead of their OpenAI-valid form.
    """

    name = "bfcl"
    description = (f"Berkeley Function Calling Leaderboard (bfcl-eval {BFCL_VERSION}): single-turn Python "
                   "tool calls, checked by BFCL's AST rules")
    max_steps = 1

    def __init__(self, wheel: str | Path | None = None, dotted_names: bool = False):
        self.wheel = Path(wheel) if wheel else None
        self.dotted_names = dotted_names
        self.system_prompt = prompts.system_prompt(dotted_names)
        self.few_shot = prompts.few_shot(dotted_names)

    def categories(self) -> list[str]:
        return list(CATEGORIES)

    def task(self, entry: BfclEntry) -> DomainTask:
        """One BFCL entry as a task; copies, so callers may change it without touching the cache."""
        return DomainTask(
            external_id=entry.id,
            split=assign_split(entry.id, SPLIT_WEIGHTS),
            category=entry.category,
            messages=copy.deepcopy(entry.turns[0]),
            tools=openai_tools(entry.functions, self.dotted_names),
            ground_truth=copy.deepcopy(entry.ground_truth),
        )

    def tasks(self, split: str) -> Iterator[DomainTask]:
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}", hint=f"known: {', '.join(SPLITS)}")
        for category in CATEGORIES:
            for entry in load_category(category, self.wheel):
                if assign_split(entry.id, SPLIT_WEIGHTS) == split:
                    yield self.task(entry)

    def verify(self, task: DomainTask, calls: list[ParsedCall], trajectory: list[dict[str, Any]],
               environment: ToolEnvironment | None = None) -> Verdict:
        return check_answer(task.category, calls, task.ground_truth or [], task.tools)
