"""Dataset snapshots: versioned, immutable, filtered; exported in the OpenAI chat format."""

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from helpers import toy_domain
from helpers.scripted_chat import ScriptedChatModel, call, weather_oracle
from supertiny.data import export, snapshot
from supertiny.errors import InvalidInputError, NotFoundError
from supertiny.harvest.runner import HarvestConfig, run_harvest
from supertiny.store import DatasetItem, RequestLog
from supertiny.store.tables import ImmutableSnapshotError


@pytest.fixture
def harvested(store, register_plugin):
    register_plugin(toy_domain, name="toy-domains")
    teacher = ScriptedChatModel(respond=lambda m, k: call("get_weather", city="Nowhere")
                                if "fahrenheit" in m[-1].content else weather_oracle(m, k))
    result = run_harvest(store, HarvestConfig(domain="toy-weather", teacher="half"), lambda: teacher)
    return store, result


def test_snapshot_keeps_only_passing_samples_and_versions_by_name(harvested):
    store, result = harvested
    first = snapshot.create_snapshot(store, "weather", snapshot.SnapshotSource(runs=(result.run_id,), verdict="pass"))
    assert (first.version, first.n_items, first.domain) == (1, result.passed, "toy-weather")
    items = snapshot.snapshot_items(store, first)
    assert all(item.verdict == "pass" and item.category == "celsius" for item in items)
    everything = snapshot.create_snapshot(store, "weather", snapshot.SnapshotSource(runs=(result.run_id,)))
    assert everything.version == 2 and everything.n_items == result.done
    assert snapshot.get_snapshot(store, "weather").version == 2
    assert snapshot.get_snapshot(store, "weather@1").n_items == result.passed


def test_snapshots_are_immutable(harvested):
    store, result = harvested
    dataset = snapshot.create_snapshot(store, "w", snapshot.SnapshotSource(runs=(result.run_id,)))
    with pytest.raises(ImmutableSnapshotError), store.session() as session:
        session.scalars(sa.select(DatasetItem)).first().messages = []
    with pytest.raises(ImmutableSnapshotError), store.session() as session:
        session.delete(session.scalars(sa.select(DatasetItem)).first())
    with pytest.raises(ImmutableSnapshotError), store.session() as session:
        session.get(type(dataset), dataset.id).n_items = 0
    assert len(snapshot.snapshot_items(store, dataset)) == dataset.n_items


def test_bad_snapshot_requests_are_clear_errors(harvested):
    store, result = harvested
    with pytest.raises(InvalidInputError, match="either --run"):
        snapshot.create_snapshot(store, "x", snapshot.SnapshotSource())
    with pytest.raises(NotFoundError, match="no harvest run 999"):
        snapshot.create_snapshot(store, "x", snapshot.SnapshotSource(runs=(999,)))
    with pytest.raises(InvalidInputError, match="empty"):
        snapshot.create_snapshot(store, "x", snapshot.SnapshotSource(runs=(result.run_id,), verdict="unknown"))
    with pytest.raises(NotFoundError, match="no dataset 'nope'"):
        snapshot.get_snapshot(store, "nope")


def test_export_jsonl_and_hf_in_openai_chat_format(harvested, tmp_path):
    store, result = harvested
    dataset = snapshot.create_snapshot(store, "w", snapshot.SnapshotSource(runs=(result.run_id,), verdict="pass"))
    items = snapshot.snapshot_items(store, dataset)
    [path] = export.export_items(items, tmp_path / "w.jsonl", "jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len(items)
    first = records[0]
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"][0] == {"role": "user", "content": first["messages"][0]["content"]}
    arguments = first["messages"][-1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str) and json.loads(arguments)["unit"] == "celsius"

    import datasets

    export.export_items(items, tmp_path / "hf", "hf")
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))["train"]
    assert len(loaded) == len(items)
    assert loaded[0]["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(loaded[0]["tools"][0])["function"]["name"] == "get_weather"


def test_snapshot_from_request_logs(store):
    request = {"model": "tool-route", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
               "tools": [toy_domain.WEATHER_TOOL]}
    answer = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    with store.session() as session:
        for index, status in enumerate([200, 200, 400]):
            session.add(RequestLog(request_id=f"r{index}", created_at=dt.datetime.now(dt.UTC), route="tool-route",
                                   request=request, response={"choices": [{"message": answer}]} if status == 200
                                   else None, served_by="llm" if index == 0 else "tiny", status=status))
    dataset = snapshot.create_snapshot(store, "logs", snapshot.SnapshotSource(logs_route="tool-route"))
    items = snapshot.snapshot_items(store, dataset)
    assert len(items) == 2
    assert items[0].messages == [request["messages"][0], {k: v for k, v in answer.items() if v is not None}]
    only_llm = snapshot.create_snapshot(store, "logs", snapshot.SnapshotSource(logs_route="tool-route",
                                                                               served_by="llm"))
    assert only_llm.n_items == 1


def test_distinct_keeps_one_of_a_tasks_samples_that_give_the_same_answer(store, register_plugin):
    import itertools

    register_plugin(toy_domain, name="toy-domains")
    # per task: right, right (the same answer again), wrong
    turns = itertools.count()
    teacher = ScriptedChatModel(respond=lambda m, k: weather_oracle(m, k) if next(turns) % 3 != 2
                                else call("get_weather", city="Nowhere"))
    config = HarvestConfig(domain="toy-weather", teacher="t", limit=3, samples_per_task=3, temperature=0.7,
                           concurrency=1)
    result = run_harvest(store, config, lambda: teacher)
    every = snapshot.create_snapshot(store, "all", snapshot.SnapshotSource(runs=(result.run_id,)))
    distinct = snapshot.create_snapshot(store, "distinct", snapshot.SnapshotSource(runs=(result.run_id,),
                                                                                   distinct=True))
    assert (every.n_items, distinct.n_items) == (9, 6)
    items = snapshot.snapshot_items(store, distinct)
    assert sorted(item.verdict for item in items) == ["fail"] * 3 + ["pass"] * 3
    with pytest.raises(InvalidInputError, match="--distinct applies to the samples of harvest runs"):
        snapshot.SnapshotSource(logs_route="r", distinct=True).validate()
