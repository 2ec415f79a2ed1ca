"""The distillation report: the harvest's best-of-N rows, the evaluations with intervals, the paired tests against
the raw teacher, the published figures and the grpo reward curve, read from a store."""

import json

import pytest
from conftest import REPO_ROOT
from helpers import toy_domain
from helpers.scripted_chat import ScriptedChatModel
from helpers.training import alternating
from supertiny.harvest.runner import HarvestConfig, run_harvest
from supertiny.models.versions import find_model_version, register_model_version
from supertiny.store import Evaluation


def _evaluated(store, model, outcomes, metrics=None, confidences=None, guided=False):
    row = find_model_version(store, model) or register_model_version(
        store, name=model, stage="external", format="hf", backend="transformers", path=f"/nowhere/{model}",
        metrics=metrics or {})
    records = [{"task_hash": f"t{index}", "category": "simple" if index % 2 else "irrelevance", "correct": right,
                "valid": True, "confidence": confidence}
               for index, (right, confidence) in enumerate(zip(outcomes, confidences or [0.5] * len(outcomes),
                                                               strict=True))]
    per_category = {}
    for category in ("simple", "irrelevance"):
        mine = [record["correct"] for record in records if record["category"] == category]
        per_category[category] = {"accuracy": sum(mine) / len(mine), "n": len(mine), "invalid_rate": 0.0}
    with store.session() as session:
        session.add(Evaluation(model_version_id=row.id, domain="toy-weather", split="test",
                               accuracy=sum(outcomes) / len(outcomes), n_tasks=len(outcomes),
                               per_category=per_category, invalid_rate=0.0, mean_latency_s=0.1,
                               details={"records": records, **({"config": {"guided": True}} if guided else {})}))


@pytest.fixture
def bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import bench.distillation

    return bench.distillation


def test_the_report_reads_the_store_and_tests_each_model_against_the_teacher(sqlite_store, register_plugin,
                                                                            bench_module, tmp_path, monkeypatch):
    register_plugin(toy_domain, name="toy-domains")
    run_harvest(sqlite_store, HarvestConfig(domain="toy-weather", teacher="half-right", limit=4, samples_per_task=2,
                                            temperature=0.7), lambda: ScriptedChatModel(respond=alternating()))
    _evaluated(sqlite_store, "teacher", [index < 20 for index in range(60)])
    # the student is sure where it is right: escalating its 25 unsure tasks, all wrong, gains all the teacher gets
    student = [index < 20 or index >= 45 for index in range(60)]
    _evaluated(sqlite_store, "student", student, metrics={"reward_curve": [[1, 0.25], [2, 0.5]]},
               confidences=[0.9 if right else 0.3 for right in student])
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    result = bench_module.main(["--domain", "toy-weather", "--teacher", "teacher", "--models", "student",
                                "--harvest-run", "1", "--cascade", "student", "--out", str(tmp_path / "out")])
    (test,) = result["compared"]["paired"]
    assert (test["only_model"], test["only_baseline"], test["shared_tasks"]) == (15, 0, 60)
    assert test["p_value"] < 0.001
    (harvest,) = result["harvests"]
    overall = harvest["rows"][-1]
    assert (overall["tasks"], overall["pass_at_1"], overall["pass_at_n"], overall["kept"]) == (4, 0.5, 1.0, 4)
    assert result["reward_curves"] == {"student": [[1, 0.25], [2, 0.5]]}
    cascade = result["cascade"]
    assert cascade["tasks"] == 60 and cascade["llm_accuracy"] == 20 / 60
    point = next(point for point in cascade["points"] if point["threshold"] == 0.9)  # the unsure 25 escalated
    assert point["llm_share"] == 25 / 60 and point["accuracy"] == 35 / 60 + 0  # the teacher gets none of them
    assert point["random"] == round((35 / 60) * (35 / 60) + (25 / 60) * (20 / 60), 4)
    assert cascade["share_reaching_llm"] == 0.0
    (markdown,) = (tmp_path / "out").glob("distillation-*.md")
    text = markdown.read_text()
    assert "| overall | 33.3% [22.7, 45.9] | 58.3% [45.7, 69.9] |" in text
    assert "| `student` | +25.0 points | 15 | 0 |" in text
    assert "| overall | 4 | 50.0% | 100.0% [51.0, 100.0] | 4 |" in text
    assert "harvest run 1 (half-right, free decoding, 2 samples a task" in text
    assert "## Cascade `student` -> `teacher` on the same 60 tasks" in text
    assert markdown.with_suffix(".png").stat().st_size > 0
    assert json.loads(markdown.with_suffix(".json").read_text())["split"] == "test"


def test_a_guided_evaluation_is_a_row_and_the_cascades_llm_tier(sqlite_store, register_plugin, bench_module,
                                                                  tmp_path, monkeypatch):
    register_plugin(toy_domain, name="toy-domains")
    _evaluated(sqlite_store, "teacher", [index < 20 for index in range(60)])
    _evaluated(sqlite_store, "teacher", [index < 40 for index in range(60)], guided=True)
    _evaluated(sqlite_store, "student", [index < 30 for index in range(60)])
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    result = bench_module.main(["--domain", "toy-weather", "--teacher", "teacher", "--models", "teacher:guided,student",
                                "--cascade", "student", "--cascade-llm", "teacher:guided", "--out", str(tmp_path)])
    assert result["compared"]["models"] == ["teacher", "teacher:guided", "student"]
    assert result["compared"]["rows"][-1]["teacher:guided"] == 40 / 60
    assert result["cascade"]["llm_accuracy"] == 40 / 60 and "(teacher, guided)" in result["cascade"]["source"]


