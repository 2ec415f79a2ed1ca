"""The tools the agent calls: typed methods whose signatures and docstrings become OpenAI schemas.

Write the docstrings for the model: they are the only documentation it gets. Results are plain
JSON-ready dicts; errors are the service's :class:`HelpdeskError`, whose message the model reads.
"""

import dataclasses
import functools
from typing import Any

from supertiny.domain import tool_schema
from supertiny.schema import ToolSpec

from supertiny_helpdesk.service import HelpdeskService, OrderStatus, Priority, TicketStatus

TOOL_NAMES = ("find_customer", "list_orders", "get_order", "issue_refund", "cancel_order", "create_ticket",
              "update_ticket")


class HelpdeskTools:
    """The agent's view of one desk: each method in ``TOOL_NAMES`` is one tool."""

    def __init__(self, desk: HelpdeskService):
        self.desk = desk

    def find_customer(self, email: str) -> dict[str, Any]:
        """Find a customer by email address. Use it to verify who you are talking to.

        Args:
            email: The customer's email address.
        """
        return dataclasses.asdict(self.desk.find_customer(email))

    def list_orders(self, customer_id: str, status: OrderStatus | None = None) -> list[dict[str, Any]]:
        """List a customer's orders, newest first.

        Args:
            customer_id: The customer's id, e.g. "C-1042".
            status: Only list orders in this status.
        """
        return [dataclasses.asdict(order) for order in self.desk.list_orders(customer_id, status)]

    def get_order(self, order_id: str) -> dict[str, Any]:
        """Look up one order: product, total, status, date placed and amount already refunded.

        Args:
            order_id: The order id, e.g. "ORD-10042".
        """
        return dataclasses.asdict(self.desk.get_order(order_id))

    def issue_refund(self, order_id: str, amount: float, reason: str) -> dict[str, Any]:
        """Refund part or all of a delivered order to the customer's original payment method.

        Args:
            order_id: The order to refund.
            amount: Amount in USD, at most what is left to refund on the order.
            reason: Why the customer is refunded, in a few words.
        """
        return dataclasses.asdict(self.desk.issue_refund(order_id, amount, reason))

    def cancel_order(self, order_id: str) -> dict[str, Any]:
        """Cancel an order that has not shipped yet (status "processing").

        Args:
            order_id: The order to cancel.
        """
        return dataclasses.asdict(self.desk.cancel_order(order_id))

    def create_ticket(self, customer_id: str, subject: str, priority: Priority) -> dict[str, Any]:
        """Open a support ticket for a customer's problem; it starts with status "open".

        Args:
            customer_id: The customer's id.
            subject: A one-line summary of the problem.
            priority: How urgent the problem is, following the support policy.
        """
        return dataclasses.asdict(self.desk.create_ticket(customer_id, subject, priority))

    def update_ticket(self, ticket_id: str, status: TicketStatus) -> dict[str, Any]:
        """Change a ticket's status, e.g. to "escalated" to hand it to a supervisor.

        Args:
            ticket_id: The ticket id, e.g. "T-1001".
            status: The new status.
        """
        return dataclasses.asdict(self.desk.update_ticket(ticket_id, status))


@functools.cache
def tool_specs() -> tuple[ToolSpec, ...]:
    """The OpenAI schema of every tool, made from the methods above."""
    tools = HelpdeskTools(HelpdeskService())
    return tuple(tool_schema(getattr(tools, name)) for name in TOOL_NAMES)
