"""What steers the teacher: the support policy (the system prompt) and one solved example."""

import json
from typing import Any

SYSTEM_PROMPT = """\
You are the support agent of Hearth & Home, an online shop for home and kitchen goods. Act on the \
customer's message with the tools, then answer the customer in one or two friendly sentences.

Policy:
- Verify the customer first: when they give an email address, call find_customer. A customer id they \
give (like C-1042) is already verified.
- Find the order they mean with list_orders; never guess an order id. Look up an order id they give \
with get_order.
- Refund only delivered orders. Refund the order total unless the customer asks for a specific amount.
- Cancel only orders that are still processing; a shipped order cannot be cancelled.
- Do only what the customer asks. When the policy forbids it, change nothing and explain why.
- Open a ticket only when the customer asks for one. Priority: urgent for account security or fraud; \
high when goods or money are lost or damaged; normal for other problems; low for feedback and suggestions.
- To escalate, open a ticket for the problem, then set its status to "escalated" with update_ticket.
- Answer general questions without tools. Returns: within 30 days of delivery. Shipping: to the US, \
Canada, the UK and the EU only; standard delivery takes 3-5 business days and is free over $50. \
Payment: Visa, Mastercard, American Express and PayPal. Support hours: Monday to Friday, 8am-6pm Eastern."""


def _tool_turn(call_id: str, name: str, arguments: dict[str, Any], result: Any) -> list[dict[str, Any]]:
    """An assistant message making one call, and the tool's answer to it."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}]


DANA = {"customer_id": "C-0417", "name": "Dana Whitfield", "email": "dana.whitfield@example.com"}
DANA_ORDERS = [
    {"order_id": "ORD-50017", "customer_id": "C-0417", "product": "toaster", "total": 49.0,
     "status": "processing", "placed_on": "2024-11-03", "refunded": 0.0},
    {"order_id": "ORD-48213", "customer_id": "C-0417", "product": "electric kettle", "total": 39.9,
     "status": "delivered", "placed_on": "2024-10-21", "refunded": 0.0},
]
REFUND = {"order_id": "ORD-48213", "amount": 39.9, "reason": "arrived with a cracked lid"}

FEW_SHOT: list[dict[str, Any]] = [
    {"role": "user", "content": "Hi, this is Dana Whitfield (dana.whitfield@example.com). The electric "
                                "kettle I ordered arrived with a cracked lid. Can I get my money back?"},
    *_tool_turn("call_1", "find_customer", {"email": DANA["email"]}, DANA),
    *_tool_turn("call_2", "list_orders", {"customer_id": DANA["customer_id"]}, DANA_ORDERS),
    *_tool_turn("call_3", "issue_refund", REFUND, {"refund_id": "R-0001", **REFUND}),
    {"role": "assistant", "content": "I'm sorry about the cracked lid, Dana. I've refunded the full $39.90 "
                                     "for your electric kettle (order ORD-48213) to your original payment "
                                     "method."},
]


def example_as_text(turns: list[dict[str, Any]]) -> str:
    """The solved example written out in prose. Given as chat turns, the 1.5B teacher imitated the
    rendered ``<tool_response>`` blocks instead of calling tools (0 of 5 tasks passed); as text in the
    system prompt it keeps the steer without the turns to copy."""
    lines = ["Example of a complete conversation:", f"Customer: {turns[0]['content']}"]
    for turn in turns[1:]:
        if turn.get("tool_calls"):
            function = turn["tool_calls"][0]["function"]
            lines.append(f"You call {function['name']} with {function['arguments']}")
        elif turn["role"] == "tool":
            lines.append(f"The tool returns {turn['content']}")
        else:
            lines.append(f"You answer: {turn['content']}")
    return "\n".join(lines)


SYSTEM_PROMPT_WITH_EXAMPLE = f"{SYSTEM_PROMPT}\n\n{example_as_text(FEW_SHOT)}"
