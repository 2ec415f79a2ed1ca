"""The BFCL domain's system prompt and few-shot turns.

They target the raw models' failures (DESIGN.md): one call where several are asked for,
a call where no function fits, dotted names shortened. The examples use their own functions, named
at the start of each example's user turn, so a small model does not mistake them for the task's tools.
"""

import json
from typing import Any

from supertiny_bfcl.schema import openai_name

_SYSTEM_PROMPT = """\
You answer the user's request by calling the functions listed in the tools. Rules:
1. Read the whole request. When it asks for several things (several cities, values, items or tasks), \
make one function call for each of them, all in the same reply. Never stop after the first call.
2. Write each function name exactly as listed, for example `{name}`; never shorten it or drop a prefix \
(not `{short}`).
3. Pass the values the user gave, with the types the parameters ask for. Fill every required \
parameter; leave out optional parameters the user did not mention.
4. When a listed function is about what the user asks, call it: even if you know the answer yourself, \
and even if a detail is missing (use the value the request implies). Call nothing only when the request \
is about something no listed function does at all; then say so in one short sentence.
The examples below come with their own functions, named at the start of each example; for the real \
request use only the functions listed in the tools."""


def _name(name: str, dotted_names: bool) -> str:
    return name if dotted_names else openai_name(name)


def system_prompt(dotted_names: bool = False) -> str:
    return _SYSTEM_PROMPT.format(name=_name("library.find_book", dotted_names), short="find_book")


def _calls(example: int, calls: list[tuple[str, dict[str, Any]]], dotted_names: bool) -> list[dict[str, Any]]:
    """An assistant turn making ``calls`` followed by their tool results (OpenAI wants one per call id)."""
    ids = [f"call_example{example}_{index}" for index in range(len(calls))]
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": _name(name, dotted_names), "arguments": json.dumps(arguments)}}
        for call_id, (name, arguments) in zip(ids, calls, strict=True)]}
    results = [{"role": "tool", "tool_call_id": call_id, "content": '{"status": "ok"}'} for call_id in ids]
    return [turn, *results]


def few_shot(dotted_names: bool = False) -> list[dict[str, Any]]:
    """Three worked examples: one call with only the given parameters, several calls, no call.

    Their functions come from domains BFCL hardly touches, so that a request about weather or
    restaurants does not pull a small model towards an example function instead of the real tools.
    """
    def functions(*signatures: tuple[str, str]) -> str:
        listed = ", ".join(f"{_name(name, dotted_names)}({arguments})" for name, arguments in signatures)
        return f"(Example. Functions: {listed})\n"

    rent = _name("bike.rent", dotted_names)
    # small models copy the examples closely: the several-calls example is not last (a model then loops on
    # calls), the no-call example not first (it then refuses more), and no example closes with a summary of
    # work done (a model then claims work it never called)
    return [
        {"role": "user", "content": functions(("library.find_book", "title, author, year"),
                                              ("library.renew_loan", "loan_id"))
         + "Is the novel Dune in the library?"},
        *_calls(1, [("library.find_book", {"title": "Dune"})], dotted_names),
        {"role": "user",
         "content": functions(("garden.water_plant", "plant, litres"), ("garden.check_soil", "bed"))
         + "Water the roses with 2 litres and the tulips with 1 litre, then check the soil of bed 3."},
        *_calls(2, [("garden.water_plant", {"plant": "roses", "litres": 2}),
                    ("garden.water_plant", {"plant": "tulips", "litres": 1}),
                    ("garden.check_soil", {"bed": 3})], dotted_names),
        {"role": "user", "content": functions(("bike.rent", "station, hours"))
         + "How far is it from the central station to the harbour?"},
        {"role": "assistant", "content": f"No function here measures distances ({rent} only rents bikes)."},
    ]
