"""The engine benchmarks (bench.harvest, bench.evaluation) on the tiny model and the toy domain, in-process
engines only (the vLLM engine's path runs in tests/test_engine.py)."""

import json

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain
from supertiny.eval.stats import format_accuracy, format_p_value, mcnemar_p, wilson_interval


@pytest.fixture
def bench(monkeypatch, register_plugin, tmp_path):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path / "home"))
    register_plugin(toy_domain, name="toy-domains")
    import bench.evaluation
    import bench.harvest

    return bench


def test_harvest_bench_reports_each_engine_and_samples_count(bench, tiny_model_dir, tmp_path):
    result = bench.harvest.main(["--teacher", str(tiny_model_dir), "--domain", "toy-weather", "--tasks", "4",
                                 "--engines", "batched,in-process", "--in-process-samples", "1,2",
                                 "--max-new-tokens", "8", "--out", str(tmp_path)])
    runs = [(run["engine"], run["samples_per_task"], run["samples"]) for run in result["runs"]]
    assert runs == [("batched", 1, 4), ("batched", 2, 8), ("in-process", 1, 4), ("in-process", 2, 8)]
    assert all(run["wall_s"] > 0 and run["tasks"] == 4 and "in-process" in run["served_by"] for run in result["runs"])
    (stem,) = {path.with_suffix("") for path in tmp_path.glob("harvest-*")}
    assert json.loads(stem.with_suffix(".json").read_text())["runs"] == result["runs"]
    text = stem.with_suffix(".md").read_text()
    assert "| batched | free | 2 |" in text and stem.with_suffix(".png").exists()
    assert {"celsius", "fahrenheit"} == set(result["runs"][0]["categories"]) and "| celsius | " in text
    assert result["comparisons"] == []  # no guided run: nothing to pair


def _run(decoding: str, passed: list[int], samples: int = 1) -> dict:
    return {"engine": "vllm", "decoding": decoding, "samples_per_task": samples, "task_ids": list(range(10)),
            "passed_task_ids": passed, "pass_at_n": len(passed) / 10}


def test_guided_runs_are_paired_with_the_free_run_of_the_same_engine_and_n(bench):
    runs = [_run("free", [0, 1, 2]), _run("guided", [0, 1, 3, 4, 5, 6, 7, 8]), _run("free", [0], 4)]
    (comparison,) = bench.harvest.paired_comparisons(runs)
    assert (comparison["only_guided"], comparison["only_free"], comparison["samples_per_task"]) == (6, 1, 1)
    assert comparison["p"] == pytest.approx(mcnemar_p(6, 1))
    assert comparison["either_pass_at_n"] == 0.9
    text = bench.harvest.markdown({"created": "now", "teacher": "t", "tasks": 10, "domain": "d", "temperature": 0.7,
                                   "max_new_tokens": 8, "machine": "m", "runs": [], "comparisons": [comparison]})
    assert "| vllm | 1 | 10 | 30.0% | 80.0% | 6 | 1 | p = 0.12 | 90.0% |" in text


def test_evaluation_bench_compares_engines_on_the_same_tasks(bench, tiny_model_dir, tmp_path):
    result = bench.evaluation.main(["--model", str(tiny_model_dir), "--domain", "toy-weather", "--per-category",
                                    "2", "--engines", "in-process,batched", "--max-new-tokens", "6", "--out",
                                    str(tmp_path)])
    first, second = result["runs"]
    assert first["tasks"] == second["tasks"] > 0 and second["against_first"]["tasks"] == first["tasks"]
    assert first["concurrency"] == 1 and second["concurrency"] == 8
    text = next(tmp_path.glob("evaluation-*.md")).read_text()
    assert "| in-process | free |" in text and "(n=" in text and "McNemar" in text
    assert "| celsius | " in text and "| category | in-process free | batched free |" in text


def test_intervals_and_paired_test():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0) and wilson_interval(10, 10)[1] == 1.0
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)  # 10 discordant tasks, all one way
    assert format_accuracy(31, 50) == "62.0% [48.2, 74.1] (n=50)"
    assert (format_p_value(0.04512), format_p_value(2e-7), format_p_value(0.0)) == ("p = 0.045", "p < 1e-6", "p < 1e-6")
