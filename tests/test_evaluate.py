"""Evaluation: per-category accuracy stored, compared, and the CLI on the tiny model."""

import contextlib
import json
import math
import statistics

import pytest
from click.testing import CliRunner
from helpers import toy_domain
from supertiny.cli import cli
from supertiny.domain import DomainTask
from supertiny.errors import NotFoundError
from supertiny.eval import queries
from supertiny.eval.runner import EvalConfig, evaluate, summarize
from supertiny.models.versions import register_external
from supertiny.store import Evaluation
from supertiny.task_selection import select_tasks


@pytest.fixture
def toy(register_plugin):
    register_plugin(toy_domain, name="toy-domains")
    return toy_domain.ToyWeather()


def test_summarize_counts_accuracy_and_invalid_calls_per_category():
    def record(category, correct, valid):
        return {"category": category, "correct": correct, "valid": valid, "latency_s": 1.0, "completion_tokens": 10}

    summary = summarize([record("a", True, True), record("a", False, False), record("b", True, True)])
    assert summary["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["per_category"]["a"] == {"n": 2, "accuracy": 0.5, "invalid_rate": 0.5, "mean_latency_s": 1.0,
                                            "tokens_per_request": 10.0}


def test_task_selection_is_stable_and_keeps_every_category(toy):
    chosen = select_tasks(toy, "train", limit=4)
    assert [task.category for task in chosen] == ["celsius", "fahrenheit", "celsius", "fahrenheit"]
    assert chosen == select_tasks(toy, "train", limit=4)
    per_category = select_tasks(toy, "train", per_category=1)
    assert len(per_category) == 2 and all(isinstance(task, DomainTask) for task in per_category)


def test_evaluate_the_tiny_model_and_compare(store, toy, tiny_model_dir, tiny_teacher_dir):
    register_external(store, tiny_model_dir, name="tiny")
    register_external(store, tiny_teacher_dir, name="tiny-teacher")
    for model in ("tiny", "tiny-teacher"):
        evaluation = evaluate(store, EvalConfig(model=model, domain="toy-weather", split="test", per_category=2,
                                                max_new_tokens=6, concurrency=2))
        assert evaluation.n_tasks == 4
        records = evaluation.details["records"]
        assert {record["category"] for record in records} == {"celsius", "fahrenheit"}
        assert all(0 < record["confidence"] <= 1 for record in records)
        assert all(record["completion_tokens"] > 0 for record in records)
        assert all(len(record["token_logprobs"]) == record["completion_tokens"] for record in records)
        assert all(math.isclose(record["confidence"], math.exp(statistics.fmean(record["token_logprobs"])),
                                rel_tol=1e-3) for record in records)
        # what a learned cascade gate is fitted on: the same features the cascade computes when it serves
        assert all(math.isclose(record["features"]["mean_logprob"], math.log(record["confidence"]), abs_tol=1e-3)
                   and record["features"]["tools"] >= 1 for record in records)
    compared = queries.compare(store, ["tiny", "tiny-teacher"], "toy-weather", "test")
    assert [row["category"] for row in compared["rows"]] == ["celsius", "fahrenheit", "overall"]
    overall = compared["rows"][-1]
    low, high = overall["interval:tiny"]
    assert 0.0 <= low <= overall["tiny"] <= high <= 1.0 and overall["n:tiny"] == 4
    (paired,) = compared["paired"]
    assert (paired["model"], paired["baseline"], paired["shared_tasks"]) == ("tiny-teacher", "tiny", 4)
    assert "records" not in compared["evaluations"][0]
    assert queries.latest_evaluation(store, "tiny", with_records=True)["records"]
    with pytest.raises(NotFoundError, match="no evaluation of 'tiny' on other"):
        queries.latest_evaluation(store, "tiny", "other")
    # MODEL:guided takes the model's guided evaluation, MODEL its free one, even where a guided one is newer
    free = queries.latest_evaluation(store, "tiny", with_records=True)
    with pytest.raises(NotFoundError, match="no guided evaluation of 'tiny'"):
        queries.compare(store, ["tiny", "tiny:guided"])
    with store.session() as session:
        stored = session.get(Evaluation, free["id"])
        records = [{**record, "correct": not record["correct"]} for record in free["records"]]
        session.add(Evaluation(model_version_id=stored.model_version_id, domain=stored.domain, split=stored.split,
                               n_tasks=stored.n_tasks, accuracy=1 - stored.accuracy, per_category=stored.per_category,
                               details={"records": records, "config": {"guided": True}}))
    both = queries.compare(store, ["tiny", "tiny:guided"], "toy-weather", "test")
    assert both["models"] == ["tiny", "tiny:guided"] and both["evaluations"][0]["id"] == free["id"]
    assert both["rows"][-1]["tiny:guided"] == pytest.approx(1 - free["accuracy"])
    assert both["paired"][0]["shared_tasks"] == 4 and both["paired"][0]["model"] == "tiny:guided"


