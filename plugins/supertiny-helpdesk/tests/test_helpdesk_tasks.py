"""The task generator and the domain around it: deterministic, varied, split, and registered as a plugin."""

import collections
import importlib.metadata
import json
import time

import pytest
from supertiny.domain import SPLITS, Domain
from supertiny.errors import InvalidInputError
from supertiny_helpdesk import plugin
from supertiny_helpdesk.domain import HelpdeskDomain
from supertiny_helpdesk.service import HelpdeskService
from supertiny_helpdesk.tasks import CATEGORIES, generate_tasks

TASKS = generate_tasks()


def test_generation_is_deterministic():
    again = generate_tasks()
    assert [task.content_hash() for task in again] == [task.content_hash() for task in TASKS]
    assert [task.split for task in again] == [task.split for task in TASKS]


def test_at_least_500_unique_tasks_in_every_category_and_split():
    assert len(TASKS) >= 500
    assert len({task.external_id for task in TASKS}) == len(TASKS)
    assert len({task.messages[0]["content"] for task in TASKS}) == len(TASKS)
    assert len({task.content_hash() for task in TASKS}) == len(TASKS)
    counts = collections.Counter((task.category, task.split) for task in TASKS)
    assert {category for category, _ in counts} == set(CATEGORIES) == {
        "lookup", "ticket", "refund", "cancel", "escalation", "refusal", "no_action"}
    assert all(counts[category, split] > 0 for category in CATEGORIES for split in SPLITS)


def test_tasks_are_single_and_multi_step():
    def steps(task):  # tool calls an agent needs: lookups, changes, plus the update of an escalated ticket
        truth = task.ground_truth
        changes = truth["changes"]
        escalations = sum(ticket["status"] != "open" for ticket in changes["tickets"])
        return len(truth["lookups"]) + sum(map(len, changes.values())) + escalations

    by_category = collections.defaultdict(set)
    for task in TASKS:
        by_category[task.category].add(steps(task))
    assert by_category == {"lookup": {1}, "ticket": {1}, "refund": {2}, "cancel": {2}, "escalation": {3},
                           "refusal": {2}, "no_action": {0}}


def test_ground_truth_is_json_and_follows_from_the_message():
    for task in TASKS:
        truth = task.ground_truth
        assert json.loads(json.dumps(truth)) == truth
        assert [message["role"] for message in task.messages] == ["user"] and task.tools == []
        text = task.messages[0]["content"]
        desk = HelpdeskService.seeded(truth["seed"])
        for lookup in truth["lookups"]:
            if lookup["name"] in ("find_customer", "get_order"):  # what the customer must have told us
                assert next(iter(lookup["arguments"].values())) in text, task.external_id
        for refund in truth["changes"]["refunds"]:
            order = desk.orders[refund["order_id"]]
            assert order.product in text and order.status == "delivered"
            assert refund["amount"] == order.total or f"${refund['amount']:.0f}" in text
        for order_id in truth["changes"]["cancelled"]:
            assert desk.orders[order_id].product in text and desk.orders[order_id].status == "processing"
        for ticket in truth["changes"]["tickets"]:
            customer = desk.customers[ticket["customer_id"]]
            assert customer.customer_id in text or customer.email in text


def test_the_domain_serves_the_splits():
    domain = HelpdeskDomain()
    assert isinstance(domain, Domain) and domain.name == "helpdesk" and domain.max_steps == 6
    assert domain.categories() == list(CATEGORIES)
    assert [tool.name for tool in domain.tools()][:2] == ["find_customer", "list_orders"]
    by_split = {split: [task.external_id for task in domain.tasks(split)] for split in SPLITS}
    every_id = [external_id for ids in by_split.values() for external_id in ids]
    assert sorted(every_id) == sorted(task.external_id for task in TASKS)
    assert len(by_split["train"]) > len(by_split["test"]) > len(by_split["dev"]) > 0
    with pytest.raises(InvalidInputError, match="unknown split 'validation'"):
        domain.tasks("validation")


def test_the_plugin_registers_the_domain_cheaply():
    (entry_point,) = importlib.metadata.entry_points(group="supertiny", name="helpdesk")
    assert entry_point.load() is plugin
    registered = []
    started = time.perf_counter()
    plugin.register_domains(register=registered.append)
    assert time.perf_counter() - started < 0.05
    assert [domain.name for domain in registered] == ["helpdesk"]
