"""The bench suite (``python -m bench``, ``make bench``): its parts, run one after another, in one report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from supertiny.models.versions import register_model_version
from supertiny.store import Evaluation

CATEGORIES = {"simple": (0.9, 10), "multiple": (0.5, 4)}


def evaluation(store, model: str, accuracy: float, split: str = "test", categories=CATEGORIES) -> None:
    from supertiny.models.versions import find_model_version

    row = find_model_version(store, model) or register_model_version(
        store, name=model, stage="external", format="hf", backend="transformers", path=f"/nowhere/{model}")
    per_category = {name: {"accuracy": value, "n": n, "invalid_rate": 0.0} for name, (value, n) in categories.items()}
    with store.session() as session:
        session.add(Evaluation(model_version_id=row.id, domain="bfcl", split=split, accuracy=accuracy,
                               n_tasks=sum(n for _, n in categories.values()), per_category=per_category,
                               invalid_rate=0.05, mean_latency_s=0.4, details={"records": []}))


@pytest.fixture
def evaluated(sqlite_store):
    evaluation(sqlite_store, "small", 0.2, categories={"simple": (0.2, 10)})  # older: the next one counts
    evaluation(sqlite_store, "small", 0.6)
    evaluation(sqlite_store, "large", 0.8, categories={**CATEGORIES, "parallel": (1.0, 2)})
    evaluation(sqlite_store, "other-split-only", 0.9, split="train")
    return sqlite_store


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import bench.suite

    return bench.suite


def test_quick_suite_writes_one_report_with_the_machine_and_every_part(evaluated, tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "SUPERTINY_HOME": str(tmp_path), "SUPERTINY_DATABASE_URL": evaluated.url}
    process = subprocess.run([sys.executable, "-m", "bench", "--parts", "quality,serving", "--quick", "--out",
                              str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert process.returncode == 0, process.stderr[-3000:]

    (markdown,) = out.glob("report-*.md")
    report = json.loads(markdown.with_suffix(".json").read_text())
    machine = report["machine"]
    assert machine["cores"] == os.cpu_count() and machine["cpu"] and machine["torch"] and machine["os"]
    assert machine["ram_bytes"] > 0
    assert list(report["parts"]) == ["quality", "serving"]
    assert {name: part["status"] for name, part in report["parts"].items()} == {"quality": "ok", "serving": "ok"}

    quality = report["parts"]["quality"]["result"]
    assert [row["model"] for row in quality["models"]] == ["large", "small"]  # best first; train split left out
    assert quality["categories"] == ["multiple", "parallel", "simple"]
    assert quality["models"][1]["accuracy"] == 0.6 and quality["models"][1]["per_category"]["simple"]["n"] == 10
    serving = report["parts"]["serving"]["result"]
    assert [engine["engine"] for engine in serving["engines"]] == ["in-process", "batched"]
    for engine in serving["engines"]:
        assert [level["concurrency"] for level in engine["levels"]] == [1, 4]
        assert all(level["served"]["errors"] == 0 and level["logged_exactly_once"] for level in engine["levels"])
    for part in report["parts"].values():
        assert all((out / path).exists() or os.path.exists(path) for path in part["files"].values())
        assert part["files"]["png"].endswith(".png")

    text = markdown.read_text()
    assert text.startswith("# supertiny bench report (") and "**Machine:** " in text and "**Date:** " in text
    assert f"{os.cpu_count()} cores" in text and f"torch {machine['torch']}" in text
    assert "## quality" in text and "## serving" in text and "### Serving benchmark" in text
    assert "| large | 80.0% (16) | 50.0% (4) | 100.0% (2) | 90.0% (10) |" in text
    assert "| small | 60.0% (14) | 50.0% (4) | - | 90.0% (10) |" in text
    for link in ("quality/quality.png", "serving/serving-"):
        assert f"]({markdown.stem}/{link}" in text


def test_failing_parts_are_reported_in_one_line_and_the_others_still_run(evaluated, suite, tmp_path, monkeypatch):
    def broken(args, folder):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(suite.PARTS, "routing", broken)
    report = suite.main(["--parts", "routing,compress,quality", "--db", evaluated.url, "--split", "train",
                         "--compress-args=--no-such-option", "--out", str(tmp_path)])
    routing, compress, quality = (report["parts"][name] for name in ("routing", "compress", "quality"))
    assert (routing["status"], routing["error"]) == ("failed", "RuntimeError: boom")
    assert compress["status"] == "failed" and compress["error"].startswith("exit status 2: ")
    assert compress["error"].endswith("error: unrecognized arguments: --no-such-option")
    assert "--no-such-option" in Path(compress["files"]["log"]).read_text()
    assert quality["status"] == "ok" and [row["model"] for row in quality["result"]["models"]] == ["other-split-only"]
    text = next(tmp_path.glob("report-*.md")).read_text()
    assert "| routing | failed |" in text and "**failed:** RuntimeError: boom" in text
    assert "| compress | failed |" in text and "/compress/compress.log)" in text


def test_a_missing_benchmark_or_no_evaluation_is_said_in_one_line(sqlite_store, suite, tmp_path):
    with pytest.raises(suite.PartFailed, match=r"^bench\.no_such_part does not exist$"):
        suite.run_module("no_such_part", [], tmp_path, None)
    report = suite.main(["--parts", "quality", "--db", sqlite_store.url, "--out", str(tmp_path)])
    assert report["parts"]["quality"]["status"] == "skipped"
    assert "no model has a stored evaluation on bfcl / test" in report["parts"]["quality"]["error"]