def test_eval_cli(toy, tiny_model_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'eval.db'}"

    def run(*args):
        return CliRunner().invoke(cli, ["--db", url, *args])

    assert run("models", "register", str(tiny_model_dir), "--name", "tiny").exit_code == 0
    result = run("eval", "run", "--model", "tiny", "--domain", "toy-weather", "--limit", "2", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "celsius" in result.output
    listed = json.loads(run("eval", "list", "--json").output)
    assert listed[0]["model"] == "tiny" and listed[0]["n_tasks"] == 2
    assert " free " in run("eval", "list").output
    compared = run("eval", "compare", "tiny", "--domain", "toy-weather")
    assert compared.exit_code == 0 and "overall" in compared.output
    unknown = run("eval", "run", "--model", "nope", "--domain", "toy-weather")
    assert unknown.exit_code == 1 and "nope" in unknown.output
    guided = run("eval", "run", "--model", "tiny", "--domain", "toy-weather", "--limit", "2", "--guided")
    assert guided.exit_code == 1 and "--guided needs a model that decodes under JSON Schemas" in guided.output
    assert len(json.loads(run("eval", "list", "--json").output)) == 1  # refused before anything was stored
    sampled = run("eval", "run", "--model", "tiny", "--domain", "toy-weather", "--limit", "2", "--max-new-tokens", "4",
                  "--agreement-samples", "2", "--agreement-temperature", "1.0")
    assert sampled.exit_code == 0, sampled.output
    from supertiny.store.engine import Store

    records = queries.latest_evaluation(Store(url), "tiny", with_records=True)["records"]
    assert all(record["agreement"] in (0.0, 0.5, 1.0) for record in records)


def test_the_paired_test_counts_only_the_tasks_both_judged_and_where_they_disagree():
    def evaluation(model, outcomes):
        return {"model": model, "records": [{"task_hash": task, "correct": right} for task, right in outcomes.items()]}

    baseline = evaluation("teacher", {f"t{i}": i < 10 for i in range(40)} | {"only-here": True})
    student = evaluation("student", {f"t{i}": i < 10 or 20 <= i < 32 for i in range(40)} | {"only-there": False})
    test = queries.paired_test(baseline, student)
    assert (test["shared_tasks"], test["only_model"], test["only_baseline"]) == (40, 12, 0)
    assert test["difference"] == 0.3 and test["p_value"] == round(2 / 2**12, 6)
    assert queries.paired_test(baseline, evaluation("x", {"other": True}))["shared_tasks"] == 0


def test_a_task_waits_for_its_answer_as_long_as_the_evaluation_allows(store, toy, monkeypatch):
    from helpers.chat_models import ScriptedModel
    from supertiny.errors import BackendTimeoutError
    from supertiny.eval import runner

    slow = ScriptedModel("slow", delay_s=0.3)
    monkeypatch.setattr("supertiny.runtime.loading.lease_model", lambda store, name: contextlib.nullcontext(slow))
    register_external_like(store, "slow")
    evaluation = runner.evaluate(store, EvalConfig(model="slow", domain="toy-weather", limit=2, concurrency=2))
    assert evaluation.n_tasks == 2  # the default waits far longer than a busy engine needs
    with pytest.raises(BackendTimeoutError, match=r"did not answer within 0\.1s"):
        runner.evaluate(store, EvalConfig(model="slow", domain="toy-weather", limit=2, timeout_s=0.1))


def register_external_like(store, name):
    from supertiny.models.versions import register_model_version

    register_model_version(store, name=name, stage="external", format="hf", backend="transformers",
                           path=f"/nowhere/{name}")


def test_an_evaluation_with_agreement_samples_keeps_the_share_that_agrees_with_the_greedy_answer(store, toy,
                                                                                                  monkeypatch):
    import dataclasses

    from helpers.chat_models import ScriptedModel
    from supertiny.eval import runner
    from supertiny.models.backend import parse_answer

    def call(city: str) -> str:
        return f'<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call>'

    class Sampling(ScriptedModel):
        """Greedy: Paris; sampled: Paris, Oslo, Paris, Oslo, ..."""

        def generate(self, messages, tools=None, options=None):
            generation = super().generate(messages, tools, options)
            if options.temperature == 0:
                return generation
            text = call("Paris" if self.calls % 2 else "Oslo")
            parse, message = parse_answer(text, tools)
            return dataclasses.replace(generation, text=text, parse=parse, message=message, token_logprobs=None)

    model = Sampling("sampling", call("Paris"))
    monkeypatch.setattr("supertiny.runtime.loading.lease_model", lambda store, name: contextlib.nullcontext(model))
    register_external_like(store, "sampling")
    evaluation = runner.evaluate(store, EvalConfig(model="sampling", domain="toy-weather", limit=3, concurrency=1,
                                                   agreement_samples=4, agreement_temperature=0.5))
    records = evaluation.details["records"]
    assert [record["agreement"] for record in records] == [0.5, 0.5, 0.5] and model.calls == 15
    assert all(record["confidence"] == pytest.approx(0.9) for record in records)  # the greedy answer's
    plain = runner.evaluate(store, EvalConfig(model="sampling", domain="toy-weather", limit=3))
    assert all("agreement" not in record for record in plain.details["records"])


def test_agreement_samples_are_refused_on_a_multi_step_domain(store, register_plugin):
    from supertiny.errors import InvalidInputError

    register_plugin(toy_domain, name="toy-domains")
    register_external_like(store, "any")
    with pytest.raises(InvalidInputError, match="no single set of calls to agree on"):
        evaluate(store, EvalConfig(model="any", domain="toy-alerts", limit=2, agreement_samples=4))