def test_published_figures_are_checked_per_category(bench_module):
    compared = {"models": ["m"], "rows": [{"category": category, "m": 0.9} for category in
                                          ("simple_python", "multiple", "parallel", "parallel_multiple")]
                + [{"category": "irrelevance", "m": 0.5}]}
    checks = bench_module.published_check(compared)["m"]
    assert all(checks["Qwen2.5-0.5B-Instruct (floor)"].values())
    assert not checks["Hammer2.1-0.5b (stretch)"]["irrelevance"]


def test_a_run_or_an_evaluation_that_does_not_exist_is_one_line_and_writes_nothing(sqlite_store, bench_module,
                                                                                  tmp_path, monkeypatch, capsys):
    _evaluated(sqlite_store, "teacher", [True, False])
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    for extra, message in ((["--models", "teacher", "--harvest-run", "99"], "error: no harvest run 99"),
                           (["--models", "nobody"], "error: no free evaluation of 'nobody'")):
        with pytest.raises(SystemExit) as exit_info:
            bench_module.main(["--domain", "toy-weather", "--teacher", "teacher", *extra,
                               "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


def test_the_cascade_gate_is_compared_by_confidence_measure(sqlite_store, register_plugin, bench_module, tmp_path,
                                                            monkeypatch):
    register_plugin(toy_domain, name="toy-domains")
    _evaluated(sqlite_store, "teacher", [True] * 40)
    # the student's wrong answers are long and sure of each token: the mean cannot find them, the joint can
    student = [index % 4 != 0 for index in range(40)]
    _evaluated(sqlite_store, "student", student, confidences=[0.9] * 40)
    with sqlite_store.session() as session:
        row = session.query(Evaluation).filter_by(model_version_id=find_model_version(sqlite_store, "student").id).one()
        records = [{**record, "token_logprobs": [-0.1] * (3 if record["correct"] else 30)}
                   for record in row.details["records"]]
        row.details = {**row.details, "records": records}
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    result = bench_module.main(["--domain", "toy-weather", "--teacher", "teacher", "--models", "student",
                                "--cascade", "student", "--cascade-confidence", "mean", "--cascade-confidence",
                                "joint", "--out", str(tmp_path)])
    mean, joint = result["cascade_by_confidence"]
    assert result["cascade"] is mean and (mean["confidence"], joint["confidence"]) == ("mean", "joint")
    assert mean["share_reaching_llm"] == 1.0 and joint["share_reaching_llm"] == 0.25
    assert joint["best_within_gate_share"]["llm_share"] == 0  # all 10 wrong answers tie: 25% or nothing
    (markdown,) = tmp_path.glob("distillation-*.md")
    assert "| joint | 25% escalated | +18.8 points at 25% | 75.0% [59.8, 85.8] at 0% (random 75.0%) |" in \
        markdown.read_text()


def test_a_learned_gate_is_compared_out_of_fold_and_on_chosen_features(sqlite_store, register_plugin, bench_module,
                                                                       tmp_path, monkeypatch):
    register_plugin(toy_domain, name="toy-domains")
    # the student is wrong where it made its values up; the teacher is wrong on every fourth task
    teacher = [index % 4 != 1 for index in range(60)]
    student = [index % 3 != 0 for index in range(60)]
    _evaluated(sqlite_store, "teacher", teacher)
    _evaluated(sqlite_store, "student", student, confidences=[0.9] * 60)
    with sqlite_store.session() as session:
        row = session.query(Evaluation).filter_by(model_version_id=find_model_version(sqlite_store, "student").id).one()
        row.details = {**row.details, "records": [
            {**record, "features": {"grounding": 1.0 if record["correct"] else 0.0, "tools": 1.0 + index % 4}}
            for index, record in enumerate(row.details["records"])]}
    monkeypatch.setenv("SUPERTINY_DATABASE_URL", sqlite_store.url)
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path))
    result = bench_module.main(["--domain", "toy-weather", "--teacher", "teacher", "--models", "student",
                                "--cascade", "student", "--cascade-confidence", "mean", "--cascade-confidence",
                                "learned", "--gate-features", "tools", "--out", str(tmp_path)])
    mean, learned, tools_only = result["cascade_by_confidence"]
    assert (learned["confidence"], tools_only["confidence"]) == ("learned", "learned (tools)")
    assert "gate on grounding, tools, confidences out of 5 folds" in learned["source"]
    # the mean (the same for every answer) finds nothing; the gate finds the made-up answers the teacher fixes out
    # of fold, and reaches the teacher's accuracy escalating few; the number of tools alone finds fewer
    assert mean["share_reaching_llm"] == 1.0 and learned["share_reaching_llm"] <= 0.1
    assert tools_only["share_reaching_llm"] > learned["share_reaching_llm"]
    assert tools_only["best_gain"]["gain"] < learned["best_gain"]["gain"]
    # each gate against the mean, task by task, at the share where it reaches the teacher and at 15%
    paired = {(row["gate"], row["share"]): row for row in result["gates_paired"]}
    at_reach = paired[("learned", learned["share_reaching_llm"])]
    assert at_reach["gate_point"]["accuracy"] >= 0.75 and at_reach["only_against"] == 0
    assert at_reach["only_gate"] == round((at_reach["gate_point"]["accuracy"]
                                           - at_reach["against_point"]["accuracy"]) * 60)
    assert ("learned (tools)", 0.15) in paired
    (markdown,) = tmp_path.glob("distillation-*.md")
    assert "## Each gate against `mean` at the same share of escalations" in markdown.read_text()
