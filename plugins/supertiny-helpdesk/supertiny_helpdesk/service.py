"""The shop's support backend: customers, orders, tickets and refunds, in memory.

Plain business logic that knows nothing about models or supertiny. Every method checks its input
and raises :class:`HelpdeskError` with a message written for whoever called it, the agent included.
"""

import dataclasses
import datetime
import math
import random
from collections.abc import Iterable
from typing import Literal, get_args

OrderStatus = Literal["processing", "shipped", "delivered", "cancelled"]
Priority = Literal["low", "normal", "high", "urgent"]
TicketStatus = Literal["open", "pending", "escalated", "closed"]
TODAY = datetime.date(2024, 11, 4)  # seeded shops date from a fixed day, so they never change
# when orders in each status were placed (every delivered order is inside the 30-day return window)
DAYS_AGO = {"processing": (0, 1), "shipped": (2, 5), "delivered": (7, 25), "cancelled": (3, 60)}

FIRST_NAMES = ("Ava", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Grace", "Hiro", "Isabel", "Jonas", "Kemi",
               "Liam", "Maya", "Noah", "Olivia", "Priya", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera",
               "Wei", "Yusuf", "Zoe")
LAST_NAMES = ("Andersen", "Brooks", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Hughes", "Ivanova",
              "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Patel", "Rossi", "Schmidt",
              "Tanaka", "Varga", "Walsh", "Yilmaz")
# product, lowest and highest price in USD
PRODUCTS = (("espresso machine", 89, 499), ("blender", 29, 149), ("air fryer", 59, 199),
            ("electric kettle", 19, 89), ("toaster", 24, 99), ("stand mixer", 149, 449),
            ("rice cooker", 35, 129), ("chef's knife", 25, 180), ("cast iron skillet", 20, 79),
            ("coffee grinder", 25, 159), ("desk lamp", 18, 89), ("office chair", 120, 399),
            ("robot vacuum", 149, 599), ("bath towel set", 22, 79), ("duvet cover", 35, 129),
            ("water filter pitcher", 19, 49), ("food processor", 49, 249), ("dinnerware set", 39, 189),
            ("standing fan", 29, 119), ("air purifier", 79, 349), ("cookware set", 89, 399),
            ("waffle maker", 22, 79), ("bookshelf", 49, 229), ("memory foam pillow", 19, 69))


class HelpdeskError(Exception):
    """A request the desk refuses: unknown ids, actions the shop's rules forbid, bad values."""


@dataclasses.dataclass
class Customer:
    customer_id: str
    name: str
    email: str


@dataclasses.dataclass
class Order:
    order_id: str
    customer_id: str
    product: str
    total: float
    status: OrderStatus
    placed_on: str  # ISO date
    refunded: float = 0.0


@dataclasses.dataclass
class Ticket:
    ticket_id: str
    customer_id: str
    subject: str
    priority: Priority
    status: TicketStatus = "open"


@dataclasses.dataclass
class Refund:
    refund_id: str
    order_id: str
    amount: float
    reason: str


