"""A throwaway weather domain for harvest tests: single-shot tasks with ground truth, duplicates
included, and an executable variant whose tools keep state (for multi-step trajectories)."""

from collections.abc import Iterator
from typing import Any

import supertiny
from supertiny.domain import Domain, DomainTask, ToolEnvironment, Verdict, assign_split
from supertiny.schema import ParsedCall

CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Hanoi", "Bern"]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
ALERT_TOOL = {"type": "function", "function": {
    "name": "set_alert", "description": "Alert when a city is hotter than a threshold.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "above": {"type": "number"}},
                   "required": ["city", "above"]}}}


class ToyWeather(Domain):
    name = "toy-weather"
    description = "weather questions with one right call"
    system_prompt = "Answer weather questions with the get_weather tool."

    def __init__(self, n_tasks: int = 40):
        self.n_tasks = n_tasks

    def tasks(self, split: str) -> Iterator[DomainTask]:
        for index in range(self.n_tasks):
            city = CITIES[index % len(CITIES)]
            unit = ["celsius", "fahrenheit"][index // len(CITIES) % 2]
            # every 4th task repeats the previous one word for word: dedup must harvest it once
            if index % 4 == 3:
                city = CITIES[(index - 1) % len(CITIES)]
                unit = ["celsius", "fahrenheit"][(index - 1) // len(CITIES) % 2]
            task_split = assign_split(f"{city}-{unit}", (0.7, 0.0, 0.3))
            if task_split != split:
                continue
            yield DomainTask(external_id=f"toy-{index}", split=task_split, category=unit,
                             messages=[{"role": "user", "content": f"Weather in {city} in {unit}?"}],
                             tools=[WEATHER_TOOL], ground_truth={"city": city, "unit": unit})

    def verify(self, task, calls, trajectory, environment=None) -> Verdict:
        expected = [ParsedCall(name="get_weather", arguments=task.ground_truth)]
        return Verdict.passed() if calls == expected else Verdict.failed(f"expected {expected}, got {calls}")


class AlertEnvironment(ToolEnvironment):
    def __init__(self):
        self.alerts: list[tuple[str, float]] = []

    def execute(self, call: ParsedCall) -> Any:
        if call.name == "get_weather":
            return {"city": call.arguments["city"], "temperature": 31.0}
        if call.name == "set_alert":
            self.alerts.append((call.arguments["city"], float(call.arguments["above"])))
            return {"ok": True}
        raise ValueError(f"no tool {call.name}")


class ToyAlerts(Domain):
    """Read the temperature, then set an alert 5 degrees above it: two steps, checked on state."""

    name = "toy-alerts"
    description = "multi-step: read, then act"
    max_steps = 4

    def tasks(self, split: str) -> Iterator[DomainTask]:
        for city in CITIES:
            if assign_split(city, (0.5, 0.0, 0.5)) == split:
                yield DomainTask(external_id=city, split=split, category="alert",
                                 messages=[{"role": "user", "content": f"Alert me 5 degrees above now in {city}."}],
                                 tools=[WEATHER_TOOL, ALERT_TOOL], ground_truth={"city": city, "above": 36.0})

    def environment(self, task):
        return AlertEnvironment()

    def verify(self, task, calls, trajectory, environment=None) -> Verdict:
        want = (task.ground_truth["city"], task.ground_truth["above"])
        if environment.alerts == [want]:
            return Verdict.passed()
        return Verdict.failed(f"alerts {environment.alerts}, expected [{want}]")


@supertiny.hookimpl
def register_domains(register):
    register(ToyWeather())
    register(ToyAlerts())
