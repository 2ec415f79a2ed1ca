"""The harvest, data and domains commands, end to end on the tiny model."""

import json

import pytest
from click.testing import CliRunner
from helpers import toy_domain
from supertiny.cli import cli


@pytest.fixture
def invoke(register_plugin, tmp_path):
    register_plugin(toy_domain, name="toy-domains")
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str):
        return CliRunner().invoke(cli, ["--db", url, "--home", str(tmp_path / "home"), *args])

    return run


def test_domains_list_and_show(invoke):
    listed = json.loads(invoke("domains", "list", "--json").output)
    assert {"toy-weather", "toy-alerts"} <= {row["name"] for row in listed}
    shown = json.loads(invoke("domains", "show", "toy-weather", "--json").output)
    assert {row["category"] for row in shown["categories"]} == {"celsius", "fahrenheit"}


def test_harvest_with_the_tiny_model_then_snapshot_and_export(invoke, tiny_model_dir, tmp_path):
    result = invoke("harvest", "run", "--domain", "toy-weather", "--teacher", str(tiny_model_dir), "--limit", "3",
                    "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "run 1: 3/3 samples" in result.output
    status = json.loads(invoke("harvest", "status", "1", "--json").output)
    assert status["done"] == 3 and status["status"] == "completed"
    assert sum(row["samples"] for row in status["categories"]) == 3
    assert all(row["mean_completion_tokens"] > 0 for row in status["categories"])
    table = invoke("harvest", "status", "1")
    assert table.exit_code == 0 and "PASS@1" in table.output and "0.0% [" in table.output  # one column, interval
    runs = json.loads(invoke("harvest", "list", "--json").output)
    assert [run["id"] for run in runs] == [1]
    guided = invoke("harvest", "run", "--domain", "toy-weather", "--teacher", str(tiny_model_dir), "--limit", "3",
                    "--guided")
    assert guided.exit_code == 1 and "--guided needs a teacher" in guided.output

    # the tiny random model fails every task, so a pass-only snapshot is refused as empty
    empty = invoke("data", "snapshot", "--name", "toy", "--run", "1", "--verdict", "pass")
    assert empty.exit_code == 1 and "empty" in empty.output
    made = invoke("data", "snapshot", "--name", "toy", "--run", "1")
    assert made.exit_code == 0 and "toy@1: 3 items" in made.output
    listed = json.loads(invoke("data", "list", "--json").output)
    assert listed[0]["ref"] == "toy@1" and listed[0]["items"] == 3
    exported = invoke("data", "export", "toy@1", "--out", str(tmp_path / "out"))
    assert exported.exit_code == 0
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == {"messages", "tools"}


def test_bad_input_is_one_line(invoke):
    unknown_domain = invoke("harvest", "run", "--domain", "nope", "--teacher", "x")
    assert unknown_domain.exit_code == 1 and unknown_domain.output.startswith("error: unknown domain 'nope'")
    unknown_teacher = invoke("harvest", "run", "--domain", "toy-weather", "--teacher", "no-such-model", "--limit", "1")
    assert unknown_teacher.exit_code == 1 and "no-such-model" in unknown_teacher.output
    assert invoke("harvest", "status", "42").output.startswith("error: no harvest run 42")
    both = invoke("harvest", "run", "--domain", "toy-weather", "--logs", "prod", "--teacher", "x")
    assert both.exit_code == 1 and both.output.startswith("error: give either --domain or --logs ROUTE")
    no_traffic = invoke("harvest", "run", "--logs", "prod", "--teacher", "x")
    assert no_traffic.exit_code == 1 and "route 'prod' has no logged request with tools" in no_traffic.output
    assert invoke("data", "show", "nope").output.startswith("error: no dataset 'nope'")
    assert invoke("domains", "show", "nope").exit_code == 1
