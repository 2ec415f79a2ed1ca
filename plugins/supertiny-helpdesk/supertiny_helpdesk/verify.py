"""The verifier's comparison: what the agent did against a task's ground truth, one reason per difference."""

import operator
from collections.abc import Callable
from typing import Any

from supertiny.schema import ParsedCall

# the tools that change the desk, and the kind of change each makes
ACTIONS = {"issue_refund": "refunds", "cancel_order": "cancelled", "create_ticket": "tickets"}


def find_problems(truth: dict[str, Any], calls: list[ParsedCall], changes: dict[str, list]) -> list[str]:
    """Everything wrong with an attempt; an empty list means it passes.

    ``changes`` is what the desk did (:meth:`HelpdeskService.changes`); it must equal the expected
    changes exactly, refund amounts within a cent.
    """
    if truth["no_calls"]:
        return [f"no tool was needed, but the agent called {calls[0].name}"] if calls else []
    expected = truth["changes"]
    return [
        *(f"never called {_show(lookup)}" for lookup in truth["lookups"]
          if not any(_satisfies(call, lookup) for call in calls)),
        # trying a forbidden action fails even when the desk refused it
        *(f"called {name}, but the request calls for no {kind}" for name, kind in ACTIONS.items()
          if not expected[kind] and any(call.name == name for call in calls)),
        *_differences(expected["refunds"], changes["refunds"], _same_refund, _show_refund),
        *_differences(expected["cancelled"], changes["cancelled"], operator.eq, "cancellation of {}".format),
        *_differences(expected["tickets"], changes["tickets"], operator.eq, _show_ticket),
    ]


def _differences(expected: list, done: list, same: Callable[[Any, Any], bool],
                 show: Callable[[Any], str]) -> list[str]:
    unmatched = list(done)
    missing = []
    for want in expected:
        match = next((got for got in unmatched if same(want, got)), None)
        if match is None:
            missing.append(want)
        else:
            unmatched.remove(match)
    return [f"missing {show(item)}" for item in missing] + [f"unexpected {show(item)}" for item in unmatched]


def _same_refund(expected: dict[str, Any], done: dict[str, Any]) -> bool:
    cents_apart = round(abs(expected["amount"] - done["amount"]) * 100)
    return expected["order_id"] == done["order_id"] and cents_apart <= 1


def _show_refund(refund: dict[str, Any]) -> str:
    return f"refund of {refund['amount']:.2f} on {refund['order_id']}"


def _show_ticket(ticket: dict[str, Any]) -> str:
    return f"{ticket['priority']}-priority ticket for {ticket['customer_id']} with status {ticket['status']}"


def _satisfies(call: ParsedCall, lookup: dict[str, Any]) -> bool:
    """Whether the call is the required lookup: the same tool with the same values (case aside)."""
    def same(value: Any, wanted: Any) -> bool:
        return str(value).strip().casefold() == str(wanted).strip().casefold()

    arguments = call.arguments
    return call.name == lookup["name"] and all(
        name in arguments and same(arguments[name], wanted) for name, wanted in lookup["arguments"].items())


def _show(lookup: dict[str, Any]) -> str:
    arguments = ", ".join(f"{name}={value!r}" for name, value in lookup["arguments"].items())
    return f"{lookup['name']}({arguments})"
