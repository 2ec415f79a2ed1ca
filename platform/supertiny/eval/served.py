"""A domain task sent to a served route through the OpenAI client, and its answer judged by the domain's
verifier: what production traffic got, as the demo and the served-routes benchmark measure it."""

import json
import time
from typing import Any

from supertiny.domain import Domain, DomainTask


def ask_route(client: Any, domain: Domain, task: DomainTask, route: str,
              max_tokens: int | None = None) -> dict[str, Any]:
    """Send ``task`` to ``route`` (an ``openai.OpenAI`` client on a supertiny server, greedy) and verify the answer:
    whether it passed, the calls made, the router's ``supertiny`` extension, latency and completion tokens.
    Raises what the client raises."""
    from supertiny.prototype.agent import task_tools
    from supertiny.schema.tools import ParsedCall

    started = time.perf_counter()
    response = client.chat.completions.create(model=route, messages=task.messages, tools=task_tools(domain, task),
                                              temperature=0, **({"max_tokens": max_tokens} if max_tokens else {}))
    latency = time.perf_counter() - started
    message = response.choices[0].message
    calls = [ParsedCall(name=call.function.name, arguments=_arguments(call.function.arguments))
             for call in message.tool_calls or []]
    verdict = domain.verify(task, calls, [*task.messages, message.model_dump(exclude_none=True)])
    return {"correct": verdict.verdict == "pass", "calls": [call.name for call in calls],
            "supertiny": (response.model_extra or {}).get("supertiny") or {}, "latency_s": latency,
            "completion_tokens": response.usage.completion_tokens if response.usage else None}


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
