"""Verdicts where no verifier exists: logged traffic as harvestable tasks, and agreement between a task's samples.

A logged request has no ground truth, so its samples are judged by each other: the answer (the set of calls, or
the text when there is none) that at least ``threshold`` of the task's samples give passes, every other answer
fails, and a task without such a majority stays unknown. Agreement is self-consistency, not correctness: a teacher
that is consistently wrong passes.
"""

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from supertiny.domain import Domain, DomainTask, Verdict
from supertiny.errors import InvalidInputError
from supertiny.store import RequestLog, Sample, Store

LOGS_PREFIX = "logs:"


class LoggedTraffic(Domain):
    """The requests a route answered, as tasks: the request's messages and tools, no ground truth."""

    description = "requests logged by the server, judged by agreement between samples"

    def __init__(self, route: str, tasks: Sequence[DomainTask]) -> None:
        self.name = f"{LOGS_PREFIX}{route}"
        self._tasks = list(tasks)

    def tasks(self, split: str) -> Iterator[DomainTask]:
        return (task for task in self._tasks if task.split == split)

    def verify(self, task: DomainTask, calls: list[Any], trajectory: list[dict[str, Any]],
               environment: Any = None) -> Verdict:
        return Verdict("unknown", "no verifier for logged traffic")


def traffic_domain(store: Store, route: str) -> LoggedTraffic:
    """The route's answered requests that offered tools, oldest first, each once."""
    with store.session() as session:
        logs = session.scalars(sa.select(RequestLog).where(RequestLog.route == route, RequestLog.status == 200)
                               .order_by(RequestLog.id)).all()
    tasks = []
    for log in logs:
        request = log.request or {}
        messages, tools = request.get("messages") or [], request.get("tools") or []
        if not messages or not tools:
            continue
        category = (log.detail or {}).get("category") or route
        tasks.append(DomainTask(external_id=log.request_id, split="train", category=str(category),
                                messages=list(messages), tools=list(tools)))
    if not tasks:
        raise InvalidInputError(f"route {route!r} has no logged request with tools to harvest",
                                hint="see `supertiny logs` or serve some traffic first")
    return LoggedTraffic(route, tasks)


def answer_key(sample: Sample) -> str:
    """What two samples must share to agree: their calls (in any order), else their text."""
    if sample.tool_calls:
        calls = sorted(json.dumps(call, sort_keys=True, default=str) for call in sample.tool_calls)
        return "calls:" + json.dumps(calls)
    answer = sample.trajectory[-1] if sample.trajectory else {}
    text = answer.get("content") if isinstance(answer, dict) else None
    return "text:" + " ".join(str(text or "").lower().split())


def judge_by_agreement(samples: list[Sample], threshold: float) -> None:
    """Give the samples whose verifier had no verdict (``unknown``) one by agreement, in place."""
    undecided = [sample for sample in samples if sample.verdict == "unknown" and not sample.error]
    if len(undecided) < 2:
        return
    counts = Counter(answer_key(sample) for sample in undecided)
    key, votes = counts.most_common(1)[0]
    share = votes / len(undecided)
    for sample in undecided:
        if share < threshold:
            sample.verdict_detail = f"no agreement: at most {votes} of {len(undecided)} samples give one answer"
        elif answer_key(sample) == key:
            sample.verdict, sample.verdict_detail = "pass", f"agreed by {votes} of {len(undecided)} samples"
        else:
            sample.verdict = "fail"
            sample.verdict_detail = f"differs from the answer {votes} of {len(undecided)} samples agree on"
