"""The verifier: a scripted agent that knows the answers passes every task; wrong answers fail, saying why."""

import copy
from typing import Any

import pytest
from supertiny.schema import ParsedCall
from supertiny_helpdesk.domain import HelpdeskDomain
from supertiny_helpdesk.environment import HelpdeskEnvironment
from supertiny_helpdesk.tasks import generate_tasks

DOMAIN = HelpdeskDomain()
TASKS = generate_tasks()


class ScriptedAgent:
    """Calls the real tools in one task's environment and keeps the calls, as the agent loop does."""

    def __init__(self, task):
        self.task = task
        self.environment: HelpdeskEnvironment = DOMAIN.environment(task)
        self.calls: list[ParsedCall] = []

    def call(self, name: str, **arguments: Any) -> Any:
        self.calls.append(ParsedCall(name=name, arguments=arguments))
        return self.environment.execute(self.calls[-1])

    def look_up(self) -> list[Any]:
        lookups = self.task.ground_truth["lookups"]
        return [self.call(lookup["name"], **lookup["arguments"]) for lookup in lookups]

    def solve(self) -> "ScriptedAgent":
        """The oracle: the required lookups, then exactly the expected changes. Any refused call fails."""
        self.look_up()
        changes = self.task.ground_truth["changes"]
        for refund in changes["refunds"]:
            self.call("issue_refund", order_id=refund["order_id"], amount=refund["amount"], reason="as asked")
        for order_id in changes["cancelled"]:
            self.call("cancel_order", order_id=order_id)
        for ticket in changes["tickets"]:
            opened = self.call("create_ticket", customer_id=ticket["customer_id"], subject="Customer problem",
                               priority=ticket["priority"])
            if ticket["status"] != "open":
                self.call("update_ticket", ticket_id=opened["ticket_id"], status=ticket["status"])
        return self

    def verdict(self, replay: bool = False):
        trajectory = [*self.task.messages, {"role": "assistant", "content": "Done, anything else?"}]
        return DOMAIN.verify(self.task, self.calls, trajectory, None if replay else self.environment)


def first(category: str):
    return next(task for task in TASKS if task.category == category)


def test_the_oracle_passes_every_task_in_its_environment_and_on_replay():
    for task in TASKS:
        agent = ScriptedAgent(task).solve()
        assert agent.verdict().verdict == "pass", (task.external_id, agent.verdict().reason)
        assert agent.verdict(replay=True).verdict == "pass", task.external_id


def test_a_wrong_amount_fails():
    agent = ScriptedAgent(first("refund"))
    refund = agent.task.ground_truth["changes"]["refunds"][0]
    agent.look_up()
    agent.call("issue_refund", order_id=refund["order_id"], amount=refund["amount"] - 1, reason="broken")
    for verdict in (agent.verdict(), agent.verdict(replay=True)):
        assert verdict.verdict == "fail"
        assert verdict.reason == (f"missing refund of {refund['amount']:.2f} on {refund['order_id']}; "
                                  f"unexpected refund of {refund['amount'] - 1:.2f} on {refund['order_id']}")


@pytest.mark.parametrize(("off", "verdict"), [(0.01, "pass"), (-0.01, "pass"), (0.02, "fail")])
def test_amounts_within_a_cent_pass(off, verdict):
    task = copy.deepcopy(first("refund"))
    agent = ScriptedAgent(task).solve()
    task.ground_truth["changes"]["refunds"][0]["amount"] += off
    assert agent.verdict().verdict == verdict


def test_an_extra_refund_fails():
    agent = ScriptedAgent(first("refund")).solve()
    expected = agent.task.ground_truth["changes"]["refunds"][0]["order_id"]
    other = next(order for order in agent.environment.desk.orders.values()
                 if order.status == "delivered" and order.order_id != expected)
    agent.call("issue_refund", order_id=other.order_id, amount=1, reason="goodwill")
    assert agent.verdict().reason == f"unexpected refund of 1.00 on {other.order_id}"


def test_a_missing_ticket_fails():
    agent = ScriptedAgent(first("ticket"))
    ticket = agent.task.ground_truth["changes"]["tickets"][0]
    assert agent.verdict().reason == \
        f"missing {ticket['priority']}-priority ticket for {ticket['customer_id']} with status open"


def test_an_escalation_left_open_fails():
    agent = ScriptedAgent(first("escalation"))
    ticket = agent.task.ground_truth["changes"]["tickets"][0]
    agent.look_up()
    agent.call("create_ticket", customer_id=ticket["customer_id"], subject="x", priority=ticket["priority"])
    assert "missing" in agent.verdict().reason and "unexpected" in agent.verdict().reason


def test_a_tool_call_in_a_no_action_task_fails():
    agent = ScriptedAgent(first("no_action"))
    assert agent.verdict().verdict == "pass"
    agent.call("find_customer", email=next(iter(agent.environment.desk.customers.values())).email)
    assert agent.verdict().reason == "no tool was needed, but the agent called find_customer"


def test_skipping_the_customer_check_fails():
    agent = ScriptedAgent(first("cancel"))
    (order_id,) = agent.task.ground_truth["changes"]["cancelled"]
    agent.call("cancel_order", order_id=order_id)
    email = agent.task.ground_truth["lookups"][0]["arguments"]["email"]
    assert agent.verdict().reason == f"never called find_customer(email={email!r})"


@pytest.mark.parametrize("replay", [False, True])
def test_trying_a_forbidden_action_fails_even_when_refused(replay):
    agent = ScriptedAgent(first("refusal")).solve()
    assert agent.verdict(replay).verdict == "pass"
    _, orders = agent.look_up()
    shipped = next(order for order in orders if order["status"] == "shipped")
    with pytest.raises(Exception, match="only"):
        agent.call("issue_refund", order_id=shipped["order_id"], amount=1, reason="x")
    assert agent.verdict(replay).reason == "called issue_refund, but the request calls for no refunds"
