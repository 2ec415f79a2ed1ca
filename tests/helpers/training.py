"""Snapshots and settings for trainer tests: the toy-weather domain harvested by scripted teachers."""

import itertools

from supertiny.data.snapshot import SnapshotSource, create_snapshot
from supertiny.harvest.runner import HarvestConfig, run_harvest

from helpers.scripted_chat import ScriptedChatModel, call, weather_oracle

FAST = {"epochs": 1.0, "grad_accum": 1, "batch_size": 2, "warmup": 0.0, "lr_scheduler": "constant",
        "max_length": 512, "save_steps": 100, "threads": 1}


def wrong_answer(messages, kwargs):
    return call("get_weather", city="Atlantis", unit="kelvin")


def alternating():
    """Right, wrong, right, wrong ...: with two samples per task, every task gets one of each."""
    counter = itertools.count()
    return lambda messages, kwargs: weather_oracle(messages, kwargs) if next(counter) % 2 == 0 \
        else wrong_answer(messages, kwargs)


def harvest_snapshot(store, name: str, respond=weather_oracle, samples_per_task: int = 1,
                     verdict: str | None = "pass", limit: int = 6):
    """Harvest toy-weather's train tasks with a scripted teacher and snapshot the result."""
    teacher = ScriptedChatModel(respond=respond)
    config = HarvestConfig(domain="toy-weather", teacher=f"scripted-{name}", limit=limit,
                           samples_per_task=samples_per_task, temperature=0.7 if samples_per_task > 1 else 0.0)
    result = run_harvest(store, config, lambda: teacher)
    return create_snapshot(store, name, SnapshotSource(runs=(result.run_id,), verdict=verdict))
