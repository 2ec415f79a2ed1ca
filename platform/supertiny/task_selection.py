"""Which tasks an evaluation runs: a split, optionally a few per category, in a stable order."""

from supertiny.domain import Domain, DomainTask


def select_tasks(domain: Domain, split: str, per_category: int | None = None, limit: int | None = None,
                 categories: tuple[str, ...] = ()) -> list[DomainTask]:
    """Distinct tasks of ``split``; with ``per_category`` the first N of each category; with ``limit``
    at most N in all, taken round-robin over categories so each stays represented."""
    by_category: dict[str, list[DomainTask]] = {}
    seen: set[str] = set()
    for task in domain.tasks(split):
        digest = task.content_hash()
        if digest in seen or (categories and task.category not in categories):
            continue
        seen.add(digest)
        bucket = by_category.setdefault(task.category, [])
        if per_category is None or len(bucket) < per_category:
            bucket.append(task)
    return round_robin(by_category, limit)


def round_robin(by_category: dict[str, list[DomainTask]], limit: int | None = None) -> list[DomainTask]:
    """One task of each category in turn (categories by name), at most ``limit`` in all."""
    chosen: list[DomainTask] = []
    queues = [list(tasks) for _, tasks in sorted(by_category.items())]
    while any(queues) and (limit is None or len(chosen) < limit):
        for queue in queues:
            if queue and (limit is None or len(chosen) < limit):
                chosen.append(queue.pop(0))
    return chosen
