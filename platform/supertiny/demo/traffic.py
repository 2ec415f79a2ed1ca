"""The demo's last stage: start the server and send it real requests with the official OpenAI client.

The requests are BFCL test tasks the evaluations did not use. Each answer is checked by the domain's
verifier, so the report shows what production traffic got: accuracy, latency per request, and the share
the router escalated to the LLM.
"""

import statistics
from typing import Any

from supertiny.domain import Domain, DomainTask


def fresh_test_tasks(domain: Domain, skip_per_category: int, count: int) -> list[DomainTask]:
    """``count`` test tasks round-robin over the categories, past the first ``skip_per_category`` of each
    (those the evaluations used)."""
    from supertiny.task_selection import round_robin, select_tasks

    used = {task.content_hash() for task in select_tasks(domain, "test", per_category=skip_per_category)}
    per_category = skip_per_category + count
    candidates = [task for task in select_tasks(domain, "test", per_category=per_category)
                  if task.content_hash() not in used]
    by_category: dict[str, list[DomainTask]] = {}
    for task in candidates:
        by_category.setdefault(task.category, []).append(task)
    return round_robin(by_category, count)


def send_requests(demo: Any, count: int) -> dict[str, Any]:
    """Serve ``demo``'s route in-process, send ``count`` requests, verify the answers."""
    import openai

    from supertiny.eval.served import ask_route
    from supertiny.registry import lookup
    from supertiny.serve.app import ServeOptions, create_app
    from supertiny.serve.background import BackgroundServer

    domain: Domain = lookup("domain", demo.plan.domain)
    tasks = fresh_test_tasks(domain, demo.plan.eval_per_category, count)
    route = demo.plan.route
    records = []
    with BackgroundServer(create_app(demo.settings, ServeOptions())) as server:
        demo.echo(f"      serving {server.base_url} (route {route!r}); loading the models of the route")
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=600, max_retries=0)
        for index, task in enumerate(tasks, 1):
            answer = ask_route(client, domain, task, route)
            extension = answer["supertiny"]
            records.append({"task": task.external_id, "category": task.category, "correct": answer["correct"],
                            "served_by": extension.get("served_by"), "escalated": bool(extension.get("escalated")),
                            "reason": extension.get("reason"), "confidence": extension.get("confidence"),
                            "decoding": extension.get("decoding") or {},
                            "latency_s": round(answer["latency_s"], 3), "calls": answer["calls"]})
            demo.echo(f"      request {index}/{len(tasks)} {task.category:<17} -> "
                      f"{extension.get('served_by', '?')}{' (escalated)' if extension.get('escalated') else ''}, "
                      f"{'correct' if answer['correct'] else 'wrong'}, {answer['latency_s']:.1f}s")
        server.server.should_exit = True  # flush the request log on the way out
    latencies = [record["latency_s"] for record in records]
    return {"route": route, "requests": len(records),
            "accuracy": sum(record["correct"] for record in records) / len(records) if records else None,
            "llm_share": sum(record["escalated"] for record in records) / len(records) if records else None,
            "p50_latency_s": statistics.median(latencies) if latencies else None,
            "mean_latency_s": statistics.fmean(latencies) if latencies else None,
            "records": records}

