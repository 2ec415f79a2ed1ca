"""The task generator: customer messages, each with the state change that answers it.

Every task carries a seed, and ``HelpdeskService.seeded(seed)`` rebuilds the small shop its message
talks about, so the text, the environment and the ground truth always agree. A task's ground truth:

    {"seed": 1234,
     "changes": {"refunds": [{"order_id", "amount"}], "cancelled": [order_id], "tickets": [...]},
     "lookups": [{"name": "find_customer", "arguments": {"email": ...}}],   # read-only calls required
     "no_calls": false}                                                     # true: answer without tools
"""

import itertools
import random
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from supertiny.domain import DomainTask, assign_split

from supertiny_helpdesk.service import Customer, HelpdeskService, Order

TASKS_PER_CATEGORY = 90

GREETINGS = ("Hi!", "Hello!", "Hi there!", "Good morning.", "Good afternoon.", "")
SIGN_OFFS = ("Thanks!", "Thank you.", "Thanks in advance.", "Cheers, {first}", "Best, {first}", "")
WHO = ("I'm {name} ({email}).", "My email is {email}.", "This is {name}, account {email}.",
       "{name} here, my email is {email}.", "Account: {email}.")
LOOKUP_ASKS = ("Where is my order {order_id}?", "What's the status of order {order_id}?",
               "Has order {order_id} shipped yet?", "How much did I pay for order {order_id}?",
               "Can you check on order {order_id} for me?", "When did I place order {order_id}?",
               "Has anything been refunded on order {order_id}?",
               "My {product} is order {order_id}. Has it been delivered?")
# (priority under the support policy, the problem in the customer's words)
ISSUES = (("urgent", "Someone placed an order on my account that I did not make."),
          ("urgent", "I think my account was hacked, my password suddenly stopped working."),
          ("urgent", "I got an email saying my payment card was changed, and it wasn't me."),
          ("high", "My {product} arrived damaged."),
          ("high", "My {product} never arrived, but tracking says it was delivered."),
          ("high", "I was charged twice for my {product}."),
          ("high", "The box for my {product} was empty."),
          ("normal", "I need an invoice for my {product} order."),
          ("normal", "The tracking link for my {product} doesn't work."),
          ("normal", "I can't change the delivery address in my account settings."),
          ("normal", "The manual for my {product} is missing."),
          ("low", "I'd like to suggest adding a wish list to your website."),
          ("low", "The product page for the {product} has a typo."),
          ("low", "I'd love to see the {product} in more colours."))
CUSTOMER_IDS = ("My customer id is {customer_id}.", "Customer {customer_id} here.",
                "Customer number: {customer_id}.", "(I'm customer {customer_id}.)")
TICKET_ASKS = ("Please open a ticket.", "Could you file a support ticket for this?",
               "Can you raise a ticket so someone looks into it?",
               "I'd like a support ticket opened for this.")
ESCALATE_ASKS = ("Nobody has answered my emails for a week. Please escalate this to a supervisor.",
                 "This is the third time I'm writing about it. I want this escalated.",
                 "I've waited long enough, please escalate this.",
                 "Please escalate this to someone who can actually help.")
REFUND_REASONS = ("it arrived broken", "it stopped working after two days", "it's not what I ordered",
                  "it was missing parts", "the colour is different from the photos")
REFUND_ASKS = ("I'd like a full refund for my {product}: {reason}.", "Please refund my {product}, {reason}.",
               "Can I get my money back for the {product}? {Reason}.")
PARTIAL_REFUND_ASKS = ("My {product} arrived a week late. Could you refund ${amount} of it?",
                       "The {product} has a small scratch; I'll keep it if you refund ${amount}.",
                       "I was promised ${amount} back on my {product} because of a delay, please process it.")
PARTIAL_AMOUNTS = (5, 10, 15, 20, 25, 40)
# reasons that need no delivery, so they also fit a refund asked for too early
CHANGE_OF_MIND = ("I found it cheaper elsewhere", "I ordered it by mistake", "I no longer need it",
                  "I ordered the wrong model", "my plans changed")
CANCEL_ASKS = ("Please cancel my {product} order, {reason}.",
               "Can you cancel the {product} I ordered? {Reason}.",
               "I'd like to cancel my order for the {product}: {reason}.")
QUESTIONS = ("How long do I have to return something?", "What is your return policy?",
             "How long does standard shipping take?", "Which payment methods do you accept?",
             "When is your support team available?", "Are you open on weekends?",
             "Do you charge for shipping?", "Thanks, that's all I needed!", "Great, thank you for your help!",
             *(f"Do you ship to {country}?" for country in ("Canada", "the UK", "Germany", "France", "Spain",
                                                             "Ireland", "Australia", "Japan", "Mexico")),
             *(f"Can I pay with {method}?" for method in ("PayPal", "Visa", "American Express", "Apple Pay",
                                                          "bank transfer", "cash on delivery")))

Truth = dict[str, Any]


def _truth(*, refunds: Iterable[dict] = (), cancelled: Iterable[str] = (), tickets: Iterable[dict] = (),
           lookups: Iterable[dict] = (), no_calls: bool = False) -> Truth:
    changes = {"refunds": list(refunds), "cancelled": list(cancelled), "tickets": list(tickets)}
    return {"changes": changes, "lookups": list(lookups), "no_calls": no_calls}


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def _pick(desk: HelpdeskService, rng: random.Random, *statuses: str) -> tuple[Customer, Order]:
    order = rng.choice([order for order in desk.orders.values() if order.status in statuses])
    return desk.customers[order.customer_id], order


