"""The tools: valid OpenAI schemas, execution in an environment, errors as messages, the few-shot example."""

import inspect
import json

import jsonschema
import pytest
from supertiny.schema import ParsedCall, ToolSpec
from supertiny_helpdesk.environment import HelpdeskEnvironment
from supertiny_helpdesk.prompts import DANA, DANA_ORDERS, FEW_SHOT
from supertiny_helpdesk.service import Customer, HelpdeskError, HelpdeskService, Order
from supertiny_helpdesk.tools import TOOL_NAMES, HelpdeskTools, tool_specs


@pytest.fixture
def environment() -> HelpdeskEnvironment:
    return HelpdeskEnvironment(HelpdeskService.seeded(3))


def run(environment: HelpdeskEnvironment, name: str, **arguments):
    return environment.execute(ParsedCall(name=name, arguments=arguments))


def test_every_tool_has_a_valid_openai_schema_with_its_required_parameters():
    specs = tool_specs()
    assert [spec.name for spec in specs] == list(TOOL_NAMES)
    for spec in specs:
        ToolSpec.model_validate(spec.openai())
        parameters = spec.function.parameters
        jsonschema.Draft202012Validator.check_schema(parameters)
        signature = inspect.signature(getattr(HelpdeskTools, spec.name))
        wanted = [name for name, p in signature.parameters.items() if name != "self" and p.default is p.empty]
        assert parameters["type"] == "object" and parameters["required"] == wanted, spec.name
        assert spec.function.description
        assert all(schema.get("description") for schema in parameters["properties"].values())
    priority = specs[TOOL_NAMES.index("create_ticket")].function.parameters["properties"]["priority"]
    assert priority["enum"] == ["low", "normal", "high", "urgent"]


def test_a_refund_conversation_runs_and_every_result_is_json(environment):
    customer = next(iter(environment.desk.customers.values()))
    found = run(environment, "find_customer", email=customer.email)
    orders = run(environment, "list_orders", customer_id=found["customer_id"], status="delivered")
    order_id = orders[0]["order_id"]
    refund = run(environment, "issue_refund", order_id=order_id, amount="12.50", reason="late")  # coerced
    assert refund == {"refund_id": "R-0001", "order_id": order_id, "amount": 12.5, "reason": "late"}
    assert run(environment, "get_order", order_id=order_id)["refunded"] == 12.5
    json.dumps([found, orders, refund])


@pytest.mark.parametrize(("name", "arguments", "message"), [
    ("delete_account", {}, "unknown tool 'delete_account'; the tools are find_customer, "),
    ("get_order", {}, "invalid arguments for get_order: order_id: Missing required argument"),
    ("get_order", {"order_id": 42}, "order_id: Input should be a valid string"),
    ("get_order", {"order_id": "ORD-1", "verbose": True}, "verbose: Unexpected keyword argument"),
    ("issue_refund", {"order_id": "ORD-1", "amount": "lots", "reason": "x"},
     "amount: Input should be a valid number"),
    ("create_ticket", {"customer_id": "C-1", "subject": "x", "priority": "asap"},
     "priority: Input should be 'low', 'normal', 'high' or 'urgent'"),
    ("get_order", {"order_id": "ORD-1"}, "no order with id 'ORD-1'"),
])
def test_bad_calls_raise_a_message_for_the_model_not_a_crash(environment, name, arguments, message):
    with pytest.raises(HelpdeskError) as error:
        environment.execute(ParsedCall(name=name, arguments=arguments))
    assert message in str(error.value)
    assert environment.desk.changes() == {"refunds": [], "cancelled": [], "tickets": []}


def test_the_few_shot_example_is_what_the_real_tools_answer():
    desk = HelpdeskService([Customer(**DANA)], [Order(**order) for order in DANA_ORDERS])
    environment = HelpdeskEnvironment(desk)
    calls = [message for message in FEW_SHOT if message.get("tool_calls")]
    results = [message for message in FEW_SHOT if message["role"] == "tool"]
    for message, result in zip(calls, results, strict=True):
        (call,) = message["tool_calls"]
        assert result["tool_call_id"] == call["id"]
        arguments = json.loads(call["function"]["arguments"])
        assert environment.execute(ParsedCall(name=call["function"]["name"], arguments=arguments)) \
            == json.loads(result["content"])
    assert FEW_SHOT[0]["role"] == "user" and FEW_SHOT[-1]["role"] == "assistant" and FEW_SHOT[-1]["content"]
