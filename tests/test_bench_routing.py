"""The routing benchmark (bench/routing.py) end to end on two tiny in-process models and the toy weather domain."""

import json

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain


@pytest.fixture
def routing_main(register_plugin, monkeypatch):
    register_plugin(toy_domain, name="toy-domains")
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.routing import main

    return main


def test_the_routing_benchmark_runs_on_tiny_models(routing_main, sqlite_store, tmp_path, tiny_model_dir,
                                                   tiny_teacher_dir):
    common = ["--tiny", "tiny", "--llm", "tiny-teacher", "--tiny-model-dir", str(tiny_model_dir),
              "--llm-model-dir", str(tiny_teacher_dir), "--domain", "toy-weather", "--split", "test",
              "--per-category", "1", "--max-new-tokens", "6", "--database-url", sqlite_store.url]
    first = tmp_path / "first"
    result = routing_main([*common, "--hybrid-thresholds", "0.5", "--out", str(first)])

    assert sorted(path.suffix for path in first.iterdir()) == [".json", ".md", ".png"]
    assert json.loads(next(first.glob("*.json")).read_text())["rows"] == result["rows"]
    table = next(first.glob("*.md")).read_text()
    assert "| policy | threshold | accuracy | LLM request share | LLM token share (hybrid) | n | s / request |" \
        in table
    assert "| hybrid-token (in-process) | 0.5 |" in table and "Aim: at least the LLM-only accuracy" in table

    assert result["n"] == 2  # one task of each of the two categories, answered by both evaluations
    assert not any(evaluation["reused"] for evaluation in result["evaluations"].values())
    tiny, llm, *others = result["rows"]
    assert (tiny["policy"], tiny["llm_request_share"], llm["policy"], llm["llm_request_share"]) == ("tiny", 0, "llm", 1)
    assert [entry["policy"] for entry in others].count("hybrid-token") == 1 and others[0]["policy"] == "cascade"
    for entry in result["rows"]:
        assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["llm_request_share"] <= 1 and entry["n"] == 2
        assert entry["llm_token_share"] is None or 0 <= entry["llm_token_share"] <= 1
    curve = result["cascade_curve"]
    assert curve[-1]["llm_share"] == 1 and curve[-1]["accuracy"] == llm["accuracy"]
    assert [point["llm_share"] for point in curve] == sorted(point["llm_share"] for point in curve)

    (hybrid,) = result["hybrid"]
    assert len(hybrid["records"]) == 2 and all(0 < record["tokens"] <= 6 for record in hybrid["records"])
    llm_tokens = sum(record["llm_tokens"] for record in hybrid["records"])
    assert hybrid["llm_token_share"] == llm_tokens / sum(record["tokens"] for record in hybrid["records"])
    assert hybrid["llm_request_share"] == sum(record["llm_tokens"] > 0 for record in hybrid["records"]) / 2
    assert set(result["aim"]) >= {"met", "cascade", "hybrid-token", "llm_accuracy", "budget"}

    # a second run reuses both evaluations; explicit cascade thresholds pick the table's points; no hybrid
    second = tmp_path / "second"
    again = routing_main([*common, "--hybrid-thresholds", "", "--cascade-thresholds", "0,1.01",
                          "--out", str(second)])
    assert all(evaluation["reused"] for evaluation in again["evaluations"].values())
    assert {role: evaluation["id"] for role, evaluation in again["evaluations"].items()} == \
        {role: evaluation["id"] for role, evaluation in result["evaluations"].items()}
    cascade = [entry for entry in again["rows"] if entry["policy"] == "cascade"]
    assert [entry["threshold"] for entry in cascade] == [0, 1.01] and cascade[1]["llm_request_share"] == 1
    assert cascade[1]["accuracy"] == llm["accuracy"] and again["hybrid"] == []
    assert sorted(path.suffix for path in second.iterdir()) == [".json", ".md", ".png"]