def _fill(rng: random.Random, templates: tuple[str, ...], **values: str) -> str:
    """A random template filled in; ``{Reason}`` is ``{reason}`` with a capital letter."""
    values |= {key.capitalize(): value[:1].upper() + value[1:] for key, value in values.items()}
    return rng.choice(templates).format(**values)


def _message(rng: random.Random, customer: Customer, *sentences: str, identify: bool = False) -> str:
    """The customer's message: a greeting, the sentences (with who they are, somewhere), a sign-off."""
    body = list(sentences)
    if identify:
        body.insert(rng.choice([0, len(body)]), _fill(rng, WHO, name=customer.name, email=customer.email))
    first = customer.name.split()[0]
    parts = [rng.choice(GREETINGS), *body, rng.choice(SIGN_OFFS).format(first=first)]
    return " ".join(part for part in parts if part)


def lookup(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer, order = _pick(desk, rng, "processing", "shipped", "delivered", "cancelled")
    ask = _fill(rng, LOOKUP_ASKS, order_id=order.order_id, product=order.product)
    return _message(rng, customer, ask), _truth(lookups=[_call("get_order", order_id=order.order_id)])


def ticket(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer, order = _pick(desk, rng, "delivered")
    priority, issue = rng.choice(ISSUES)
    who = _fill(rng, CUSTOMER_IDS, customer_id=customer.customer_id)
    sentences = [who, issue.format(product=order.product)]
    rng.shuffle(sentences)
    opened = {"customer_id": customer.customer_id, "priority": priority, "status": "open"}
    return _message(rng, customer, *sentences, rng.choice(TICKET_ASKS)), _truth(tickets=[opened])


def escalation(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer, order = _pick(desk, rng, "delivered")
    priority, issue = rng.choice([(priority, issue) for priority, issue in ISSUES if priority != "low"])
    ask = rng.choice(ESCALATE_ASKS)
    text = _message(rng, customer, issue.format(product=order.product), ask, identify=True)
    escalated = {"customer_id": customer.customer_id, "priority": priority, "status": "escalated"}
    return text, _truth(tickets=[escalated], lookups=[_call("find_customer", email=customer.email)])


def refund(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer, order = _pick(desk, rng, "delivered")
    if rng.random() < 0.3:  # the customer names an amount
        amount = float(rng.choice([amount for amount in PARTIAL_AMOUNTS if amount <= order.total / 2]))
        ask = _fill(rng, PARTIAL_REFUND_ASKS, product=order.product, amount=f"{amount:.0f}")
    else:
        amount = order.total
        reason = rng.choice(REFUND_REASONS + CHANGE_OF_MIND)
        ask = _fill(rng, REFUND_ASKS, product=order.product, reason=reason)
    refunded = {"order_id": order.order_id, "amount": amount}
    text = _message(rng, customer, ask, identify=True)
    return text, _truth(refunds=[refunded], lookups=[_call("find_customer", email=customer.email)])


def cancel(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer, order = _pick(desk, rng, "processing")
    ask = _fill(rng, CANCEL_ASKS, product=order.product, reason=rng.choice(CHANGE_OF_MIND))
    text = _message(rng, customer, ask, identify=True)
    return text, _truth(cancelled=[order.order_id], lookups=[_call("find_customer", email=customer.email)])


def refusal(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    """A refund of an order not yet delivered, or a cancellation of one already shipped: the agent
    must look, change nothing and explain."""
    if rng.random() < 0.5:
        customer, order = _pick(desk, rng, "shipped")
        templates = REFUND_ASKS
    else:
        customer, order = _pick(desk, rng, "shipped", "delivered")
        templates = CANCEL_ASKS
    ask = _fill(rng, templates, product=order.product, reason=rng.choice(CHANGE_OF_MIND))
    lookups = [_call("find_customer", email=customer.email),
               _call("list_orders", customer_id=customer.customer_id)]
    return _message(rng, customer, ask, identify=True), _truth(lookups=lookups)


def no_action(desk: HelpdeskService, rng: random.Random) -> tuple[str, Truth]:
    customer = rng.choice(list(desk.customers.values()))
    return _message(rng, customer, rng.choice(QUESTIONS)), _truth(no_calls=True)


WRITERS: dict[str, Callable[[HelpdeskService, random.Random], tuple[str, Truth]]] = {
    "lookup": lookup, "ticket": ticket, "refund": refund, "cancel": cancel, "escalation": escalation,
    "refusal": refusal, "no_action": no_action,
}
CATEGORIES = tuple(WRITERS)


def generate_tasks(per_category: int = TASKS_PER_CATEGORY) -> list[DomainTask]:
    """Every task, in a fixed order; ids, texts and splits are the same on every run and machine."""
    tasks, seen = [], set()
    for category, write in WRITERS.items():
        for index in range(per_category):
            task_id = f"helpdesk-{category}-{index:03d}"
            for attempt in itertools.count():  # a text already used draws again, with the next seed
                seed = zlib.crc32(f"{task_id}/{attempt}".encode())
                text, truth = write(HelpdeskService.seeded(seed), random.Random(seed))
                if text not in seen:
                    break
            seen.add(text)
            tasks.append(DomainTask(external_id=task_id, split=assign_split(task_id), category=category,
                                    messages=[{"role": "user", "content": text}], tools=[],
                                    ground_truth={"seed": seed, **truth}))
    return tasks
