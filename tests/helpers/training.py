"""Snapshots and settings for trainer tests: the toy-weather domain harvested by scripted teachers."""

import collections
import threading

from supertiny.data.snapshot import SnapshotSource, create_snapshot
from supertiny.harvest.runner import HarvestConfig, run_harvest

from helpers.scripted_chat import ScriptedChatModel, call, weather_oracle

FAST = {"epochs": 1.0, "grad_accum": 1, "batch_size": 2, "warmup": 0.0, "lr_scheduler": "constant",
        "max_length": 512, "save_steps": 100, "threads": 1}


def wrong_answer(messages, kwargs):
    return call("get_weather", city="Atlantis", unit="kelvin")


def alternating():
    """Right, wrong, right, wrong ... for each question: with two samples per task, every task gets one of each,
    however the harvest's threads interleave the tasks."""
    asked: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def respond(messages, kwargs):
        with lock:
            asked[messages[-1].content] += 1
            right = asked[messages[-1].content] % 2 == 1
        return weather_oracle(messages, kwargs) if right else wrong_answer(messages, kwargs)

    return respond


def harvest_snapshot(store, name: str, respond=weather_oracle, samples_per_task: int = 1,
                     verdict: str | None = "pass", limit: int = 6):
    """Harvest toy-weather's train tasks with a scripted teacher and snapshot the result."""
    teacher = ScriptedChatModel(respond=respond)
    config = HarvestConfig(domain="toy-weather", teacher=f"scripted-{name}", limit=limit,
                           samples_per_task=samples_per_task, temperature=0.7 if samples_per_task > 1 else 0.0)
    result = run_harvest(store, config, lambda: teacher)
    return create_snapshot(store, name, SnapshotSource(runs=(result.run_id,), verdict=verdict))
