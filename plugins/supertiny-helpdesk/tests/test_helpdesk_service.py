"""The shop's service: seeded data, what each method does, and the errors it raises."""

import math

import pytest
from supertiny_helpdesk.service import HelpdeskError, HelpdeskService


@pytest.fixture
def desk() -> HelpdeskService:
    return HelpdeskService.seeded(7)


def orders_in(desk: HelpdeskService, status: str):
    return [order for order in desk.orders.values() if order.status == status]


def test_seeded_shops_are_deterministic_and_differ_by_seed():
    assert HelpdeskService.seeded(7).changes() == {"refunds": [], "cancelled": [], "tickets": []}
    assert HelpdeskService.seeded(7).orders == HelpdeskService.seeded(7).orders
    assert HelpdeskService.seeded(7).orders != HelpdeskService.seeded(8).orders


@pytest.mark.parametrize("seed", range(50))
def test_every_customer_has_an_order_in_each_live_status_and_a_unique_email(seed):
    desk = HelpdeskService.seeded(seed)
    assert len({customer.email for customer in desk.customers.values()}) == len(desk.customers)
    for customer in desk.customers.values():
        orders = desk.list_orders(customer.customer_id)
        assert {"processing", "shipped", "delivered"} <= {order.status for order in orders}
        assert len({order.product for order in orders}) == len(orders)
        assert [order.placed_on for order in orders] == sorted((o.placed_on for o in orders), reverse=True)


def test_find_customer_ignores_case_and_spaces(desk):
    customer = next(iter(desk.customers.values()))
    assert desk.find_customer(f"  {customer.email.upper()} ") == customer
    with pytest.raises(HelpdeskError, match=r"no customer with email 'nobody@example\.com'"):
        desk.find_customer("nobody@example.com")


def test_list_orders_filters_by_status_and_checks_its_input(desk):
    customer_id = next(iter(desk.customers))
    assert all(order.status == "delivered" for order in desk.list_orders(customer_id, "delivered"))
    with pytest.raises(HelpdeskError, match="no customer with id 'C-0000'"):
        desk.list_orders("C-0000")
    with pytest.raises(HelpdeskError, match="order status must be one of"):
        desk.list_orders(customer_id, "lost")


def test_refunds_add_up_to_the_order_total_and_no_further(desk):
    order = orders_in(desk, "delivered")[0]
    first = desk.issue_refund(order.order_id, 5, "scratched")
    assert (first.refund_id, first.amount, order.refunded) == ("R-0001", 5.0, 5.0)
    with pytest.raises(HelpdeskError, match=f"exceeds the {order.total - 5:.2f} left on {order.order_id}"):
        desk.issue_refund(order.order_id, order.total, "broken")
    desk.issue_refund(order.order_id, round(order.total - 5, 2), "broken")
    assert desk.changes()["refunds"] == [{"order_id": order.order_id, "amount": 5.0},
                                         {"order_id": order.order_id, "amount": round(order.total - 5, 2)}]


@pytest.mark.parametrize(("amount", "reason", "message"), [
    (0, "late", "must be a positive number"),
    (-3, "late", "must be a positive number"),
    (math.nan, "late", "must be a positive number"),
    (1, "  ", "needs a reason"),
])
def test_refund_rejects_bad_values(desk, amount, reason, message):
    with pytest.raises(HelpdeskError, match=message):
        desk.issue_refund(orders_in(desk, "delivered")[0].order_id, amount, reason)
    assert desk.refunds == []


@pytest.mark.parametrize("status", ["processing", "shipped"])
def test_only_delivered_orders_are_refunded(desk, status):
    order = orders_in(desk, status)[0]
    with pytest.raises(HelpdeskError, match=f"is {status}; only delivered orders can be refunded"):
        desk.issue_refund(order.order_id, 1, "changed my mind")


def test_unknown_ids_are_named_in_the_error(desk):
    with pytest.raises(HelpdeskError, match="no order with id 'ORD-1'"):
        desk.issue_refund("ORD-1", 1, "x")
    with pytest.raises(HelpdeskError, match="no ticket with id 'T-9'"):
        desk.update_ticket("T-9", "closed")


def test_only_processing_orders_are_cancelled(desk):
    order = orders_in(desk, "processing")[0]
    assert desk.cancel_order(order.order_id).status == "cancelled"
    with pytest.raises(HelpdeskError, match="is cancelled; only processing orders can be cancelled"):
        desk.cancel_order(order.order_id)
    with pytest.raises(HelpdeskError, match="is shipped"):
        desk.cancel_order(orders_in(desk, "shipped")[0].order_id)
    assert desk.changes()["cancelled"] == [order.order_id]


def test_tickets_open_update_and_validate(desk):
    customer_id = next(iter(desk.customers))
    ticket = desk.create_ticket(customer_id, " Blender arrived damaged ", "high")
    assert (ticket.ticket_id, ticket.subject, ticket.status) == ("T-1001", "Blender arrived damaged", "open")
    desk.update_ticket(ticket.ticket_id, "escalated")
    escalated = {"customer_id": customer_id, "priority": "high", "status": "escalated"}
    assert desk.changes()["tickets"] == [escalated]
    with pytest.raises(HelpdeskError, match="priority must be one of low, normal, high, urgent, not 'asap'"):
        desk.create_ticket(customer_id, "x", "asap")
    with pytest.raises(HelpdeskError, match="ticket status must be one of"):
        desk.update_ticket(ticket.ticket_id, "done")
    with pytest.raises(HelpdeskError, match="needs a subject"):
        desk.create_ticket(customer_id, "", "low")
