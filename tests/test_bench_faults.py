"""The fault benchmark on the tiny model and a scratch PostgreSQL database (the vLLM engine's part, llm-killed,
runs where engines run: python -m bench.faults)."""

import json

import pytest
from conftest import REPO_ROOT


@pytest.mark.parametrize("blank_database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_the_fault_benchmark_reports_each_part(blank_database_url, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.setenv("SUPERTINY_HOME", str(tmp_path / "home"))
    import bench.faults

    result = bench.faults.main(["--parts", "long-prompt,database", "--postgres", blank_database_url,
                                "--clients", "4", "--requests-per-client", "2", "--long-tokens", "1500",
                                "--prompt-cap", "512", "--load-s", "6", "--outage-s", "2", "--max-tokens", "4",
                                "--out", str(tmp_path)])
    runs = result["parts"]["long-prompt"]["runs"]
    assert [(run["route"], run["long_prompt"]) for run in runs] == \
        [("capped", False), ("capped", True), ("uncapped", False), ("uncapped", True)]
    capped = runs[1]["long"]
    assert (capped["status"], capped["code"]) == (400, "context_length_exceeded")
    assert all(run["logged_exactly_once"] and run["failed"] == 0 for run in runs)
    database = result["parts"]["database"]
    assert database["during_outage"] > 0 and database["failed"] == 0 and database["logged_exactly_once"]
    (stem,) = {path.with_suffix("") for path in tmp_path.glob("faults-*")}
    assert json.loads(stem.with_suffix(".json").read_text())["parts"].keys() == {"long-prompt", "database"}
    assert "PostgreSQL unreachable" in stem.with_suffix(".md").read_text() and stem.with_suffix(".png").stat().st_size