class HelpdeskService:
    """One shop's support desk. It records every change it makes, for the verifier to read back."""

    def __init__(self, customers: Iterable[Customer] = (), orders: Iterable[Order] = ()):
        self.customers = {customer.customer_id: customer for customer in customers}
        self.orders = {order.order_id: order for order in orders}
        self.tickets: dict[str, Ticket] = {}
        self.refunds: list[Refund] = []
        self.cancelled: list[str] = []

    @classmethod
    def seeded(cls, seed: int, customers: int = 3) -> "HelpdeskService":
        """A small shop, the same for the same seed. Each customer has a processing, a shipped and a
        delivered order, sometimes one more, each of a different product."""
        rng = random.Random(seed)
        people, orders = [], []
        names = rng.sample([(first, last) for first in FIRST_NAMES for last in LAST_NAMES], customers)
        customer_ids = rng.sample(range(1000, 10000), customers)
        order_ids = iter(rng.sample(range(10000, 100000), customers * 4))
        for (first, last), number in zip(names, customer_ids, strict=True):
            # first names have distinct initials, so every address is unique
            local = rng.choice([f"{first}.{last}", f"{first[0]}{last}", f"{last}.{first}"]).lower()
            email = f"{local}@example.{rng.choice(['com', 'org', 'net'])}"
            people.append(Customer(f"C-{number}", f"{first} {last}", email))
            statuses = ["processing", "shipped", "delivered", *rng.choice([[], ["delivered"], ["cancelled"]])]
            products = rng.sample(PRODUCTS, len(statuses))
            for status, (product, low, high) in zip(statuses, products, strict=True):
                placed_on = (TODAY - datetime.timedelta(days=rng.randint(*DAYS_AGO[status]))).isoformat()
                orders.append(Order(f"ORD-{next(order_ids)}", f"C-{number}", product,
                                    round(rng.uniform(low, high), 2), status, placed_on))
        return cls(people, orders)

    def find_customer(self, email: str) -> Customer:
        wanted = email.strip().lower()
        for customer in self.customers.values():
            if customer.email == wanted:
                return customer
        raise HelpdeskError(f"no customer with email {email!r}")

    def customer(self, customer_id: str) -> Customer:
        if customer_id not in self.customers:
            raise HelpdeskError(f"no customer with id {customer_id!r}")
        return self.customers[customer_id]

    def list_orders(self, customer_id: str, status: OrderStatus | None = None) -> list[Order]:
        self.customer(customer_id)
        if status is not None:
            _check_choice("order status", status, OrderStatus)
        orders = [order for order in self.orders.values() if order.customer_id == customer_id]
        return sorted((order for order in orders if status in (None, order.status)),
                      key=lambda order: order.placed_on, reverse=True)

    def get_order(self, order_id: str) -> Order:
        if order_id not in self.orders:
            raise HelpdeskError(f"no order with id {order_id!r}")
        return self.orders[order_id]

    def issue_refund(self, order_id: str, amount: float, reason: str) -> Refund:
        order = self.get_order(order_id)
        amount = round(amount, 2)
        _require_status(order, "delivered", "refunded")
        if not math.isfinite(amount) or amount <= 0:
            raise HelpdeskError("the refund amount must be a positive number")
        left = round(order.total - order.refunded, 2)
        if amount > left:
            raise HelpdeskError(f"a refund of {amount:.2f} exceeds the {left:.2f} left on {order_id}")
        if not reason.strip():
            raise HelpdeskError("a refund needs a reason")
        order.refunded = round(order.refunded + amount, 2)
        refund = Refund(f"R-{len(self.refunds) + 1:04d}", order_id, amount, reason.strip())
        self.refunds.append(refund)
        return refund

    def cancel_order(self, order_id: str) -> Order:
        order = self.get_order(order_id)
        _require_status(order, "processing", "cancelled")
        order.status = "cancelled"
        self.cancelled.append(order_id)
        return order

    def create_ticket(self, customer_id: str, subject: str, priority: Priority) -> Ticket:
        self.customer(customer_id)
        _check_choice("priority", priority, Priority)
        if not subject.strip():
            raise HelpdeskError("a ticket needs a subject")
        ticket = Ticket(f"T-{len(self.tickets) + 1001}", customer_id, subject.strip(), priority)
        self.tickets[ticket.ticket_id] = ticket
        return ticket

    def update_ticket(self, ticket_id: str, status: TicketStatus) -> Ticket:
        if ticket_id not in self.tickets:
            raise HelpdeskError(f"no ticket with id {ticket_id!r}")
        _check_choice("ticket status", status, TicketStatus)
        self.tickets[ticket_id].status = status
        return self.tickets[ticket_id]

    def changes(self) -> dict[str, list]:
        """What the desk has done since it was created, in the shape of a task's expected changes."""
        return {
            "refunds": [{"order_id": refund.order_id, "amount": refund.amount} for refund in self.refunds],
            "cancelled": list(self.cancelled),
            "tickets": [{"customer_id": t.customer_id, "priority": t.priority, "status": t.status}
                        for t in self.tickets.values()],
        }


def _check_choice(what: str, value: str, choices: object) -> None:
    if value not in get_args(choices):
        raise HelpdeskError(f"{what} must be one of {', '.join(get_args(choices))}, not {value!r}")


def _require_status(order: Order, status: OrderStatus, action: str) -> None:
    if order.status != status:
        raise HelpdeskError(f"order {order.order_id} is {order.status}; only {status} orders can be {action}")
