"""The constraints that make resume and history safe hold on SQLite and on PostgreSQL."""

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from supertiny.store import HarvestRun, ModelVersion, RoutingPolicy, Sample, Task


def _task(domain="d", content_hash="h1") -> Task:
    return Task(domain=domain, split="train", category="c", messages=[{"role": "user", "content": "hi"}],
                tools=[], ground_truth=None, content_hash=content_hash)


def _run(fingerprint="f1") -> HarvestRun:
    return HarvestRun(fingerprint=fingerprint, domain="d", teacher="t", params={"k": 1})


def test_json_columns_round_trip(store):
    with store.session() as session:
        task = _task()
        task.ground_truth = [{"f": {"x": [1, 2.5, "a"]}}]
        session.add(task)
    with store.session() as session:
        loaded = session.scalars(sa.select(Task)).one()
        assert loaded.ground_truth == [{"f": {"x": [1, 2.5, "a"]}}]
        assert loaded.created_at is not None


def test_json_keeps_key_order_so_a_task_renders_the_same_prompt_on_every_database(store):
    # PostgreSQL's jsonb would return {"unit", "city"} as {"city", "unit"} (shorter keys first): another prompt
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"unit": {"type": "string"}, "city": {"type": "string"}},
        "required": ["city"]}}}
    messages = [{"role": "user", "content": "hi", "name": "zed"}]
    with store.session() as session:
        session.add(Task(domain="d", split="train", category="c", messages=messages, tools=[tool],
                         content_hash="ordered"))
    with store.session() as session:
        loaded = session.scalars(sa.select(Task).where(Task.content_hash == "ordered")).one()
        assert list(loaded.tools[0]["function"]["parameters"]["properties"]) == ["unit", "city"]
        assert list(loaded.tools[0]["function"]) == ["name", "parameters"]
        assert list(loaded.messages[0]) == ["role", "content", "name"]


def test_task_content_hash_is_unique_per_domain(store):
    with store.session() as session:
        session.add_all([_task("a", "h"), _task("b", "h")])
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(_task("a", "h"))


def test_sample_index_is_unique_per_run_and_task(store):
    with store.session() as session:
        task, run = _task(), _run()
        session.add_all([task, run])
        session.flush()
        ids = {"run_id": run.id, "task_id": task.id}
    fields = {"model": "m", "trajectory": [], "tool_calls": [], "verdict": "pass"}
    with store.session() as session:
        session.add(Sample(sample_index=0, **ids, **fields))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(Sample(sample_index=0, **ids, **fields))


def test_sample_needs_an_existing_run(store):
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(Sample(run_id=999, task_id=999, sample_index=0, model="m", trajectory=[], tool_calls=[],
                           verdict="pass"))


def test_verdict_is_checked(store):
    with store.session() as session:
        task, run = _task(), _run()
        session.add_all([task, run])
        session.flush()
        ids = {"run_id": run.id, "task_id": task.id}
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(Sample(sample_index=0, model="m", trajectory=[], tool_calls=[], verdict="maybe", **ids))


def test_one_active_policy_version_per_route(store):
    def policy(route, version, active):
        return RoutingPolicy(route=route, version=version, kind="tiny", params={}, active=active)

    with store.session() as session:
        session.add_all([policy("r", 1, False), policy("r", 2, True), policy("other", 1, True)])
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(policy("r", 3, True))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(policy("r", 2, False))


def test_model_lineage_parent_must_exist(store):
    with store.session() as session:
        base = ModelVersion(name="base", stage="base", format="hf", backend="transformers", path="/m",
                            config={}, metrics={})
        session.add(base)
        session.flush()
        session.add(ModelVersion(name="child", parent_id=base.id, stage="sft", format="hf",
                                 backend="transformers", path="/c", config={}, metrics={}))
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(ModelVersion(name="orphan", parent_id=12345, stage="sft", format="hf",
                                 backend="transformers", path="/o", config={}, metrics={}))
